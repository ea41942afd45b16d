"""Fixtures of the integration tests: real PostgreSQL, Kafka, MongoDB-wire server and Redis.

Each backend comes from, in order: an environment variable naming an external server
(MERCATO_TEST_POSTGRES_DSN, MERCATO_TEST_KAFKA_BOOTSTRAP, MERCATO_TEST_MONGO_URI,
MERCATO_TEST_REDIS_URL); testcontainers when a Docker engine answers; otherwise the local stack
(`python -m mercato_devstack up`), started if it is not running. See docs/local-stack.md.

The fixtures live in `mercato_devstack.fixtures` so that every service's suite can import them:

- session: `backends`, `postgres_admin_dsn`, `kafka_bootstrap`, `mongo_uri`, `redis_url`
- per test: `postgres_dsn` (fresh database, dropped after), `kafka_topics` and `topic_prefix`
  (topics under a unique prefix, deleted after), `mongo_db_name` (dropped after),
  `redis_prefix` (keys deleted after), `stack_faults` (stop / kill -9 / start / restart one
  component of the local stack; skipped elsewhere).
"""

from __future__ import annotations

import pytest

from mercato_devstack.fixtures import (
    backends,
    kafka_bootstrap,
    kafka_topics,
    mongo_db_name,
    mongo_uri,
    postgres_admin_dsn,
    postgres_dsn,
    redis_prefix,
    redis_url,
    stack_faults,
    topic_prefix,
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that kill or stop components last, after every round-trip test."""
    faulty = [item for item in items if "stack_faults" in getattr(item, "fixturenames", ())]
    if faulty:
        items[:] = [item for item in items if item not in faulty] + faulty
