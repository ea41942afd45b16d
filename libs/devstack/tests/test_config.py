"""The stack's address setting (MERCATO_STACK_HOST) and what it changes (no processes)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from mercato_devstack.components.kafka import Kafka
from mercato_devstack.components.redis import Redis
from mercato_devstack.config import StackConfig
from mercato_devstack.errors import StackError


def _config(tmp_path: Path, **env: str) -> StackConfig:
    return StackConfig.from_env({"MERCATO_REPO_ROOT": str(tmp_path), **env})


def test_loopback_by_default(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config.host == "127.0.0.1"
    assert config.kafka_bootstrap == "127.0.0.1:19092"
    assert config.postgres_dsn("orders").endswith("@127.0.0.1:15432/orders")


def test_another_local_address_moves_every_connection_setting(tmp_path: Path) -> None:
    config = _config(tmp_path, MERCATO_STACK_HOST="10.85.0.1", MERCATO_REDIS_PORT="21379")
    assert config.kafka_bootstrap == "10.85.0.1:19092"
    assert config.mongo_uri == "mongodb://10.85.0.1:27018/"
    assert config.redis_url == "redis://10.85.0.1:21379/0"
    assert "@10.85.0.1:15432/" in config.postgres_dsn()


@pytest.mark.parametrize("host", ["localhost", "not an address", "::1"])
def test_the_host_must_be_an_ipv4_address(tmp_path: Path, host: str) -> None:
    with pytest.raises(StackError, match="MERCATO_STACK_HOST"):
        _config(tmp_path, MERCATO_STACK_HOST=host)


def test_kafka_listens_and_advertises_on_the_host(tmp_path: Path) -> None:
    kafka = Kafka(_config(tmp_path, MERCATO_STACK_HOST="10.85.0.1"))
    kafka.dir.mkdir(parents=True)
    properties = dict(
        line.split("=", 1)
        for line in kafka._write_properties().read_text().splitlines()
        if line and not line.startswith("#")
    )
    clients = "PLAINTEXT://10.85.0.1:19092,SASL_SSL://10.85.0.1:19094,MTLS://10.85.0.1:19095"
    assert properties["advertised.listeners"] == clients
    assert properties["listeners"] == f"{clients},CONTROLLER://10.85.0.1:19093"
    # The broker certificate names the host the clients reach.
    broker = x509.load_pem_x509_certificate(
        (kafka.config.kafka_tls_dir / "broker.crt").read_bytes()
    )
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.85.0.1") in names.get_values_for_type(x509.IPAddress)
    assert properties["listener.name.mtls.ssl.client.auth"] == "required"


@pytest.mark.parametrize(("host", "protected"), [("127.0.0.1", "yes"), ("10.85.0.1", "no")])
def test_redis_protected_mode_only_on_loopback(tmp_path: Path, host: str, protected: str) -> None:
    redis = Redis(_config(tmp_path, MERCATO_STACK_HOST=host))
    redis.dir.mkdir(parents=True)
    lines = redis._write_config().read_text().splitlines()
    assert f"bind {host}" in lines
    assert f"protected-mode {protected}" in lines
