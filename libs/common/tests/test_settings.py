import re
import ssl
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from mercato_common.kafka import kafka_connection
from mercato_common.kit import Service
from mercato_common.runtime import Periodic
from mercato_common.settings import (
    BaseServiceSettings,
    KafkaSettings,
    PostgresSettings,
    SettingsError,
    load_settings,
)


class CatalogSettings(BaseServiceSettings):
    env_prefix = "MERCATO_CATALOG_"
    mongo_uri: SecretStr
    page_size_max: int = 100


def test_reads_prefixed_variables_and_casts_types() -> None:
    settings = load_settings(
        CatalogSettings,
        {
            "MERCATO_CATALOG_SERVICE_NAME": "catalog",
            "MERCATO_CATALOG_GRPC_PORT": "6001",
            "MERCATO_CATALOG_MONGO_URI": "mongodb://u:hunter2@db/catalog",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            "UNRELATED": "x",
        },
    )
    assert settings.grpc_port == 6001
    assert settings.page_size_max == 100
    assert settings.otlp_endpoint == "http://collector:4317"
    assert settings.mongo_uri.get_secret_value().endswith("/catalog")
    assert "hunter2" not in repr(settings)


def test_every_problem_is_listed_at_once_without_leaking_values() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            CatalogSettings,
            {"MERCATO_CATALOG_GRPC_PORT": "seventy", "MERCATO_CATALOG_LOG_LEVEL": "LOUD"},
        )
    problems = caught.value.problems
    text = str(caught.value)
    assert any(p.startswith("MERCATO_CATALOG_SERVICE_NAME: is required") for p in problems)
    assert any(p.startswith("MERCATO_CATALOG_MONGO_URI: is required") for p in problems)
    assert any(p.startswith("MERCATO_CATALOG_GRPC_PORT:") for p in problems)
    assert any(p.startswith("MERCATO_CATALOG_LOG_LEVEL:") for p in problems)
    assert "seventy" not in text
    assert len(problems) == 4


def test_tls_files_must_come_in_pairs() -> None:
    base = {"MERCATO_SERVICE_NAME": "x", "MERCATO_TLS_CERT_FILE": "/tls/cert.pem"}
    with pytest.raises(SettingsError, match="TLS_CERT_FILE and TLS_KEY_FILE"):
        load_settings(BaseServiceSettings, base)
    settings = load_settings(BaseServiceSettings, {**base, "MERCATO_TLS_KEY_FILE": "/tls/key.pem"})
    assert settings.tls is not None
    assert settings.tls.key_file == Path("/tls/key.pem")
    assert settings.tls.client_ca_file is None


def test_settings_are_immutable() -> None:
    settings = load_settings(BaseServiceSettings, {"MERCATO_SERVICE_NAME": "x"})
    with pytest.raises(ValueError, match="frozen"):
        settings.grpc_port = 1  # type: ignore[misc]


class _Kafka(KafkaSettings):
    env_prefix = "MERCATO_ORDERS_"


KAFKA = {"MERCATO_ORDERS_KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9096,kafka-2:9096"}


def test_kafka_is_plaintext_unless_told() -> None:
    settings = load_settings(_Kafka, KAFKA)
    connection = kafka_connection(settings, client_id="mercato-orders")
    assert connection.client_kwargs() == {
        "bootstrap_servers": "kafka-1:9096,kafka-2:9096",
        "client_id": "mercato-orders",
        "security_protocol": "PLAINTEXT",
    }


def test_kafka_sasl_ssl_from_settings_with_the_password_kept_out_of_reprs(pki: Path) -> None:
    settings = load_settings(
        _Kafka,
        {
            **KAFKA,
            "MERCATO_ORDERS_KAFKA_CLIENT_ID": "orders-eu",
            "MERCATO_ORDERS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "MERCATO_ORDERS_KAFKA_SSL_CA_FILE": str(pki / "ca.crt"),
            "MERCATO_ORDERS_KAFKA_SSL_CERT_FILE": str(pki / "client.crt"),
            "MERCATO_ORDERS_KAFKA_SSL_KEY_FILE": str(pki / "client.key"),
            "MERCATO_ORDERS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "MERCATO_ORDERS_KAFKA_SASL_USERNAME": "orders",
            "MERCATO_ORDERS_KAFKA_SASL_PASSWORD": "hunter2",
        },
    )
    connection = kafka_connection(settings, client_id="mercato-orders")
    kwargs = connection.client_kwargs()
    assert kwargs["client_id"] == "orders-eu"
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"]) == ("SCRAM-SHA-256", "orders")
    assert kwargs["sasl_plain_password"] == "hunter2"
    context = kwargs["ssl_context"]
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert [cert["subject"] for cert in context.get_ca_certs()] == [
        ((("commonName", "mercato test CA"),),)
    ]
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(connection)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL_SSL needs KAFKA_SASL_USERNAME"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"},
            "SASL_PLAINTEXT needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "hunter2"},
            "KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
        ),
        ({"KAFKA_SSL_CA_FILE": "/ca.pem"}, "KAFKA_SSL_* files are set but"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": "/c.pem"},
            "KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "MERCATO_ORDERS_KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "MERCATO_ORDERS_KAFKA_SASL_MECHANISM"),
    ],
)
def test_kafka_security_that_cannot_work_is_refused(extra: dict[str, str], message: str) -> None:
    environ = {**KAFKA, **{f"MERCATO_ORDERS_{key}": value for key, value in extra.items()}}
    with pytest.raises(SettingsError, match=re.escape(message)) as caught:
        load_settings(_Kafka, environ)
    assert "hunter2" not in str(caught.value)


async def test_a_service_has_one_kafka_connection_and_one_certificate_reload(pki: Path) -> None:
    """Every producer, consumer and probe of a service shares one connection, so the one TLS
    context that the kit's reload job renews is the one they all use."""

    class Notes(BaseServiceSettings, KafkaSettings):
        env_prefix = "MERCATO_NOTES_"

    settings = load_settings(
        Notes,
        {
            "MERCATO_NOTES_SERVICE_NAME": "notes",
            "MERCATO_NOTES_KAFKA_BOOTSTRAP_SERVERS": "kafka:9093",
            "MERCATO_NOTES_KAFKA_SECURITY_PROTOCOL": "SSL",
            "MERCATO_NOTES_KAFKA_SSL_CA_FILE": str(pki / "ca.crt"),
            "MERCATO_NOTES_KAFKA_SSL_CERT_FILE": str(pki / "client.crt"),
            "MERCATO_NOTES_KAFKA_SSL_KEY_FILE": str(pki / "client.key"),
        },
    )
    kit = Service(settings, registry=CollectorRegistry())
    first, second = kit.kafka(settings), kit.kafka(settings)
    assert first is second
    assert first.client_kwargs()["client_id"] == "mercato-notes"
    reloads = [p for p in kit.parts if isinstance(p, Periodic) and p.name == "kafka-tls-reload"]
    assert len(reloads) == 1


def test_a_services_database_comes_from_the_store_package_beside_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout puts ``store/`` beside ``settings.py``: the kit finds the migrations there."""
    (tmp_path / "mercato_notes" / "store" / "migrations").mkdir(parents=True)
    (tmp_path / "mercato_notes" / "__init__.py").touch()
    (tmp_path / "mercato_notes" / "store" / "__init__.py").touch()
    monkeypatch.syspath_prepend(tmp_path)

    class Notes(BaseServiceSettings, PostgresSettings):
        env_prefix = "MERCATO_NOTES_"

    Notes.__module__ = "mercato_notes.settings"  # as if declared in the package's settings.py
    settings = load_settings(
        Notes,
        {
            "MERCATO_NOTES_SERVICE_NAME": "notes-eu",  # the service's name plays no part
            "MERCATO_NOTES_DATABASE_URL": "postgresql://u:p@db/notes",
        },
    )
    database = Service(settings, registry=CollectorRegistry()).postgres(settings)
    assert database.logger_name == "mercato_notes.store"
    assert Path(str(database.migrations)) == tmp_path / "mercato_notes" / "store" / "migrations"
