"""The analytics service, declared for the kit (``mercato_common.kit``).

Its parts, in start order: MongoDB (ping, indexes), the auth channel (JWKS), the Kafka positions
and the lag gauge, the roll-up job, the progress flush, the consumer group (``consumers``
runners of ``mercato.analytics`` and the dead-letter producer), then what the kit adds to every
service (saturation metrics, the gRPC server, the health watch). The progress flush is declared
before the consumers so that it stops after them and their last progress is written. With
``consume`` off the process only serves queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Unpack

from pymongo import AsyncMongoClient

from mercato.analytics.v1 import analytics_pb2_grpc
from mercato_analytics.api import SERVICE_NAME, AnalyticsServicer
from mercato_analytics.commands import COMMANDS
from mercato_analytics.consume import CountingDeadLetterSink, EventApplier
from mercato_analytics.domain import Progress
from mercato_analytics.jobs import LagMonitor, ProgressFlush, RollupJob
from mercato_analytics.metrics import AnalyticsMetrics
from mercato_analytics.positions import KafkaPositions
from mercato_analytics.service import Queries, RollUp
from mercato_analytics.settings import AnalyticsSettings
from mercato_analytics.store import INDEXES, AnalyticsStore
from mercato_common.kafka import Backoff, ConsumerGroup, DeadLetterSink
from mercato_common.kit import App, Definition, KitOptions, Service

__all__ = ["DEFINITION", "AnalyticsApp", "build_app"]


@dataclass
class AnalyticsApp(App):
    """The declared service and the objects its commands and tests reach."""

    settings: AnalyticsSettings
    servicer: AnalyticsServicer
    store: AnalyticsStore
    positions: KafkaPositions
    lag: LagMonitor
    rollup: RollupJob
    consumers: ConsumerGroup | None
    progress: ProgressFlush | None
    metrics: AnalyticsMetrics
    mongo: AsyncMongoClient[Any]


def build_app(settings: AnalyticsSettings, **options: Unpack[KitOptions]) -> AnalyticsApp:
    """Declare every part of analytics from ``settings``; nothing connects until started."""
    kit = Service(settings, **options)
    mongo = kit.mongo(settings, indexes=INDEXES)
    store = AnalyticsStore(mongo.db)
    metrics = AnalyticsMetrics(kit.registry)
    for topic in settings.topics:  # at 0 from the start: dashboards show 0, not "no data"
        metrics.dead_letters.labels(topic)
    kit.verify_tokens_with_auth(settings.auth_target)
    positions = KafkaPositions(
        kit.kafka(settings),
        group_id=settings.consumer_group,
        topics=settings.topics,
        cache_seconds=settings.lag_cache_seconds,
    )
    lag = LagMonitor(positions, metrics, interval=settings.lag_refresh_seconds)
    kit.part(lag)
    rollup = RollupJob(
        RollUp(store, settle=settings.rollup_settle_seconds),
        store,
        interval=settings.rollup_interval_seconds,
        idle_interval=settings.rollup_idle_interval_seconds,
        lease=settings.rollup_lease_seconds,
    )
    kit.part(rollup)
    consumers: ConsumerGroup | None = None
    flush: ProgressFlush | None = None
    if settings.consume:
        progress = Progress()
        flush = ProgressFlush(progress, store, metrics, interval=settings.progress_flush_seconds)
        kit.part(flush)
        backoff = Backoff(
            initial=settings.retry_initial_seconds, maximum=settings.retry_max_seconds
        )
        applier = EventApplier(
            store, metrics=metrics, progress=progress, backoff=backoff, on_marked=rollup.wake
        )

        def counted(sink: DeadLetterSink) -> DeadLetterSink:
            return CountingDeadLetterSink(sink, metrics)

        consumers = kit.consume_events(
            settings,
            group_id=settings.consumer_group,
            topics=settings.topics,
            handler=applier,
            dead_letter_topic=settings.dead_letter_topic,
            count=settings.consumers,
            max_attempts=settings.max_attempts,
            backoff=backoff,
            wrap_dead_letters=counted,
            # A record waiting for the database is given up (uncommitted) rather than held.
            on_stop=applier.stop,
            max_poll_records=settings.max_poll_records,
            prepare_batch=applier.prepare,
            batch_linger_ms=settings.batch_linger_ms,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
        )
    servicer = AnalyticsServicer(Queries(store, positions))
    kit.serve(analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server, servicer, SERVICE_NAME)
    return AnalyticsApp(
        kit=kit,
        settings=settings,
        servicer=servicer,
        store=store,
        positions=positions,
        lag=lag,
        rollup=rollup,
        consumers=consumers,
        progress=flush,
        metrics=metrics,
        mongo=mongo.client,
    )


DEFINITION = Definition("analytics", AnalyticsSettings, build_app, COMMANDS)
