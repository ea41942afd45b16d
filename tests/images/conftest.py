"""Fixtures of the image checks (`make images-smoke`): the images of the current tree, built or
reused by tools/images.py, and every service running from its image under runc.

The session skips at once when this machine cannot build or run images (not root, no overlayfs,
no Go to build the tools): tools/images.py `missing_prerequisites` says why.

Each container runs as a Kubernetes restricted pod would (the image's numeric user, read-only
root filesystem, no capabilities, a tmpfs at /tmp) but in the host's network namespace, so it
reaches the local stack on 127.0.0.1 (`make stack-up`, started here when it is not running). The
services get a private copy of their stores: their own PostgreSQL and MongoDB databases and
Kafka topics under a prefix of this session, all removed afterwards, and ports of their own
(gRPC 21061-21064, metrics 21460-21464, gateway 21080), so the checks run beside `make run`,
the end-to-end suite and other test sessions.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mercato_devstack.manifest import Manifest, ServiceSpec, load_manifest
from mercato_devstack.testing import (
    Backends,
    open_backends,
    temporary_database,
    temporary_mongo_database,
    temporary_topics,
)

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = load_manifest()
#: The ports of this session: every gRPC port moved to 2106x, metrics to 2146x.
GRPC_SHIFT = 21060 - 50060
METRICS_SHIFT = 21460 - 9460
HTTP_PORT = 21080
READY_TIMEOUT = 90.0
#: Budget of an image as pulled (compressed layers): the issue's goal.
SIZE_BUDGET_BYTES = 150_000_000
LOGS = ROOT / ".state" / "images" / "smoke"


@cache
def images_tool() -> ModuleType:
    """tools/images.py as a module."""
    spec = importlib.util.spec_from_file_location("mercato_tools_images", ROOT / "tools/images.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def app_port(service: ServiceSpec) -> int:
    return HTTP_PORT if service.kind == "http" else service.port + GRPC_SHIFT


@pytest.fixture(scope="session")
def tools() -> Any:
    """The built toolchain (runc, BuildKit, registry, crane) with the registry and buildkitd up."""
    images = images_tool()
    reason = images.missing_prerequisites()
    if reason is not None:
        pytest.skip(f"image checks skipped: {reason}")
    built = images.ensure_tools()
    images.up(built)
    return built


@pytest.fixture(scope="session")
def built_images(tools: Any) -> dict[str, Any]:
    """Every service's image of the current tree (BuildKit's cache makes a rebuild quick)."""
    return {image.service: image for image in images_tool().build_images(tools)}


@dataclass
class ImageFacts:
    """What the checks read from one image (once per session)."""

    ref: str
    config: dict[str, Any]
    index: dict[str, Any]
    rootfs: Path
    sizes: Any


@pytest.fixture(scope="session")
def facts(tools: Any, built_images: dict[str, Any]) -> dict[str, ImageFacts]:
    images = images_tool()
    return {
        name: ImageFacts(
            ref=image.ref,
            config=images.image_config(tools, image.pinned),
            index=json.loads(images.crane(tools, "manifest", image.pinned)),
            rootfs=images.export_rootfs(tools, image.pinned),
            sizes=images.image_sizes(tools, image.pinned),
        )
        for name, image in built_images.items()
    }


# The services' private stores -------------------------------------------------------------


@dataclass(frozen=True)
class Stores:
    backends: Backends
    postgres: Mapping[str, str]
    mongo: Mapping[str, str]
    topic_prefix: str


@pytest.fixture(scope="session")
def backends() -> Iterator[Backends]:
    """The local stack (started when it is not running), unless MERCATO_TEST_* name servers."""
    env = {**os.environ, "MERCATO_TEST_BACKEND": os.environ.get("MERCATO_TEST_BACKEND", "local")}
    with open_backends(env) as opened:
        yield opened


@pytest.fixture(scope="session")
async def stores(backends: Backends) -> AsyncIterator[Stores]:
    """A PostgreSQL or MongoDB database per service with a store, and every declared topic
    under a prefix of this session; all dropped afterwards."""
    postgres: dict[str, str] = {}
    mongo: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as cleanup:
        topics = await cleanup.enter_async_context(temporary_topics(backends.kafka_bootstrap))
        await topics.create_declared()
        for service in MANIFEST.services:
            prefix = f"img_{service.name}"
            if service.store == "postgres":
                postgres[service.name] = await cleanup.enter_async_context(
                    temporary_database(backends.postgres_dsn, prefix=prefix)
                )
            elif service.store == "mongo":
                mongo[service.name] = await cleanup.enter_async_context(
                    temporary_mongo_database(backends.mongo_uri, prefix=prefix)
                )
        yield Stores(backends, postgres, mongo, topics.prefix)


def service_env(
    service: ServiceSpec, manifest: Manifest, stores: Stores, dev: Mapping[str, str]
) -> dict[str, str]:
    """``MERCATO_<NAME>_*`` of one service, as `make run` sets them (mercato_devstack.suite), on
    this session's ports, databases and topics, listening on loopback only."""
    prefix = stores.topic_prefix
    values = {
        "METRICS_PORT": str(service.metrics_port + METRICS_SHIFT),
        "TOKEN_ISSUER": f"http://127.0.0.1:{HTTP_PORT}",
        "TOKEN_AUDIENCE": "mercato",
    }
    if service.kind == "grpc":
        values.update(GRPC_PORT=str(app_port(service)), GRPC_HOST="127.0.0.1")
    else:
        values.update(PORT=str(app_port(service)), HOST="127.0.0.1")
    if service.store == "postgres":
        values["DATABASE_URL"] = stores.postgres[service.name]
    elif service.store == "mongo":
        values.update(
            MONGO_URI=stores.backends.mongo_uri, MONGO_DATABASE=stores.mongo[service.name]
        )
    if service.redis:
        values["REDIS_URL"] = stores.backends.redis_url
    if service.uses_kafka:
        values["KAFKA_BOOTSTRAP_SERVERS"] = stores.backends.kafka_bootstrap
    for topic in service.produces:
        key = "DEAD_LETTER_TOPIC" if ".dlq." in topic else "EVENTS_TOPIC"
        values[key] = prefix + topic
    for topic in service.consumes:
        values[f"{topic.split('.')[1].upper()}_EVENTS_TOPIC"] = prefix + topic
    if service.consumes:
        values["CONSUMER_GROUP"] = f"{prefix}mercato.{service.name}"
    for callee in service.calls:
        values[f"{callee.upper()}_TARGET"] = f"127.0.0.1:{app_port(manifest.service(callee))}"
    values.update(service.dev_settings)
    if service.client_scopes:
        values.update(SERVICE_CLIENT_ID=service.name, SERVICE_CLIENT_SECRET=dev[service.name])
    if service.name == "auth":
        clients = [
            {"client_id": s.name, "secret": dev[s.name], "scopes": list(s.client_scopes)}
            for s in manifest.services
            if s.client_scopes
        ]
        values.update(SIGNING_KEY_KEK=dev["kek"], SERVICE_CLIENTS=json.dumps(clients))
    return {service.env_prefix + key: value for key, value in values.items()}


# Running the images -------------------------------------------------------------------------


@dataclass
class Running:
    """One service's container and what became of it."""

    service: ServiceSpec
    container: Any
    ready_seconds: float | None = None
    error: str | None = None
    checks: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = Path(self.container.log_path).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def probe(service: ServiceSpec) -> str | None:
    """None when the service answers ready: gRPC health of its service for kind grpc, HTTP
    /readyz for the gateway."""
    if service.kind == "http":
        url = f"http://127.0.0.1:{app_port(service)}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return None if reply.status == 200 else f"HTTP {reply.status}"
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}"
        except OSError as error:
            return str(error)
    with grpc.insecure_channel(f"127.0.0.1:{app_port(service)}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service.grpc_service), timeout=2
            )
        except grpc.RpcError as error:
            return f"{error.code().name}: {error.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return None


@pytest.fixture(scope="session")
def running(
    tools: Any, built_images: dict[str, Any], stores: Stores
) -> Iterator[dict[str, Running]]:
    """Every service from its image, in the manifest's order (callees first), each waited for
    until ready (or READY_TIMEOUT) before the next starts; stopped in reverse at the end."""
    images = images_tool()
    dev = {
        "kek": base64.b64encode(secrets.token_bytes(32)).decode(),
        **{s.name: secrets.token_urlsafe(32) for s in MANIFEST.services if s.client_scopes},
    }
    LOGS.mkdir(parents=True, exist_ok=True)
    started: dict[str, Running] = {}
    try:
        for service in MANIFEST.services:
            log_path = LOGS / f"{service.name}.log"
            log_path.unlink(missing_ok=True)
            container = images.run_container(
                tools,
                built_images[service.name].pinned,
                name=f"mercato-smoke-{service.name}",
                env=service_env(service, MANIFEST, stores, dev),
                log_path=log_path,
            )
            entry = started[service.name] = Running(service, container)
            began = time.monotonic()
            while (reason := probe(service)) is not None:
                if not container.running():
                    entry.error = f"exited with {container.child.returncode}: {reason}"
                    break
                if time.monotonic() - began > READY_TIMEOUT:
                    entry.error = f"not ready after {READY_TIMEOUT:.0f} s: {reason}"
                    break
                time.sleep(0.25)
            else:
                entry.ready_seconds = round(time.monotonic() - began, 1)
                entry.checks = inspect_process(container)
                SUMMARY.append(f"{service.name:<10} ready {entry.ready_seconds:4.1f} s under runc")
        yield started
    finally:
        # Callers first; all asked at once, then each waited for (a graceful stop takes ~2 s).
        for entry in reversed(started.values()):
            entry.container.terminate()
        for entry in reversed(started.values()):
            entry.container.stop()


def inspect_process(container: Any) -> dict[str, Any]:
    """The container's first process as the kernel sees it: user ids, capabilities and whether
    its root filesystem is mounted read-only."""
    pid = int(container.state().get("pid") or 0)
    if pid <= 0:
        return {}
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    root_options = ""
    for line in Path(f"/proc/{pid}/mounts").read_text().splitlines():
        _device, target, _kind, options, *_ = line.split()
        if target == "/":
            root_options = options  # the last mount on / is the one the process sees
    return {
        "uids": status["Uid"].split(),
        "gids": status["Gid"].split(),
        "cap_eff": status["CapEff"].strip(),
        "cap_bnd": status["CapBnd"].strip(),
        "root_read_only": "ro" in root_options.split(","),
    }


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The sizes of the images checked, whatever the outcome."""
    if not SUMMARY:
        return
    terminalreporter.write_sep("-", "images: time to ready, sizes (pulled = compressed layers)")
    for line in SUMMARY:
        terminalreporter.write_line(line)


#: Lines for the terminal summary: start times and sizes.
SUMMARY: list[str] = []
