"""The analytics metrics (the consumer runner adds ``mercato_kafka_consumer_*``), one set per
registry; the consumers, the use cases and the jobs update them."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LATENCY_BUCKETS", "AnalyticsMetrics"]

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
)


class AnalyticsMetrics:
    """The service's own metrics (the runner adds ``mercato_kafka_consumer_*``)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.events = Counter(
            "mercato_analytics_events",
            "Events handled by the analytics consumers, by type and outcome "
            "(applied, duplicate, ignored, unknown, failed = dead-lettered).",
            ["type", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "mercato_analytics_event_apply_latency_seconds",
            "Time from an event (Envelope.time) to its effect being applied.",
            ["topic"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.dead_letters = Counter(
            "mercato_analytics_dead_letters",
            "Records parked on the dead-letter topic, by source topic.",
            ["topic"],
            registry=registry,
        )
        self.store_retries = Counter(
            "mercato_analytics_store_retries",
            "Applications retried because the database was unreachable.",
            registry=registry,
        )
        self.lag = Gauge(
            "mercato_analytics_consumer_lag",
            "Records of each partition not yet committed by the consumer group (group-wide).",
            ["topic", "partition"],
            registry=registry,
        )
        self.newest_event = Gauge(
            "mercato_analytics_newest_event_timestamp_seconds",
            "Event time of the newest event handled by this process, per topic (Unix seconds).",
            ["topic"],
            registry=registry,
        )
