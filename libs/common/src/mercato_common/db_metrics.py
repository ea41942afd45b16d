"""Every store operation a service makes, counted and timed on the client side.

OpenTelemetry's ``db.client.operation.duration`` in Prometheus' spelling:
``db_client_operation_duration_seconds{db_system_name, db_operation_name}``. Its ``_count`` is the
number of round trips, which is what the bench divides by the orders placed (round trips per
order, per service and per operation); the buckets give SREs each operation's latency.

PostgreSQL: asyncpg's query logger sees every statement of every pooled connection (the
relay's, the migrations', ``BEGIN``/``COMMIT``), named by its first keyword. MongoDB: PyMongo's
command monitoring sees every command (``find``, ``findAndModify``, ``insert``, ...), through
:class:`mercato_common.mongo.MongoCommandMetrics` (kept there: PyMongo loads only where used).
"""

from __future__ import annotations

import re
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from mercato_common.metrics_set import MetricsSet

__all__ = ["DbOperationMetrics", "postgres_operation"]

# Round trips of a healthy store take from tens of microseconds to tens of milliseconds.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Statement kinds named as such; anything else is OTHER (the label set stays bounded).
_SQL_OPERATIONS = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "WITH",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "LISTEN",
        "UNLISTEN",
        "NOTIFY",
        "SET",
        "RESET",
        "SHOW",
        "CREATE",
        "ALTER",
        "DROP",
        "LOCK",
        "COPY",
        "TRUNCATE",
    }
)


_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z]+)")


def postgres_operation(query: str) -> str:
    """The statement's first keyword (``SELECT``, ``INSERT``, ...), or ``OTHER``."""
    match = _FIRST_WORD.match(query)
    word = match.group(1).upper() if match else ""
    return word if word in _SQL_OPERATIONS else "OTHER"


class DbOperationMetrics(MetricsSet):
    """The histogram, one per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "db_client_operation_duration_seconds",
            "Duration of the store operations this process made (client side), per kind.",
            ["db_system_name", "db_operation_name"],
            buckets=_BUCKETS,
            registry=registry,
        )

    def postgres_logger(self) -> Any:
        """An asyncpg query logger (``conn.add_query_logger``) that observes each statement."""
        observe = self.duration.labels

        def log_query(record: Any) -> None:
            observe("postgresql", postgres_operation(record.query)).observe(record.elapsed)

        return log_query
