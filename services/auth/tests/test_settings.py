"""AuthSettings from the environment."""

from __future__ import annotations

import base64
import json
import os

import pytest

from mercato_auth.settings import AuthSettings
from mercato_common.settings import SettingsError, load_settings

KEK = base64.b64encode(os.urandom(32)).decode()
BASE = {
    "MERCATO_AUTH_DATABASE_URL": "postgresql://auth:hunter2@db/auth",
    "MERCATO_AUTH_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "MERCATO_AUTH_SIGNING_KEY_KEK": KEK,
}


def test_defaults_follow_the_conventions() -> None:
    settings = load_settings(AuthSettings, BASE)
    assert (settings.service_name, settings.grpc_port, settings.metrics_port) == (
        "auth",
        50061,
        9461,
    )
    assert settings.token_issuer == "http://127.0.0.1:8080"
    assert settings.token_audience == "mercato"
    assert settings.access_token_ttl_seconds == 900
    assert settings.refresh_token_ttl_seconds == 30 * 86400
    assert settings.events_topic == "mercato.auth.events.v1"
    assert settings.signing_algorithm == "EdDSA"
    assert settings.argon2.memory_cost_kib == 65536
    assert settings.kek == base64.b64decode(KEK)
    # Secrets stay out of repr (and so out of logs and tracebacks).
    assert "hunter2" not in repr(settings)
    assert KEK not in repr(settings)


def test_missing_and_bad_variables_are_all_named() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(AuthSettings, {"MERCATO_AUTH_SIGNING_KEY_KEK": "c2hvcnQ="})
    text = str(caught.value)
    assert "MERCATO_AUTH_DATABASE_URL: is required" in text
    assert "MERCATO_AUTH_KAFKA_BOOTSTRAP_SERVERS: is required" in text
    assert "MERCATO_AUTH_SIGNING_KEY_KEK" in text
    assert "c2hvcnQ" not in text


def test_bootstrap_admin_and_service_clients() -> None:
    environ = {
        **BASE,
        "MERCATO_BOOTSTRAP_ADMIN_EMAIL": "root@example.com",
        "MERCATO_BOOTSTRAP_ADMIN_PASSWORD": "s3cret-admin-password",
        "MERCATO_AUTH_SERVICE_CLIENTS": json.dumps(
            [{"client_id": "orders", "secret": "0123456789abcdef0", "scopes": ["catalog:reserve"]}]
        ),
    }
    settings = load_settings(AuthSettings, environ)
    assert settings.bootstrap_admin_email == "root@example.com"
    assert settings.service_clients[0].client_id == "orders"
    assert settings.service_clients[0].scopes == ("catalog:reserve",)
    assert "s3cret" not in repr(settings)
    assert "0123456789abcdef0" not in repr(settings)

    alone = {**BASE, "MERCATO_BOOTSTRAP_ADMIN_EMAIL": "root@example.com"}
    with pytest.raises(SettingsError, match="go together"):
        load_settings(AuthSettings, alone)
    unknown_scope = {
        **BASE,
        "MERCATO_AUTH_SERVICE_CLIENTS": '[{"client_id": "x", "secret": "0123456789abcdef0",'
        ' "scopes": ["root"]}]',
    }
    with pytest.raises(SettingsError, match="unknown scopes"):
        load_settings(AuthSettings, unknown_scope)
    with pytest.raises(SettingsError, match="JSON"):
        load_settings(AuthSettings, {**BASE, "MERCATO_AUTH_SERVICE_CLIENTS": "orders"})


def test_service_client_previous_secrets() -> None:
    client = {
        "client_id": "orders",
        "secret": "new-secret-0123456789",
        "scopes": ["catalog:reserve"],
    }
    rotating = {**client, "previous_secrets": ["old-secret-0123456789"]}
    environ = {**BASE, "MERCATO_AUTH_SERVICE_CLIENTS": json.dumps([rotating])}
    seed = load_settings(AuthSettings, environ).service_clients[0]
    assert [s.get_secret_value() for s in seed.previous_secrets] == ["old-secret-0123456789"]
    assert "old-secret" not in repr(seed)
    assert (
        load_settings(AuthSettings, {**BASE, "MERCATO_AUTH_SERVICE_CLIENTS": json.dumps([client])})
        .service_clients[0]
        .previous_secrets
        == ()
    )
    short = {**client, "previous_secrets": ["short"]}
    with pytest.raises(SettingsError, match="at least 16 characters"):
        load_settings(AuthSettings, {**BASE, "MERCATO_AUTH_SERVICE_CLIENTS": json.dumps([short])})


def test_previous_keks_and_argon2_bounds() -> None:
    other = base64.b64encode(os.urandom(32)).decode()
    settings = load_settings(
        AuthSettings, {**BASE, "MERCATO_AUTH_SIGNING_KEY_PREVIOUS_KEKS": f"{other}, {KEK}"}
    )
    assert len(settings.previous_keks) == 2
    with pytest.raises(SettingsError, match="ARGON2"):
        load_settings(
            AuthSettings,
            {
                **BASE,
                "MERCATO_AUTH_ARGON2_MEMORY_COST_KIB": "8",
                "MERCATO_AUTH_ARGON2_PARALLELISM": "4",
            },
        )
