"""The analytics database (MongoDB; FerretDB locally): exactly-once facts, their roll-ups and
the reads of the queries. Persistence only: the use cases decide what to apply and when.

Collections
-----------
``facts`` (``facts``)
    One document per applied event: ``_id`` = the envelope id, the fields of
    :func:`mercato_analytics.domain.fact_document` (kind, own time, placement time, currency,
    amount, units, lines), their minute and hour keys and where it was read from (topic,
    partition, offset, event time, applied time).
``partitions`` (``facts``)
    Per topic-partition progress for GetFreshness (newest event time, last applied time), merged
    with ``$max`` by the consumers' periodic flush. Observability only.
``rollups``, ``dirty_minutes``, ``leases`` (``rollups``)
    The figures per minute, hour and day, the minutes changed since, and the roll-up job's lease.

Exactly once without multi-document transactions
------------------------------------------------
An event's whole effect is one document whose ``_id`` is the event id, written by a single
insert. The unique ``_id`` makes that insert the idempotency check and the effect at once,
atomically, on MongoDB and on FerretDB alike: a redelivered record, or the same event published
twice at another offset or partition, fails with a duplicate-key error and changes nothing. The
consumer path never *updates* a figure, so FerretDB's non-atomic concurrent updates cannot lose
anything, and no ordering between events matters. Every aggregate is a count or sum over facts;
the roll-ups are those sums recomputed from the facts (see ``mercato_analytics.service.rollup``).
"""

from mercato_analytics.domain import StoreUnavailable
from mercato_analytics.store.facts import (
    COLLECTIONS,
    FACTS,
    INDEXES,
    PARTITIONS,
    AnalyticsStore,
    ApplyOutcome,
)

__all__ = [
    "COLLECTIONS",
    "FACTS",
    "INDEXES",
    "PARTITIONS",
    "AnalyticsStore",
    "ApplyOutcome",
    "StoreUnavailable",
]
