"""pytest fixtures over :mod:`mercato_devstack.testing`, for any suite's conftest.py to import.

    # conftest.py
    from mercato_devstack.fixtures import *  # noqa: F403  (or import the ones you use)

Session-scoped: ``backends``, ``postgres_admin_dsn``, ``kafka_bootstrap``, ``mongo_uri``,
``redis_url``. Per test: ``postgres_dsn`` (a fresh database), ``kafka_topics`` /
``topic_prefix``, ``mongo_db_name``, ``redis_prefix``, ``stack_faults`` (fault hooks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from mercato_devstack.stack import Stack
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
    "stack_faults",
    "topic_prefix",
]


@pytest.fixture(scope="session")
def backends() -> Iterator[Backends]:
    """Every backend of the session: env vars, else testcontainers, else the local stack."""
    with open_backends() as resolved:
        yield resolved


@pytest.fixture(scope="session")
def postgres_admin_dsn(backends: Backends) -> str:
    """A role that may create databases; tests should use `postgres_dsn` instead."""
    return backends.postgres_dsn


@pytest_asyncio.fixture(loop_scope="session")
async def postgres_dsn(backends: Backends) -> AsyncIterator[str]:
    """DSN of an empty database created for this test and dropped after it."""
    async with temporary_database(backends.postgres_dsn) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def kafka_bootstrap(backends: Backends) -> str:
    return backends.kafka_bootstrap


@pytest_asyncio.fixture(loop_scope="session")
async def kafka_topics(backends: Backends) -> AsyncIterator[TopicFactory]:
    """Creates topics under a prefix of this test's own; they are deleted after it."""
    async with temporary_topics(backends.kafka_bootstrap) as factory:
        yield factory


@pytest.fixture
def topic_prefix(kafka_topics: TopicFactory) -> str:
    """This test's topic prefix, e.g. `t1a2b3c4d5e6f.` (topics: `kafka_topics.create`)."""
    return kafka_topics.prefix


@pytest.fixture(scope="session")
def mongo_uri(backends: Backends) -> str:
    return backends.mongo_uri


@pytest_asyncio.fixture(loop_scope="session")
async def mongo_db_name(backends: Backends) -> AsyncIterator[str]:
    """A database name of this test's own; the database is dropped after it."""
    async with temporary_mongo_database(backends.mongo_uri) as name:
        yield name


@pytest.fixture(scope="session")
def redis_url(backends: Backends) -> str:
    return backends.redis_url


@pytest_asyncio.fixture(loop_scope="session")
async def redis_prefix(backends: Backends) -> AsyncIterator[str]:
    """A key prefix of this test's own (`test:<hex>:`); its keys are deleted after it."""
    async with temporary_redis_prefix(backends.redis_url) as prefix:
        yield prefix


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
