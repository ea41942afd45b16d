"""The transactional outbox: events written atomically with the state change, relayed to Kafka.

* :mod:`mercato_common.outbox.postgres`: an outbox table written in the caller's transaction and
  a ``FOR UPDATE SKIP LOCKED`` relay;
* :mod:`mercato_common.outbox.mongo`: events embedded in the aggregate document's own
  single-document update, and a lease-based relay.

Both relays mark an event as published only after Kafka acknowledged it: at-least-once, with
duplicates carrying the same envelope id. :class:`RelayRunner` runs a service's relays as one
lifecycle part.
"""

from mercato_common.outbox._base import (
    OutboxMessage,
    OutboxMetrics,
    OutboxRelay,
    PublishFailedError,
    event_headers,
    publish_messages,
    settle,
)
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
from mercato_common.outbox.runner import RelayRunner

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
