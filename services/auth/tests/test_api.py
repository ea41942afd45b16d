"""Pieces of the gRPC layer that need no server: the client address, migrations shipped."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import pytest

from mercato_auth.api import client_address
from mercato_common.outbox import outbox_ddl
from mercato_common.postgres import service_migrations


class Context:
    def __init__(self, metadata: list[tuple[str, Any]], peer: str) -> None:
        self._metadata = metadata
        self._peer = peer

    def invocation_metadata(self) -> list[tuple[str, Any]]:
        return self._metadata

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(
    ("metadata", "peer", "trust", "expected"),
    [
        ([("x-forwarded-for", "203.0.113.9")], "ipv4:10.0.0.5:41000", True, "203.0.113.9"),
        ([("x-forwarded-for", "1.1.1.1, 203.0.113.9")], "ipv4:10.0.0.5:1", True, "203.0.113.9"),
        ([("x-forwarded-for", "203.0.113.9")], "ipv4:10.0.0.5:41000", False, "10.0.0.5"),
        ([], "ipv4:10.0.0.5:41000", True, "10.0.0.5"),
        ([], "ipv6:[2001:db8::1]:41000", True, "2001:db8::1"),
        ([("x-forwarded-for", " , ")], "unix:/tmp/sock", True, "unix:/tmp/sock"),
    ],
)
def test_client_address(
    metadata: list[tuple[str, Any]], peer: str, trust: bool, expected: str
) -> None:
    assert client_address(Context(metadata, peer), trust_forwarded_for=trust) == expected  # type: ignore[arg-type]


def test_migrations_ship_in_the_package_with_the_common_outbox() -> None:
    migrations = service_migrations(files("mercato_auth.store") / "migrations", outbox_version=2)
    assert [m.version for m in migrations] == [1, 2, 3]
    # If libs/common changes the outbox DDL, add a migration (never edit an applied one).
    assert outbox_ddl("outbox") in migrations[1].sql
