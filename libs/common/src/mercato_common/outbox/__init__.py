"""The transactional outbox: events written atomically with the state change, relayed to Kafka.

* :mod:`mercato_common.outbox.postgres`: an outbox table written in the caller's transaction and
  a ``FOR UPDATE SKIP LOCKED`` relay;
* :mod:`mercato_common.outbox.mongo`: events embedded in the aggregate document's own
  single-document update, and a lease-based relay.

Both relays mark an event as published only after Kafka acknowledged it: at-least-once, with
duplicates carrying the same envelope id. :class:`RelayRunner` runs a service's relays as one
lifecycle part.
"""

from typing import TYPE_CHECKING, Any

from mercato_common.outbox._base import (
    OutboxMessage,
    OutboxMetrics,
    OutboxRelay,
    PublishFailedError,
    event_headers,
    publish_messages,
    settle,
)
from mercato_common.outbox.runner import RelayRunner

if TYPE_CHECKING:
    from mercato_common.outbox.mongo import (
        MongoOutboxRelay,
        outbox_event,
        outbox_fields,
        outbox_index_specs,
        with_outbox,
    )
    from mercato_common.outbox.postgres import (
        Outbox,
        PostgresOutboxRelay,
        enqueue,
        enqueue_many,
        outbox_ddl,
    )

#: Names served from the store-specific modules, imported on first use: a PostgreSQL service
#: never loads the MongoDB driver, nor a MongoDB service asyncpg.
_LAZY = {
    **dict.fromkeys(
        ("MongoOutboxRelay", "outbox_event", "outbox_fields", "outbox_index_specs", "with_outbox"),
        "mercato_common.outbox.mongo",
    ),
    **dict.fromkeys(
        ("Outbox", "PostgresOutboxRelay", "enqueue", "enqueue_many", "outbox_ddl"),
        "mercato_common.outbox.postgres",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "MongoOutboxRelay",
    "Outbox",
    "OutboxMessage",
    "OutboxMetrics",
    "OutboxRelay",
    "PostgresOutboxRelay",
    "PublishFailedError",
    "RelayRunner",
    "enqueue",
    "enqueue_many",
    "event_headers",
    "outbox_ddl",
    "outbox_event",
    "outbox_fields",
    "outbox_index_specs",
    "publish_messages",
    "settle",
    "with_outbox",
]
