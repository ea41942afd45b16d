"""Backends and per-test isolation for integration tests, shared by every test suite.

Where each component comes from, in order:

1. an environment variable naming an external server (:data:`ENV_VARS`);
2. testcontainers, when a Docker engine answers ``docker.from_env().ping()``;
3. the local stack (:class:`mercato_devstack.Stack`), started if it is not running.

``MERCATO_TEST_BACKEND=local`` skips step 2, ``=testcontainers`` insists on it.

The isolation helpers give each test its own PostgreSQL database, Kafka topic prefix, MongoDB
database and Redis key prefix, and clean up after it. The drivers (asyncpg, aiokafka, pymongo,
redis) are imported lazily: they are in the workspace's dev dependencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mercato_devstack.config import PG_PASSWORD, PG_USER, StackConfig, find_repo_root
from mercato_devstack.errors import StackError
from mercato_devstack.stack import Stack
from mercato_devstack.topics import TopicSpec, delete_topics, ensure_topics, load_topics

log = logging.getLogger("mercato_devstack")

#: Environment variables pointing the tests at external servers, per backend.
ENV_VARS: Mapping[str, str] = {
    "postgres": "MERCATO_TEST_POSTGRES_DSN",
    "kafka": "MERCATO_TEST_KAFKA_BOOTSTRAP",
    "mongo": "MERCATO_TEST_MONGO_URI",
    "redis": "MERCATO_TEST_REDIS_URL",
}
#: The local stack component serving each backend.
LOCAL_COMPONENT: Mapping[str, str] = {
    "postgres": "postgres",
    "kafka": "kafka",
    "mongo": "ferretdb",
    "redis": "redis",
}
#: Images for testcontainers, pinned (never `latest`).
IMAGES: Mapping[str, str] = {
    "postgres": "postgres:15-alpine",
    "kafka": "confluentinc/cp-kafka:7.9.0",
    "mongo": "mongo:7.0",
    "redis": "redis:7.2-alpine",
}


@dataclass(frozen=True)
class Backends:
    """Connection settings of the servers a test session uses."""

    #: DSN of a role that may create and drop databases (not a per-test database).
    postgres_dsn: str
    kafka_bootstrap: str
    mongo_uri: str
    redis_url: str
    #: Where each backend came from: "env", "testcontainers" or "local".
    sources: Mapping[str, str] = field(default_factory=dict)
    #: The local stack, when every backend is served by it (the fault hooks need that).
    stack: Stack | None = None


def compile_contract(
    text: str, name: str, out: Path, *, includes: Sequence[Path] = ()
) -> tuple[ModuleType, ModuleType]:
    """A proto contract a test writes (``text``, file ``<name>.proto``), compiled with
    grpcio-tools into ``out``: its ``<name>_pb2`` and ``<name>_pb2_grpc`` modules. The repo's
    protos/ and ``includes`` are its import roots."""
    from grpc_tools import protoc  # lazy: only tests that write contracts need it

    (out / f"{name}.proto").write_text(text)
    roots = [find_repo_root() / "protos", *includes, Path(protoc.__file__).parent / "_proto", out]
    args = [
        "protoc",
        *(f"-I{root}" for root in roots),
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(out / f"{name}.proto"),
    ]
    if protoc.main(args) != 0:
        raise StackError(f"protoc could not compile {name}.proto (see its output above)")
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module(f"{name}_pb2"), importlib.import_module(f"{name}_pb2_grpc")
    finally:
        sys.path.remove(str(out))


def unique_suffix() -> str:
    return uuid.uuid4().hex[:12]


def docker_available() -> bool:
    """True when a Docker engine answers; the `docker` command alone proves nothing."""
    try:
        import docker  # lazy: a dependency of testcontainers

        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def _container(kind: str) -> Iterator[str]:
    """Start one testcontainer and yield its connection setting."""
    image = IMAGES[kind]
    if kind == "postgres":
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(
            image, username=PG_USER, password=PG_PASSWORD, dbname="postgres", driver=None
        ) as pg:
            yield pg.get_connection_url()
    elif kind == "kafka":
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer(image).with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    elif kind == "mongo":
        from testcontainers.community.mongodb import MongoDbContainer

        with MongoDbContainer(image) as mongo:
            yield mongo.get_connection_url()
    elif kind == "redis":
        from testcontainers.community.redis import RedisContainer

        with RedisContainer(image) as redis:
            host = redis.get_container_host_ip()
            yield f"redis://{host}:{redis.get_exposed_port(redis.port)}/0"
    else:
        raise StackError(f"no container for {kind}")


@contextlib.contextmanager
def open_backends(env: Mapping[str, str] | None = None) -> Iterator[Backends]:
    """Resolve every backend (see the module docstring); containers stop on exit.

    The local stack is left running on exit: the next session reuses it.
    """
    env = os.environ if env is None else env
    mode = env.get("MERCATO_TEST_BACKEND", "auto")
    if mode not in ("auto", "local", "testcontainers"):
        raise StackError("MERCATO_TEST_BACKEND must be auto, local or testcontainers")
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for kind, var in ENV_VARS.items():
        if env.get(var):
            values[kind] = env[var]
            sources[kind] = "env"
    missing = [kind for kind in ENV_VARS if kind not in values]
    stack: Stack | None = None
    with contextlib.ExitStack() as exits:
        use_containers = bool(missing) and mode != "local" and docker_available()
        if missing and mode == "testcontainers" and not use_containers:
            raise StackError("MERCATO_TEST_BACKEND=testcontainers but no Docker engine answers")
        if use_containers:
            for kind in missing:
                log.info("testcontainers: starting %s (%s)", kind, IMAGES[kind])
                values[kind] = exits.enter_context(_container(kind))
                sources[kind] = "testcontainers"
            if "kafka" in missing:
                _run(ensure_topics(values["kafka"], declared_topics()))
        elif missing:
            local = Stack(StackConfig.from_env(env))
            local.up([LOCAL_COMPONENT[kind] for kind in missing])
            local_values = {
                "postgres": local.postgres_dsn("postgres"),
                "kafka": local.kafka_bootstrap,
                "mongo": local.mongo_uri,
                "redis": local.redis_url,
            }
            for kind in missing:
                values[kind] = local_values[kind]
                sources[kind] = "local"
            if len(missing) == len(ENV_VARS):
                stack = local
        log.info("test backends: %s", ", ".join(f"{k}={v}" for k, v in sources.items()))
        yield Backends(
            postgres_dsn=values["postgres"],
            kafka_bootstrap=values["kafka"],
            mongo_uri=values["mongo"],
            redis_url=values["redis"],
            sources=sources,
            stack=stack,
        )


def _run(coro: Any) -> Any:
    from mercato_devstack.probes import run_sync

    return run_sync(coro)


def declared_topics() -> list[TopicSpec]:
    """The topics of deploy/helm/mercato/files/topics.yaml."""
    return load_topics(StackConfig.from_env().topics_file)


# PostgreSQL -----------------------------------------------------------------------------------


def dsn_with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@contextlib.asynccontextmanager
async def temporary_database(admin_dsn: str, prefix: str = "test") -> AsyncIterator[str]:
    """Create an empty database, yield its DSN, drop it (closing stray connections) after."""
    import asyncpg

    name = f"{prefix}_{unique_suffix()}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield dsn_with_database(admin_dsn, name)
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


# Kafka ----------------------------------------------------------------------------------------


class TopicFactory:
    """Creates topics under a prefix unique to one test, and deletes them afterwards."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.created: list[str] = []

    def name(self, base: str) -> str:
        return self.prefix + base

    async def create(
        self, base: str, *, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> str:
        """Create topic `prefix + base` (replication factor 1) and return its full name."""
        spec = TopicSpec(name=base, partitions=partitions, replicas=1, config=dict(config or {}))
        await self.create_specs([spec])
        return self.name(base)

    async def create_specs(self, specs: Sequence[TopicSpec]) -> list[str]:
        await ensure_topics(self.bootstrap, specs, prefix=self.prefix)
        names = [self.name(spec.name) for spec in specs]
        self.created.extend(name for name in names if name not in self.created)
        return names

    async def create_declared(self) -> list[str]:
        """Every topic of topics.yaml under this prefix (`t<hex>.mercato.orders.events.v1`...)."""
        return await self.create_specs(declared_topics())

    async def delete_all(self) -> None:
        if self.created:
            await delete_topics(self.bootstrap, self.created)
            self.created.clear()


@contextlib.asynccontextmanager
async def temporary_topics(bootstrap: str) -> AsyncIterator[TopicFactory]:
    factory = TopicFactory(bootstrap, f"t{unique_suffix()}.")
    try:
        yield factory
    finally:
        try:
            await factory.delete_all()
        except Exception as exc:
            log.warning("could not delete test topics %s: %s", factory.created, exc)


# MongoDB --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def temporary_mongo_database(uri: str, prefix: str = "test") -> AsyncIterator[str]:
    """Yield a fresh database name; the database is dropped afterwards."""
    from pymongo import AsyncMongoClient

    name = f"{prefix}_{unique_suffix()}"
    try:
        yield name
    finally:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=10_000
        )
        try:
            await client.drop_database(name)
        finally:
            await client.close()


# Redis ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def temporary_redis_prefix(url: str, prefix: str = "test") -> AsyncIterator[str]:
    """Yield a key prefix (`test:<hex>:`); every key under it is deleted afterwards."""
    from redis.asyncio import Redis

    key_prefix = f"{prefix}:{unique_suffix()}:"
    try:
        yield key_prefix
    finally:
        client = Redis.from_url(url)
        try:
            keys = [key async for key in client.scan_iter(match=key_prefix + "*", count=500)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


async def unsent_outbox_rows(
    fetch: Callable[[str], Awaitable[list[Any]]], seconds: float = 10.0
) -> list[Any]:
    """The outbox rows still not marked sent after waiting (at most ``seconds``) for the relay.

    The relay's update commits after the broker's acknowledgement, so a consumer can read the
    records a moment before their rows are marked: a test that checks both waits here.
    ``fetch`` runs a query on the service's database (its test fixture's ``fetch``).
    """
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        unsent = await fetch("SELECT id FROM outbox WHERE sent_at IS NULL")
        if not unsent or asyncio.get_running_loop().time() >= deadline:
            return unsent
        await asyncio.sleep(0.1)
