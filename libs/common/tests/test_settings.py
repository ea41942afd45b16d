from pathlib import Path

import pytest
from pydantic import SecretStr

from mercato_common.settings import BaseServiceSettings, SettingsError, load_settings


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
