"""pytest fixtures over :mod:`mercato_devstack.testing`, for any suite's conftest.py to import.

    # conftest.py
    from mercato_devstack.fixtures import *  # noqa: F403  (or import the ones you use)

Session-scoped: ``backends``, ``postgres_admin_dsn``, ``kafka_bootstrap``, ``mongo_uri``,
``redis_url``, ``service_manifest`` (services/services.toml). Per test: ``postgres_dsn`` (a fresh
database), ``kafka_topics`` / ``topic_prefix``, ``mongo_db_name``, ``redis_prefix``,
``stack_faults`` (fault hooks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from mercato_devstack.config import StackConfig
from mercato_devstack.manifest import Manifest, load_manifest
from mercato_devstack.stack import Stack
from mercato_devstack.stripe_mock import StripeMock
from mercato_devstack.testing import (
    Backends,
    TopicFactory,
    open_backends,
    temporary_database,
    temporary_mongo_database,
    temporary_redis_prefix,
    temporary_topics,
)

__all__ = [
    "backends",
    "kafka_bootstrap",
    "kafka_topics",
    "mongo_db_name",
    "mongo_uri",
    "postgres_admin_dsn",
    "postgres_dsn",
    "redis_prefix",
    "redis_url",
    "service_manifest",
    "stack_faults",
    "stripe_mock",
    "topic_prefix",
]

_Isolated = TypeVar("_Isolated")


@pytest.fixture(scope="session")
def backends() -> Iterator[Backends]:
    """Every backend of the session: env vars, else testcontainers, else the local stack."""
    with open_backends() as resolved:
        yield resolved


@pytest.fixture(scope="session")
def stripe_mock() -> Iterator[StripeMock]:
    """stripe-mock for the session (built once with Go, on MERCATO_STRIPE_MOCK_PORT)."""
    server = StripeMock(StackConfig.from_env())
    server.prepare()
    server.stop()  # one left by an interrupted session
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def service_manifest() -> Manifest:
    """Every service of the suite (services/services.toml), in start order."""
    return load_manifest()


def _per_test(
    name: str,
    isolate: Callable[[str], AbstractAsyncContextManager[_Isolated]],
    server: Callable[[Backends], str],
    doc: str,
) -> Any:
    """A per-test fixture ``name``: ``isolate`` on the session's server, undone after the test.

    The four backends isolate a test the same way (a database, a topic prefix, a key prefix of
    its own, cleaned up after it); only the helper and the server differ.
    """

    async def fixture(backends: Backends) -> AsyncIterator[_Isolated]:
        async with isolate(server(backends)) as isolated:
            yield isolated

    fixture.__doc__ = doc
    return pytest_asyncio.fixture(fixture, loop_scope="session", name=name)


@pytest.fixture(scope="session")
def postgres_admin_dsn(backends: Backends) -> str:
    """A role that may create databases; tests should use `postgres_dsn` instead."""
    return backends.postgres_dsn


@pytest.fixture(scope="session")
def kafka_bootstrap(backends: Backends) -> str:
    return backends.kafka_bootstrap


@pytest.fixture(scope="session")
def mongo_uri(backends: Backends) -> str:
    return backends.mongo_uri


@pytest.fixture(scope="session")
def redis_url(backends: Backends) -> str:
    return backends.redis_url


postgres_dsn = _per_test(
    "postgres_dsn",
    temporary_database,
    lambda backends: backends.postgres_dsn,
    "DSN of an empty database created for this test and dropped after it.",
)
kafka_topics = _per_test(
    "kafka_topics",
    temporary_topics,
    lambda backends: backends.kafka_bootstrap,
    "Creates topics under a prefix of this test's own; they are deleted after it.",
)
mongo_db_name = _per_test(
    "mongo_db_name",
    temporary_mongo_database,
    lambda backends: backends.mongo_uri,
    "A database name of this test's own; the database is dropped after it.",
)
redis_prefix = _per_test(
    "redis_prefix",
    temporary_redis_prefix,
    lambda backends: backends.redis_url,
    "A key prefix of this test's own (`test:<hex>:`); its keys are deleted after it.",
)


@pytest.fixture
def topic_prefix(kafka_topics: TopicFactory) -> str:
    """This test's topic prefix, e.g. `t1a2b3c4d5e6f.` (topics: `kafka_topics.create`)."""
    return kafka_topics.prefix


@pytest.fixture
def stack_faults(backends: Backends) -> Iterator[Stack]:
    """The local stack, for stop/kill -9/start/restart of one component from a test.

    Skips the test unless every backend is the local stack. Whatever the test left stopped or
    killed is started again after it, so later tests find a healthy stack.
    """
    if backends.stack is None:
        external = {kind: src for kind, src in backends.sources.items() if src != "local"}
        pytest.skip(f"fault hooks need the local stack for every backend; here: {external}")
    yield backends.stack
    backends.stack.up()
