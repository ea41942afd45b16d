"""The service manifest (services/services.toml): the one list of mercato's services.

    from mercato_devstack.manifest import load_manifest

    manifest = load_manifest()              # the checkout's services/services.toml
    for service in manifest.services:       # in start order: callees before their callers
        service.name, service.module, service.port, service.store, service.calls

Every entry is checked when read, and a bad one fails with :class:`ManifestError` naming the
file, the entry and the field. The file's header documents the fields; conventions that follow
from the name (settings prefix, database name, image) are properties here rather than fields, so
they cannot disagree.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from mercato_devstack.config import find_repo_root
from mercato_devstack.errors import StackError

__all__ = [
    "KINDS",
    "STORES",
    "Manifest",
    "ManifestError",
    "ServiceSpec",
    "load_manifest",
    "manifest_path",
    "parse_manifest",
]

Kind = Literal["grpc", "http"]
Store = Literal["postgres", "mongo", "none"]
KINDS: tuple[Kind, ...] = ("grpc", "http")
STORES: tuple[Store, ...] = ("postgres", "mongo", "none")

# A name becomes a folder, a Python package suffix, a settings prefix, an image and a database
# name (interpolated into SQL by the local stack): lower-case letters and digits only.
_NAME = re.compile(r"^[a-z][a-z0-9]*$")
_MODULE = re.compile(r"^[a-z_][a-z0-9_]*$")
_TOPIC = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SCOPE = re.compile(r"^[a-z]+:[a-z]+$")
_REQUIRED = ("name", "module", "kind", "port", "metrics_port", "grpc_service", "store")
_LISTS = ("produces", "consumes", "calls", "scopes", "client_scopes")
_FIELDS = frozenset({*_REQUIRED, *_LISTS, "redis", "dev_settings"})
_SETTING = re.compile(r"^[A-Z][A-Z0-9_]*$")
_Choice = TypeVar("_Choice", bound=str)


class ManifestError(StackError):
    """services/services.toml is missing, not TOML, or an entry is wrong."""


@dataclass(frozen=True)
class ServiceSpec:
    """One service as the manifest declares it."""

    name: str
    module: str
    kind: Kind
    port: int
    metrics_port: int
    grpc_service: str
    store: Store
    redis: bool = False
    produces: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()
    calls: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    client_scopes: tuple[str, ...] = ()
    #: Settings (without the prefix) the local suites give it: choices a deployment must make
    #: itself, made here for development (e.g. orders' PAYMENT_PROVIDER = "dev").
    dev_settings: tuple[tuple[str, str], ...] = ()

    @property
    def env_prefix(self) -> str:
        """Prefix of its settings variables."""
        return f"MERCATO_{self.name.upper()}_"

    @property
    def database(self) -> str | None:
        """Name of its own database (PostgreSQL or MongoDB), None without a store."""
        return None if self.store == "none" else self.name

    @property
    def uses_kafka(self) -> bool:
        return bool(self.produces or self.consumes)

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic it writes or reads."""
        return (*self.produces, *(t for t in self.consumes if t not in self.produces))

    @property
    def grpc_package(self) -> str:
        """The proto package of its gRPC service ("" for kind http)."""
        return self.grpc_service.rpartition(".")[0]


@dataclass(frozen=True)
class Manifest:
    """Every service, in start order."""

    services: tuple[ServiceSpec, ...]
    source: str = "services/services.toml"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(service.name for service in self.services)

    def service(self, name: str) -> ServiceSpec:
        for service in self.services:
            if service.name == name:
                return service
        raise ManifestError(f"{self.source}: no service {name!r}; one of {', '.join(self.names)}")

    def with_store(self, store: Store) -> tuple[ServiceSpec, ...]:
        return tuple(service for service in self.services if service.store == store)

    def callers(self, name: str) -> tuple[str, ...]:
        """The services that call ``name`` over gRPC."""
        return tuple(service.name for service in self.services if name in service.calls)

    def producers(self, topic: str) -> tuple[str, ...]:
        return tuple(service.name for service in self.services if topic in service.produces)

    def consumers(self, topic: str) -> tuple[str, ...]:
        return tuple(service.name for service in self.services if topic in service.consumes)

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic some service writes or reads, each once."""
        return tuple(dict.fromkeys(t for service in self.services for t in service.topics))


# Reading ----------------------------------------------------------------------------------------


def manifest_path(repo_root: Path | None = None) -> Path:
    return (repo_root or find_repo_root()) / "services" / "services.toml"


def load_manifest(path: Path | None = None) -> Manifest:
    """The manifest at ``path`` (default: the checkout's services/services.toml)."""
    path = path or manifest_path()
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError(f"cannot read the service manifest {path}: {exc}") from exc
    return parse_manifest(document, str(path))


def parse_manifest(document: Mapping[str, Any], source: str = "services.toml") -> Manifest:
    """Check every entry of a parsed manifest and return it; the first problem raises."""
    unknown = sorted(set(document) - {"service"})
    if unknown:
        raise ManifestError(f"{source}: unknown top-level key(s) {unknown}; expected [[service]]")
    entries = document.get("service")
    if not isinstance(entries, list) or not entries:
        raise ManifestError(f"{source}: no [[service]] entries")
    services: list[ServiceSpec] = []
    for index, entry in enumerate(entries):
        service = _service(entry, source, index)
        _check_against_earlier(service, services, f"{source}: service {service.name!r}")
        services.append(service)
    return Manifest(tuple(services), source)


def _service(entry: Any, source: str, index: int) -> ServiceSpec:
    where = f"{source}: service[{index}]"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where} must be a table")
    name = entry.get("name")
    if isinstance(name, str) and _NAME.match(name):
        where = f"{source}: service {name!r}"  # errors name the entry once it has a name
    missing = [field for field in _REQUIRED if field not in entry]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
    extra = sorted(set(entry) - _FIELDS)
    if extra:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(extra)}")
    kind = _choice(entry["kind"], KINDS, f"{where}: kind")
    grpc_service = _text(entry["grpc_service"], f"{where}: grpc_service")
    if (kind == "grpc") != bool(grpc_service):
        raise ManifestError(
            f"{where}: grpc_service must name the gRPC service of a grpc service and be empty "
            f"for an http one, not {grpc_service!r}"
        )
    service = ServiceSpec(
        name=_matching(entry["name"], _NAME, f"{where}: name"),
        module=_matching(entry["module"], _MODULE, f"{where}: module"),
        kind=kind,
        port=_port(entry["port"], f"{where}: port"),
        metrics_port=_port(entry["metrics_port"], f"{where}: metrics_port"),
        grpc_service=grpc_service,
        store=_choice(entry["store"], STORES, f"{where}: store"),
        redis=_flag(entry.get("redis", False), f"{where}: redis"),
        produces=_names(entry.get("produces"), _TOPIC, f"{where}: produces"),
        consumes=_names(entry.get("consumes"), _TOPIC, f"{where}: consumes"),
        calls=_names(entry.get("calls"), _NAME, f"{where}: calls"),
        scopes=_names(entry.get("scopes"), _SCOPE, f"{where}: scopes"),
        client_scopes=_names(entry.get("client_scopes"), _SCOPE, f"{where}: client_scopes"),
        dev_settings=_settings(entry.get("dev_settings"), f"{where}: dev_settings"),
    )
    if service.port == service.metrics_port:
        raise ManifestError(f"{where}: port and metrics_port are both {service.port}")
    if service.name in service.calls:
        raise ManifestError(f"{where}: calls: a service does not call itself")
    return service


def _settings(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ManifestError(f'{where} must be a table of NAME = "value"')
    out: list[tuple[str, str]] = []
    for name, setting in sorted(value.items()):
        if not _SETTING.match(name) or not isinstance(setting, str):
            raise ManifestError(f"{where}: {name} must be an UPPER_CASE name with a string value")
        out.append((name, setting))
    return tuple(out)


def _check_against_earlier(service: ServiceSpec, earlier: list[ServiceSpec], where: str) -> None:
    """What one entry cannot tell alone: unique names and ports, callees listed before it."""
    by_name = {other.name: other for other in earlier}
    if service.name in by_name:
        raise ManifestError(f"{where}: name: declared twice")
    for other in earlier:
        if other.module == service.module:
            raise ManifestError(f"{where}: module: {service.module} is {other.name}'s too")
        for field, port in (("port", service.port), ("metrics_port", service.metrics_port)):
            if port in (other.port, other.metrics_port):
                raise ManifestError(f"{where}: {field}: {port} is {other.name}'s too")
        defined_twice = sorted(set(service.scopes) & set(other.scopes))
        if defined_twice:
            raise ManifestError(f"{where}: scopes: {defined_twice} are {other.name}'s already")
    for callee in service.calls:
        if callee not in by_name:
            raise ManifestError(
                f"{where}: calls: {callee!r} is not a service listed before it "
                "(entries are in start order: callees first)"
            )
        if by_name[callee].kind != "grpc":
            raise ManifestError(f"{where}: calls: {callee!r} serves no gRPC")
    offered = {scope for callee in service.calls for scope in by_name[callee].scopes}
    unoffered = sorted(set(service.client_scopes) - offered)
    if unoffered:
        raise ManifestError(
            f"{where}: client_scopes: {unoffered} are not scopes of a service it calls"
        )


# Field checks -----------------------------------------------------------------------------------


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{where} must be a string, not {value!r}")
    return value


def _matching(value: Any, pattern: re.Pattern[str], where: str) -> str:
    text = _text(value, where)
    if not pattern.match(text):
        raise ManifestError(f"{where}: {text!r} does not match {pattern.pattern}")
    return text


def _choice(value: Any, choices: tuple[_Choice, ...], where: str) -> _Choice:
    if value not in choices:
        raise ManifestError(f"{where} must be one of {', '.join(choices)}, not {value!r}")
    return cast(_Choice, value)


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ManifestError(f"{where} must be a port number (1-65535), not {value!r}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ManifestError(f"{where} must be true or false, not {value!r}")
    return value


def _names(value: Any, pattern: re.Pattern[str], where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ManifestError(f"{where} must be a list, not {value!r}")
    names = tuple(_matching(item, pattern, where) for item in value)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ManifestError(f"{where}: {repeated} listed twice")
    return names
