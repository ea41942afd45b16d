"""Shared fixtures of mercato_common's tests: a throwaway PKI for TLS and mutual TLS."""

from pathlib import Path

import pytest

from mercato_devstack import pki as local_pki

HOSTS = ["localhost", "127.0.0.1"]


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1, and a client certificate, all from the CA:
    ca.crt/.key, server.crt/.key, client.crt/.key."""
    local_pki.issue(
        tmp_path, {"server": HOSTS, "client": HOSTS}, days=1, common_name="mercato test CA"
    )
    return tmp_path
