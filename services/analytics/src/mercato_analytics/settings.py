"""Typed settings of analytics, from ``MERCATO_ANALYTICS_*`` environment variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from mercato_common.settings import BaseServiceSettings, KafkaSettings, MongoSettings

__all__ = ["AnalyticsSettings"]


class AnalyticsSettings(BaseServiceSettings, MongoSettings, KafkaSettings):
    env_prefix: ClassVar[str] = "MERCATO_ANALYTICS_"

    service_name: str = Field(default="analytics", min_length=1)
    grpc_port: int = Field(default=50064, ge=0, le=65535)
    metrics_port: int = Field(default=9464, ge=0, le=65535)

    mongo_database: str = Field(default="analytics", min_length=1)

    # Kafka.
    consumer_group: str = Field(default="mercato.analytics", min_length=1)
    auth_events_topic: str = Field(default="mercato.auth.events.v1", min_length=1)
    catalog_events_topic: str = Field(default="mercato.catalog.events.v1", min_length=1)
    orders_events_topic: str = Field(default="mercato.orders.events.v1", min_length=1)
    dead_letter_topic: str = Field(default="mercato.analytics.dlq.v1", min_length=1)
    # False: this process only serves queries (no consumers, no dead-letter producer).
    consume: bool = True
    # Consumers of the group run by this process (partitions are spread over them); more than
    # one overlaps the database round trips of different partitions.
    consumers: int = Field(default=2, ge=1, le=18)
    # Attempts per record before it is dead-lettered (database outages do not count: they are
    # waited out), and the backoff between them.
    max_attempts: int = Field(default=5, ge=1, le=100)
    retry_initial_seconds: float = Field(default=0.2, ge=0)
    retry_max_seconds: float = Field(default=10.0, ge=0)
    max_poll_records: int = Field(default=200, ge=1)
    # A poll that returned fewer than max_poll_records waits this long once for more, so that
    # one bulk insert carries more events' facts (an idle consumer never waits: its poll
    # returned nothing). Off by default: at 28 orders/s, 20 ms cut the inserts per order from
    # 0.74 to 0.55 but added 33 ms to the median apply latency (docs/analytics.md).
    batch_linger_ms: int = Field(default=0, ge=0, le=1_000)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    # How often the consumers' progress (freshness) is written, and the group lag is read for
    # the metrics (0: only when GetFreshness asks).
    progress_flush_seconds: float = Field(default=1.0, gt=0)
    lag_refresh_seconds: float = Field(default=15.0, ge=0)
    # GetFreshness reuses Kafka positions read less than this long ago.
    lag_cache_seconds: float = Field(default=1.0, ge=0)

    # Roll-ups: how often the job looks for settled dirty minutes, how long a minute's mark must
    # be untouched before it is rolled up (more than the consumers' mark refresh of 1 s, plus
    # the clock skew between replicas), and how long the job's lease lasts without renewal.
    rollup_interval_seconds: float = Field(default=1.0, gt=0)
    rollup_idle_interval_seconds: float = Field(default=10.0, gt=0)
    rollup_settle_seconds: float = Field(default=3.0, gt=1.0)
    rollup_lease_seconds: float = Field(default=30.0, gt=0)

    # Access tokens: verified here against auth's JWKS.
    auth_target: str = "127.0.0.1:50061"

    @property
    def topics(self) -> tuple[str, str, str]:
        """The event topics consumed, auth, catalog, orders."""
        return (self.auth_events_topic, self.catalog_events_topic, self.orders_events_topic)
