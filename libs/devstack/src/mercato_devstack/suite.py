"""The whole suite on one machine: the local stack plus every service, supervised (`make run`).

Starts the stack (PostgreSQL, Kafka, FerretDB, Redis), then every service of the service
manifest (services/services.toml) as a child process (``python -m <module>``), in the manifest's
order, each once the one before answers its health check (gRPC health, or ``/readyz`` for the
HTTP gateway). A child that exits on its own is restarted with a growing delay. Output goes to
``.state/run/logs/<service>.log`` and, rendered one line per event, to the console. Once every
service is ready the sample catalog is loaded (idempotently) and the gateway URL is printed.
SIGINT/SIGTERM (Ctrl-C, or ``python -m mercato_devstack shutdown``) stops the children in reverse
order, then the stack.

Each child gets the settings its manifest entry calls for (as ``MERCATO_<NAME>_*``): its ports,
its own database (PostgreSQL) or MongoDB URI and database, Redis, Kafka, the targets of the
services it calls, the token issuer and audience, and, for a service client, its client id and
secret (auth gets the list of those clients).

Ports: the manifest's, moved so a second suite (the end-to-end tests, the bench) can run beside
`make run` with its own ``MERCATO_STATE_DIR`` and stack ports: every gRPC port by
``MERCATO_SUITE_PORT_BASE`` - 50060, every metrics port by ``MERCATO_SUITE_METRICS_PORT_BASE`` -
9460; the gateway's HTTP port is ``MERCATO_GATEWAY_PORT`` (8080). ``<state>/run/suite.json``
lists the children (pid, ports, restarts) while the suite runs.

Kafka: the services reach the broker's plain listener, or with ``MERCATO_SUITE_KAFKA_SECURITY``
``sasl_ssl`` its TLS + SCRAM-SHA-512 listener, or with ``mtls`` its listener that requires a client
certificate (the end-to-end suite runs over ``sasl_ssl``, as against a managed Kafka).

Development secrets (the token key-encryption key, each service client's secret) are generated
once into ``.state/run/secrets.json`` so that a second run reuses the same keys.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

from mercato_devstack.config import find_repo_root
from mercato_devstack.errors import StackError
from mercato_devstack.graphiql import graphiql_assets
from mercato_devstack.manifest import Manifest, ServiceSpec, load_manifest, manifest_path
from mercato_devstack.observe import ScrapeTarget, observers
from mercato_devstack.stack import Stack

log = logging.getLogger("mercato_devstack.suite")

DEFAULT_ADMIN_EMAIL = "admin@mercato.local"
DEFAULT_ADMIN_PASSWORD = "mercato-admin-password"  # noqa: S105 - the documented dev default
READY_TIMEOUT = 120.0
#: The bases the manifest's ports are relative to: MERCATO_SUITE_PORT_BASE and
#: MERCATO_SUITE_METRICS_PORT_BASE move every port by their difference to these.
DEFAULT_PORT_BASE = 50060
DEFAULT_METRICS_PORT_BASE = 9460
#: The service that issues access tokens: it gets the signing keys' key-encryption key, the
#: service clients and the bootstrap admin.
ISSUER_SERVICE = "auth"
STOP_TIMEOUT = 20.0
# Console lines of these loggers are left to the log files: one line per RPC is too much to read.
QUIET_LOGGERS = frozenset({"mercato.access", "mercato.gateway.access"})


@dataclass
class Service:
    name: str
    module: str
    env: dict[str, str]
    grpc_port: int | None = None
    metrics_port: int | None = None
    http_ready_url: str | None = None
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


def _client_secret_key(service: ServiceSpec) -> str:
    return f"{service.name}_client_secret"


def _secrets(path: Path, manifest: Manifest) -> dict[str, str]:
    """The development secrets of this checkout: generated on first use, kept afterwards.

    A secret the file lacks (a service client added to the manifest since) is added to it.
    """
    values: dict[str, str] = dict(json.loads(path.read_text())) if path.exists() else {}
    generators: dict[str, Callable[[], str]] = {
        "signing_key_kek": lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
        **{
            _client_secret_key(service): lambda: secrets.token_urlsafe(32)
            for service in manifest.services
            if service.client_scopes
        },
    }
    missing = [key for key in generators if key not in values]
    if missing:
        values.update({key: generators[key]() for key in missing})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2))
        path.chmod(0o600)
    return values


@dataclass(frozen=True)
class SuitePorts:
    """Where each service of the manifest listens in this suite (see the module docstring)."""

    manifest: Manifest
    grpc_shift: int = 0
    metrics_shift: int = 0
    #: The HTTP port of each service of kind http, by name.
    http: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_env(cls, manifest: Manifest, environ: Mapping[str, str]) -> SuitePorts:
        def number(name: str, default: int) -> int:
            raw = environ.get(name) or str(default)
            try:
                return int(raw)
            except ValueError:
                raise StackError(f"{name}={raw!r} is not a port number") from None

        ports = cls(
            manifest,
            grpc_shift=number("MERCATO_SUITE_PORT_BASE", DEFAULT_PORT_BASE) - DEFAULT_PORT_BASE,
            metrics_shift=number("MERCATO_SUITE_METRICS_PORT_BASE", DEFAULT_METRICS_PORT_BASE)
            - DEFAULT_METRICS_PORT_BASE,
            http={
                service.name: number(f"{service.env_prefix}PORT", service.port)
                for service in manifest.services
                if service.kind == "http"
            },
        )
        for service in manifest.services:
            for port in (ports.app(service.name), ports.metrics(service.name)):
                if not 0 < port < 65536:
                    raise StackError(f"{service.name}'s suite port {port} is out of range")
        return ports

    def app(self, service: str) -> int:
        """The gRPC port, or the HTTP port of a service of kind http."""
        spec = self.manifest.service(service)
        return self.http[service] if spec.kind == "http" else spec.port + self.grpc_shift

    def metrics(self, service: str) -> int:
        return self.manifest.service(service).metrics_port + self.metrics_shift

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.app(service)}"


def _entry(manifest: Manifest) -> ServiceSpec:
    """The suite's public entry: its one service of kind http (the gateway)."""
    entries = [service for service in manifest.services if service.kind == "http"]
    if len(entries) != 1:
        raise StackError(
            f"{manifest.source}: the suite needs exactly one service of kind http (its entry), "
            f"not {len(entries)}"
        )
    return entries[0]


@dataclass(frozen=True)
class _SuiteSettings:
    """What every service's settings are built from."""

    manifest: Manifest
    ports: SuitePorts
    stack: Stack
    dev: Mapping[str, str]
    environ: Mapping[str, str]
    token: Mapping[str, str]
    kafka_security: str = "plaintext"
    #: GraphiQL's assets for the suite's entry (development: the gateway serves /graphiql).
    graphiql: Path | None = None

    def service_env(self, service: ServiceSpec) -> dict[str, str]:
        """The environment of one child: the suite's own plus its ``MERCATO_<NAME>_*``."""
        values = {**self.token, "METRICS_PORT": str(self.ports.metrics(service.name))}
        values["GRPC_PORT" if service.kind == "grpc" else "PORT"] = str(
            self.ports.app(service.name)
        )
        if service.kind == "grpc":
            values["GRPC_REFLECTION"] = "true"  # development: grpcurl lists the services
        if service.store == "postgres":
            values["DATABASE_URL"] = self.stack.postgres_dsn(service.name)
        elif service.store == "mongo":
            values["MONGO_URI"] = self.stack.mongo_uri
            values["MONGO_DATABASE"] = service.name
        if service.redis:
            values["REDIS_URL"] = self.stack.redis_url
        if service.uses_kafka:
            values.update(self.stack.config.kafka_client_settings(self.kafka_security))
        for callee in service.calls:
            values[f"{callee.upper()}_TARGET"] = self.ports.target(callee)
        values.update(service.dev_settings)
        if service.kind == "http" and self.graphiql is not None:
            values["GRAPHIQL_ASSETS_DIR"] = str(self.graphiql)
        if service.client_scopes:
            values["SERVICE_CLIENT_ID"] = service.name
            values["SERVICE_CLIENT_SECRET"] = self.dev[_client_secret_key(service)]
        env = {**self.environ, "PYTHONUNBUFFERED": "1"}
        if service.name == ISSUER_SERVICE:
            values.update(self._issuer_values())
            env["MERCATO_BOOTSTRAP_ADMIN_EMAIL"] = self.environ.get(
                "MERCATO_BOOTSTRAP_ADMIN_EMAIL", DEFAULT_ADMIN_EMAIL
            )
            env["MERCATO_BOOTSTRAP_ADMIN_PASSWORD"] = self.environ.get(
                "MERCATO_BOOTSTRAP_ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD
            )
        env.update({service.env_prefix + key: value for key, value in values.items()})
        return env

    def _issuer_values(self) -> dict[str, str]:
        clients = [
            {
                "client_id": service.name,
                "secret": self.dev[_client_secret_key(service)],
                "scopes": list(service.client_scopes),
            }
            for service in self.manifest.services
            if service.client_scopes
        ]
        return {
            "SIGNING_KEY_KEK": self.dev["signing_key_kek"],
            "SERVICE_CLIENTS": json.dumps(clients),
        }


def _services(
    stack: Stack, environ: Mapping[str, str], run_dir: Path, ports: SuitePorts
) -> list[Service]:
    """A child process per service of the manifest, in its order."""
    manifest = ports.manifest
    issuer = environ.get(
        "MERCATO_TOKEN_ISSUER", f"http://127.0.0.1:{ports.app(_entry(manifest).name)}"
    )
    settings = _SuiteSettings(
        manifest=manifest,
        ports=ports,
        stack=stack,
        dev=_secrets(run_dir / "secrets.json", manifest),
        environ=environ,
        token={"TOKEN_ISSUER": issuer, "TOKEN_AUDIENCE": "mercato"},
        kafka_security=environ.get("MERCATO_SUITE_KAFKA_SECURITY") or "plaintext",
        graphiql=graphiql_assets(stack.config.repo_root),
    )
    return [
        Service(
            service.name,
            service.module,
            settings.service_env(service),
            grpc_port=ports.app(service.name) if service.kind == "grpc" else None,
            metrics_port=ports.metrics(service.name),
            http_ready_url=(
                f"http://127.0.0.1:{ports.app(service.name)}/readyz"
                if service.kind == "http"
                else None
            ),
        )
        for service in manifest.services
    ]


def render_line(name: str, raw: str) -> str | None:
    """One console line for one log line of a service, or None to leave it to the log file."""
    text = raw.rstrip()
    if not text:
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return f"{name:>9} | {text}"
    if not isinstance(event, dict):
        return f"{name:>9} | {text}"
    if event.get("log.logger") in QUIET_LOGGERS:
        return None
    level = str(event.get("log.level", "")).ljust(7)
    message = event.get("message", "")
    return f"{name:>9} | {level} {event.get('log.logger', '')}: {message}"


class Suite:
    def __init__(self, stack: Stack, environ: Mapping[str, str], console: TextIO) -> None:
        self.stack = stack
        self.environ = environ
        self.console = console
        self.run_dir = stack.config.state_dir / "run"
        self.logs = self.run_dir / "logs"
        self.manifest = load_manifest(manifest_path(stack.config.repo_root))
        self.entry = _entry(self.manifest)
        self.ports = SuitePorts.from_env(self.manifest, environ)
        #: `make observe` (MERCATO_OBSERVE): Jaeger and Prometheus run beside the services.
        self.observers = (
            observers(
                stack.config,
                [
                    ScrapeTarget(service.name, f"127.0.0.1:{self.ports.metrics(service.name)}")
                    for service in self.manifest.services
                ],
                environ,
            )
            if environ.get("MERCATO_OBSERVE", "").lower() in ("1", "true", "yes")
            else ()
        )
        if self.observers:
            jaeger = self.observers[0]
            environ = {**environ, "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint}
        self.services = _services(stack, environ, self.run_dir, self.ports)
        self.status_file = self.run_dir / "suite.json"
        self.ready = False
        self.stopping = asyncio.Event()

    def status(self) -> dict[str, object]:
        """What ``suite.json`` holds: readiness, the gateway URL and each child's pid and ports."""
        return {
            "supervisor_pid": os.getpid(),
            "ready": self.ready,
            "gateway_url": f"http://127.0.0.1:{self.ports.app(self.entry.name)}",
            "services": {
                service.name: {
                    "pid": None if service.process is None else service.process.pid,
                    "running": service.process is not None and service.process.returncode is None,
                    "grpc_port": service.grpc_port,
                    "metrics_port": service.metrics_port,
                    "restarts": service.restarts,
                    "log": str(self.logs / f"{service.name}.log"),
                }
                for service in self.services
            },
        }

    def _write_status(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        partial = self.status_file.with_suffix(".json.tmp")
        partial.write_text(json.dumps(self.status(), indent=2))
        partial.replace(self.status_file)

    # Processes ------------------------------------------------------------------------------

    async def _spawn(self, service: Service) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        service.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            service.module,
            env=service.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children
        )
        service.pumps = [asyncio.create_task(self._pump(service, service.process))]
        self._write_status()

    async def _pump(self, service: Service, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        with (self.logs / f"{service.name}.log").open("a") as log_file:
            async for raw in process.stdout:
                line = raw.decode(errors="replace")
                log_file.write(line)
                log_file.flush()
                rendered = render_line(service.name, line)
                if rendered is not None:
                    print(rendered, file=self.console, flush=True)

    async def _ready(self, service: Service) -> bool:
        if service.grpc_port is not None:
            return await _grpc_serving(service.grpc_port)
        assert service.http_ready_url is not None
        return await asyncio.to_thread(http_ok, service.http_ready_url)

    async def _wait_ready(self, service: Service) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            process = service.process
            if process is not None and process.returncode is not None:
                raise StackError(
                    f"{service.name} exited with code {process.returncode} while starting: "
                    f"see {self.logs / (service.name + '.log')}"
                )
            if await self._ready(service):
                return
            await asyncio.sleep(0.5)
        raise StackError(
            f"{service.name} not ready after {READY_TIMEOUT:.0f} s: "
            f"see {self.logs / (service.name + '.log')}"
        )

    async def _supervise(self, service: Service) -> None:
        """Restart ``service`` whenever it exits on its own; a growing delay stops a crash loop."""
        while not self.stopping.is_set():
            process = service.process
            assert process is not None
            code = await process.wait()
            for pump in service.pumps:
                await pump
            if self.stopping.is_set():
                return
            service.restarts += 1
            self._write_status()
            delay = min(30.0, 2.0 ** min(service.restarts, 5))
            log.warning("%s exited with code %s; restarting in %.0f s", service.name, code, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return
            await self._spawn(service)

    async def _terminate(self, service: Service) -> None:
        process = service.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("%s did not stop in %.0f s; killing it", service.name, STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    # The run --------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stopping.set)
        pid_file = self.run_dir / "suite.pid"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(str(os.getpid()))
        supervisors: list[asyncio.Task[None]] = []
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.stack.up)
            await asyncio.to_thread(self._start_observers)
            for service in self.services:
                if self.stopping.is_set():
                    return
                log.info("starting %s", service.name)
                await self._spawn(service)
                await self._wait_ready(service)
                supervisors.append(asyncio.create_task(self._supervise(service)))
            await self._load_sample_catalog()
            self.ready = True
            self._write_status()
            self._print_ready(time.monotonic() - started)
            await self.stopping.wait()
        finally:
            self.stopping.set()
            log.info("stopping the suite")
            for service in reversed(self.services):
                await self._terminate(service)
            for task in supervisors:
                task.cancel()
            await asyncio.gather(*supervisors, return_exceptions=True)
            await asyncio.to_thread(self._stop_observers)
            await asyncio.to_thread(self.stack.down)
            pid_file.unlink(missing_ok=True)
            self.status_file.unlink(missing_ok=True)
            log.info("suite stopped")

    def _start_observers(self) -> None:
        for observer in self.observers:
            observer.prepare()
            observer.start()
            observer.wait_ready()
            log.info("%s: ready on %s", observer.name, observer.url)

    def _stop_observers(self) -> None:
        for observer in reversed(self.observers):
            observer.stop()

    def _observe_lines(self) -> str:
        if not self.observers:
            return ""
        jaeger, prometheus = self.observers
        # Prometheus is built with its web UI; Jaeger's Go module has no UI (its API is served).
        return (
            f"  Prometheus: {prometheus.url}  (web UI: /targets, /query, /alerts;"
            " API: /api/v1/targets, /api/v1/query, /api/v1/alerts)\n"
            f"  Jaeger:     {jaeger.url}  (API: /api/services, /api/traces/<trace id>;"
            f" spans over OTLP to {jaeger.otlp_endpoint})\n"
        )

    def _print_ready(self, elapsed: float) -> None:
        port = self.ports.app(self.entry.name)
        email = self.environ.get("MERCATO_BOOTSTRAP_ADMIN_EMAIL", DEFAULT_ADMIN_EMAIL)
        password_note = (
            "(from MERCATO_BOOTSTRAP_ADMIN_PASSWORD)"
            if "MERCATO_BOOTSTRAP_ADMIN_PASSWORD" in self.environ
            else DEFAULT_ADMIN_PASSWORD
        )
        url = f"http://127.0.0.1:{port}"
        print(
            f"""
mercato is ready in {elapsed:.1f} s: the gateway listens on {url}
  API description: {url}/openapi.json    docs: {url}/docs
  GraphQL: {url}/graphql    GraphiQL: {url}/graphiql
  admin: {email} / {password_note}
  logs:  {self.logs}/<service>.log
{self._observe_lines()}
Try:
  curl -s -X POST {url}/v1/auth/login -H 'Content-Type: application/json' \\
       -d '{{"email": "{email}", "password": "<the admin password>"}}'
  curl -s {url}/v1/products -H "Authorization: Bearer <access_token from the login>"

Ctrl-C (or `make stop`) stops everything.
""",
            file=self.console,
            flush=True,
        )

    async def _load_sample_catalog(self) -> None:
        """Create the sample categories and products through catalog's API, as the admin."""
        from mercato_devstack.sample import load_sample_catalog  # needs the contracts

        path = find_repo_root() / "deploy" / "local" / "sample-catalog.yaml"
        catalog = yaml.safe_load(path.read_text())
        created = await load_sample_catalog(
            catalog,
            auth_target=self.ports.target("auth"),
            catalog_target=self.ports.target("catalog"),
            email=self.environ.get("MERCATO_BOOTSTRAP_ADMIN_EMAIL", DEFAULT_ADMIN_EMAIL),
            password=self.environ.get("MERCATO_BOOTSTRAP_ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD),
        )
        log.info("sample catalog: %d products created, the rest already there", created)


async def _grpc_serving(port: int) -> bool:
    import grpc  # the workspace's; the stack itself needs no gRPC
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def run(environ: Mapping[str, str], console: TextIO = sys.stdout) -> int:
    suite = Suite(Stack(), environ, console)
    try:
        asyncio.run(suite.run())
    except StackError as exc:
        print(f"make run failed: {exc}", file=sys.stderr)
        return 1
    return 0


def shutdown() -> int:
    """Stop a running `make run` (SIGTERM to its supervisor, which stops the stack too).

    Without a running supervisor this just stops the stack.
    """
    stack = Stack()
    pid_file = stack.config.state_dir / "run" / "suite.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    if pid is None or not _alive(pid):
        for observer in reversed(observers(stack.config)):
            observer.stop()
        stack.down()
        print("suite stopped")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT * 6
    while _alive(pid):
        if time.monotonic() > deadline:
            print(f"the suite (pid {pid}) did not stop; see {pid_file.parent / 'logs'}")
            return 1
        time.sleep(0.2)
    print("suite stopped")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


__all__ = ["Suite", "SuitePorts", "render_line", "run", "shutdown"]
