"""The service manifest reader, and what `make run` builds from a manifest (no processes)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from mercato_devstack.components.postgres import Postgres
from mercato_devstack.config import StackConfig
from mercato_devstack.manifest import (
    ManifestError,
    ServiceSpec,
    load_manifest,
    manifest_path,
    parse_manifest,
)
from mercato_devstack.stack import Stack
from mercato_devstack.suite import SuitePorts, _services

SOURCE = "services.toml"


def _entry(name: str, grpc_port: int, **fields: Any) -> dict[str, Any]:
    """A valid entry (metrics port: the gRPC port - 40600), with ``fields`` replaced."""
    return {
        "name": name,
        "module": f"mercato_{name}",
        "kind": "grpc",
        "port": grpc_port,
        "metrics_port": grpc_port - 40600,
        "grpc_service": f"mercato.{name}.v1.{name.title()}Service",
        "store": "none",
        **fields,
    }


def _manifest(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"service": list(entries)}


def _error(document: dict[str, Any]) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(document, SOURCE)
    return str(caught.value)


def test_the_checkouts_manifest_reads() -> None:
    manifest = load_manifest()
    assert manifest.names == ("auth", "catalog", "orders", "analytics", "gateway")
    orders = manifest.service("orders")
    assert (orders.port, orders.metrics_port, orders.store) == (50063, 9463, "postgres")
    assert orders.env_prefix == "MERCATO_ORDERS_"
    assert orders.grpc_package == "mercato.orders.v1"
    assert manifest.callers("catalog") == ("orders", "gateway")
    assert manifest.consumers("mercato.orders.events.v1") == ("analytics", "gateway")
    assert [s.name for s in manifest.with_store("postgres")] == ["auth", "orders"]


def test_defaults_of_the_optional_fields() -> None:
    (service,) = parse_manifest(_manifest(_entry("notes", 50070)), SOURCE).services
    assert service == ServiceSpec(
        name="notes",
        module="mercato_notes",
        kind="grpc",
        port=50070,
        metrics_port=9470,
        grpc_service="mercato.notes.v1.NotesService",
        store="none",
    )
    assert not service.uses_kafka
    assert service.database is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"store": "mysql"}, "service 'notes': store must be one of postgres, mongo, none"),
        ({"kind": "rest"}, "service 'notes': kind must be one of grpc, http"),
        ({"port": 70000}, "service 'notes': port must be a port number"),
        ({"port": "50070"}, "service 'notes': port must be a port number"),
        ({"metrics_port": 50070}, "service 'notes': port and metrics_port are both 50070"),
        ({"redis": "yes"}, "service 'notes': redis must be true or false"),
        ({"produces": "mercato.notes.events.v1"}, "service 'notes': produces must be a list"),
        ({"consumes": ["Bad Topic"]}, "service 'notes': consumes: 'Bad Topic' does not match"),
        ({"scopes": ["notes"]}, "service 'notes': scopes: 'notes' does not match"),
        ({"scopes": ["notes:read", "notes:read"]}, "service 'notes': scopes: ['notes:read'] "),
        ({"module": "mercato-notes"}, "service 'notes': module: 'mercato-notes' does not match"),
        ({"ports": {"grpc": 1}}, "service 'notes': unknown field(s) ports"),
        ({"calls": ["notes"]}, "service 'notes': calls: a service does not call itself"),
        ({"grpc_service": ""}, "service 'notes': grpc_service must name the gRPC service"),
    ],
)
def test_a_bad_field_is_named_with_its_entry(fields: dict[str, Any], expected: str) -> None:
    message = _error(_manifest(_entry("notes", 50070, **fields)))
    assert message.startswith(f"{SOURCE}: "), message
    assert expected in message


def test_an_entry_without_a_usable_name_is_named_by_its_position() -> None:
    entry = _entry("notes", 50070)
    del entry["store"]
    assert _error(_manifest(entry)) == f"{SOURCE}: service 'notes': missing field(s) store"
    assert "service[1]: name: 'Notes' does not match" in _error(
        _manifest(_entry("notes", 50070), _entry("Notes", 50071))
    )
    assert "service[0] must be a table" in _error({"service": ["notes"]})


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (_entry("notes", 50071), "service 'notes': name: declared twice"),
        (_entry("memo", 50070), "service 'memo': port: 50070 is notes's too"),
        (_entry("memo", 50071, metrics_port=9470), "service 'memo': metrics_port: 9470 is notes's"),
        (_entry("memo", 50071, module="mercato_notes"), "service 'memo': module: mercato_notes"),
        (
            _entry("memo", 50071, scopes=["notes:read"]),
            "service 'memo': scopes: ['notes:read'] are notes's already",
        ),
        (
            _entry("memo", 50071, calls=["search"]),
            "service 'memo': calls: 'search' is not a service listed before it",
        ),
        (
            _entry("memo", 50071, client_scopes=["notes:read"]),
            "service 'memo': client_scopes: ['notes:read'] are not scopes of a service it calls",
        ),
    ],
)
def test_entries_are_checked_against_each_other(second: dict[str, Any], expected: str) -> None:
    first = _entry("notes", 50070, scopes=["notes:read"])
    assert expected in _error(_manifest(first, second))


def test_callees_come_first_and_serve_grpc() -> None:
    web = _entry("web", 8081, kind="http", grpc_service="", metrics_port=9471)
    assert "service 'notes': calls: 'web' serves no gRPC" in _error(
        _manifest(web, _entry("notes", 50070, calls=["web"]))
    )
    assert "'memo' is not a service listed before it" in _error(
        _manifest(_entry("notes", 50070, calls=["memo"]), _entry("memo", 50071))
    )


def test_the_document_itself() -> None:
    assert _error({}) == f"{SOURCE}: no [[service]] entries"
    assert "unknown top-level key(s) ['services']" in _error({"services": []})


def test_an_unreadable_file_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "services.toml"
    path.write_text("[[service]\nname = 'x'\n")
    with pytest.raises(ManifestError, match=f"cannot read the service manifest {path}"):
        load_manifest(path)
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.toml")


# What `make run` builds from the manifest ------------------------------------------------------


def _as_entry(service: ServiceSpec) -> dict[str, Any]:
    entry = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(service).items()}
    entry["dev_settings"] = dict(service.dev_settings)
    return entry


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _write_checkout(tmp_path: Path, entries: list[dict[str, Any]]) -> Stack:
    """A checkout whose manifest holds ``entries``, and a stack over it."""
    lines = []
    for entry in entries:
        # JSON's strings, numbers, booleans and lists of strings are TOML too.
        lines += ["[[service]]", *(f"{key} = {_toml_value(value)}" for key, value in entry.items())]
    path = manifest_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n")
    return Stack(StackConfig(repo_root=tmp_path, state_dir=tmp_path / ".state"))


def test_a_new_service_gets_its_settings_from_its_entry(tmp_path: Path) -> None:
    """Adding a service to the manifest is all `make run` needs to start it with its settings."""
    checkout = load_manifest()
    notes_entry = _entry(
        "notes",
        50070,
        store="postgres",
        produces=["mercato.notes.events.v1"],
        calls=["auth", "catalog"],
        client_scopes=["catalog:reserve"],
    )
    entries = [_as_entry(s) for s in checkout.services]
    gateway = entries.pop()  # notes goes before the gateway, which calls every other service
    stack = _write_checkout(tmp_path, [*entries, notes_entry, gateway])
    manifest = load_manifest(stack.config.manifest_file)
    environ = {"MERCATO_SUITE_PORT_BASE": "24060", "MERCATO_SUITE_METRICS_PORT_BASE": "19460"}

    ports = SuitePorts.from_env(manifest, environ)
    services = {s.name: s for s in _services(stack, environ, tmp_path / "run", ports)}

    notes = services["notes"]
    assert notes.module == "mercato_notes"
    assert (notes.grpc_port, notes.metrics_port) == (24070, 19470)
    assert notes.env["MERCATO_NOTES_GRPC_PORT"] == "24070"
    assert notes.env["MERCATO_NOTES_DATABASE_URL"] == stack.postgres_dsn("notes")
    assert notes.env["MERCATO_NOTES_KAFKA_BOOTSTRAP_SERVERS"] == stack.kafka_bootstrap
    assert notes.env["MERCATO_NOTES_AUTH_TARGET"] == "127.0.0.1:24061"
    assert notes.env["MERCATO_NOTES_CATALOG_TARGET"] == "127.0.0.1:24062"
    assert "MERCATO_NOTES_REDIS_URL" not in notes.env
    # Choices a deployment makes itself are made for development from dev_settings.
    assert services["orders"].env["MERCATO_ORDERS_PAYMENT_PROVIDER"] == "dev"
    assert "MERCATO_NOTES_PAYMENT_PROVIDER" not in notes.env
    clients = json.loads(services["auth"].env["MERCATO_AUTH_SERVICE_CLIENTS"])
    assert {c["client_id"]: c["scopes"] for c in clients} == {
        "orders": ["catalog:reserve"],
        "notes": ["catalog:reserve"],
    }
    secret = notes.env["MERCATO_NOTES_SERVICE_CLIENT_SECRET"]
    assert {c["client_id"]: c["secret"] for c in clients}["notes"] == secret
    assert json.loads((tmp_path / "run" / "secrets.json").read_text())["notes_client_secret"]
    postgres = stack.component("postgres")
    assert isinstance(postgres, Postgres)
    assert postgres.databases() == ("auth", "orders", "notes", "ferretdb")
    gateway_child = services["gateway"]
    assert gateway_child.grpc_port is None
    assert gateway_child.http_ready_url == "http://127.0.0.1:8080/readyz"
    assert gateway_child.env["MERCATO_GATEWAY_METRICS_PORT"] == "19460"


def test_suite_ports_move_with_the_bases() -> None:
    manifest = load_manifest()
    default = SuitePorts.from_env(manifest, {})
    assert [default.app(n) for n in manifest.names] == [50061, 50062, 50063, 50064, 8080]
    moved = SuitePorts.from_env(
        manifest,
        {
            "MERCATO_SUITE_PORT_BASE": "22060",
            "MERCATO_SUITE_METRICS_PORT_BASE": "22460",
            "MERCATO_GATEWAY_PORT": "22080",
        },
    )
    assert [moved.app(n) for n in manifest.names] == [22061, 22062, 22063, 22064, 22080]
    assert [moved.metrics(n) for n in manifest.names] == [22461, 22462, 22463, 22464, 22460]
    assert moved.target("catalog") == "127.0.0.1:22062"
