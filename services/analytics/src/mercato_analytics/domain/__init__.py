"""Analytics rules and types: pure, no I/O, no gRPC, no contracts, no driver.

``errors`` (root :class:`AnalyticsError`, domain ``analytics.mercato``), ``buckets`` (time
buckets and requested ranges), ``events`` (the consumed events, their contract checks and their
effect: one fact document), ``aggregates`` (the folds of facts into a sales summary, a funnel and
a product ranking), ``rollups`` (those folds kept per minute, hour and day, and how a range is
read from them) and ``freshness`` (consumer progress and lag). The names used across the
service are re-exported here.
"""

from mercato_analytics.domain.aggregates import (
    DEFAULT_TOP_LIMIT,
    CurrencySales,
    Funnel,
    ProductRow,
    RankBy,
    SalesBucket,
    SalesSummary,
    TopProduct,
    fold_funnel,
    fold_sales,
    product_rows,
    rank_products,
    summarize,
)
from mercato_analytics.domain.buckets import (
    MAX_TIME,
    MIN_TIME,
    BucketSize,
    bucket_starts,
    ceil_time,
    check_range,
    floor_time,
)
from mercato_analytics.domain.errors import (
    AnalyticsError,
    CurrencyRequired,
    InvalidEvent,
    InvalidRange,
    KafkaUnavailable,
    StoreUnavailable,
)
from mercato_analytics.domain.events import (
    IGNORED,
    DomainEvent,
    EventOrigin,
    Ignored,
    OrderEvent,
    OrderEventKind,
    SaleLine,
    UserRegistered,
    fact_document,
    type_label,
)
from mercato_analytics.domain.freshness import (
    Freshness,
    PartitionLag,
    PartitionProgress,
    Position,
    Progress,
    ProgressMarks,
    freshness,
)
from mercato_analytics.domain.rollups import (
    Figures,
    ReadPlan,
    Span,
    dirty_minutes_of,
    fold_facts,
    fold_per_minute,
    merge_all,
    plan_reads,
    rollup_id,
)

__all__ = [
    "DEFAULT_TOP_LIMIT",
    "IGNORED",
    "MAX_TIME",
    "MIN_TIME",
    "AnalyticsError",
    "BucketSize",
    "CurrencyRequired",
    "CurrencySales",
    "DomainEvent",
    "EventOrigin",
    "Figures",
    "Freshness",
    "Funnel",
    "Ignored",
    "InvalidEvent",
    "InvalidRange",
    "KafkaUnavailable",
    "OrderEvent",
    "OrderEventKind",
    "PartitionLag",
    "PartitionProgress",
    "Position",
    "ProductRow",
    "Progress",
    "ProgressMarks",
    "RankBy",
    "ReadPlan",
    "SaleLine",
    "SalesBucket",
    "SalesSummary",
    "Span",
    "StoreUnavailable",
    "TopProduct",
    "UserRegistered",
    "bucket_starts",
    "ceil_time",
    "check_range",
    "dirty_minutes_of",
    "fact_document",
    "floor_time",
    "fold_facts",
    "fold_funnel",
    "fold_per_minute",
    "fold_sales",
    "freshness",
    "merge_all",
    "plan_reads",
    "product_rows",
    "rank_products",
    "rollup_id",
    "summarize",
    "type_label",
]
