"""Wiring: the one place that creates clients and connects the analytics parts.

Parts, started in this order and stopped in reverse by ``run_until_signal``:
MongoDB (ping, indexes) → auth channel (JWKS) → Kafka positions and the lag gauge →
consumers (dead-letter producer, ``consumers`` runners of group ``mercato.analytics``, progress
flusher) → gRPC server. With ``consume`` off the process only serves queries.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry
from pymongo import AsyncMongoClient

from mercato.analytics.v1 import analytics_pb2_grpc
from mercato_analytics.api import SERVICE_NAME, AnalyticsServicer
from mercato_analytics.domain import AnalyticsError
from mercato_analytics.events import (
    AnalyticsMetrics,
    CountingDeadLetterSink,
    EventApplier,
    Progress,
)
from mercato_analytics.lag import KafkaPositions
from mercato_analytics.settings import AnalyticsSettings
from mercato_analytics.store import INDEXES, AnalyticsStore
from mercato_common.identity import TokenVerifier, verifier_from_auth
from mercato_common.kafka import Backoff, ConsumerRunner, EventProducer, KafkaConnection
from mercato_common.mongo import ensure_indexes
from mercato_common.runtime import CloseOnStop, Lifecycle, Periodic
from mercato_common.saturation import MongoPoolMonitor, SaturationMetrics
from mercato_common.server import GrpcServer

__all__ = ["AnalyticsApp", "ConsumerPart", "build_app", "mongo_client"]

log = logging.getLogger("mercato_analytics.app")


def mongo_client(
    settings: AnalyticsSettings, pool_monitor: MongoPoolMonitor | None = None
) -> AsyncMongoClient[Any]:
    return AsyncMongoClient(
        settings.mongo_uri,
        event_listeners=[pool_monitor] if pool_monitor is not None else [],
        tz_aware=True,
        serverSelectionTimeoutMS=settings.mongo_timeout_ms,
        connectTimeoutMS=settings.mongo_timeout_ms,
        socketTimeoutMS=settings.mongo_operation_timeout_ms,
        appname="mercato-analytics",
    )


class MongoPart:
    """Checks the connection and creates the indexes; closes the client last."""

    def __init__(self, client: AsyncMongoClient[Any], store: AnalyticsStore) -> None:
        self._client = client
        self._store = store

    async def start(self) -> None:
        await self._client.admin.command("ping")
        created = await ensure_indexes(self._store.db, INDEXES)
        log.info("mongodb ready", extra={"indexes_created": created})

    async def stop(self) -> None:
        await self._client.close()


class LagMonitor:
    """Keeps ``mercato_analytics_consumer_lag`` current (group-wide) every ``interval`` s."""

    def __init__(
        self, positions: KafkaPositions, metrics: AnalyticsMetrics, *, interval: float
    ) -> None:
        self.positions = positions
        self._metrics = metrics
        # An interval of 0 turns the gauge off; a refresh in progress is cancelled at stop.
        self._periodic = (
            Periodic("analytics-lag", self._tick, interval=interval, logger=log)
            if interval > 0
            else None
        )

    async def start(self) -> None:
        if self._periodic is not None:
            await self._periodic.start()

    async def refresh(self) -> None:
        for topic, partition, committed, end in await self.positions.read():
            self._metrics.lag.labels(topic, str(partition)).set(max(end - committed, 0))

    async def _tick(self) -> None:
        try:
            await self.refresh()
        except AnalyticsError as exc:  # Kafka unreachable: expected, and GetFreshness says so
            log.debug("lag refresh failed: %s", exc)

    async def stop(self) -> None:
        if self._periodic is not None:
            await self._periodic.stop()
        await self.positions.stop()


class ConsumerPart:
    """Runs ``count`` consumer runners of the group, restarting one that fails, and flushes
    the consumers' progress every ``flush_interval`` seconds."""

    def __init__(
        self,
        settings: AnalyticsSettings,
        *,
        connection: KafkaConnection,
        store: AnalyticsStore,
        metrics: AnalyticsMetrics,
        registry: CollectorRegistry,
    ) -> None:
        self._settings = settings
        self._connection = connection
        self._store = store
        self._metrics = metrics
        self._registry = registry
        self.progress = Progress()
        self.producer = EventProducer(connection)
        self._sink = CountingDeadLetterSink(self.producer, metrics)
        self._backoff = Backoff(
            initial=settings.retry_initial_seconds, maximum=settings.retry_max_seconds
        )
        self.applier = EventApplier(
            store, metrics=metrics, progress=self.progress, backoff=self._backoff
        )
        self.runners: list[ConsumerRunner | None] = [None] * settings.consumers
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def _new_runner(self) -> ConsumerRunner:
        s = self._settings
        return ConsumerRunner(
            self._connection,
            group_id=s.consumer_group,
            topics=s.topics,
            handler=self.applier,
            dead_letter_topic=s.dead_letter_topic,
            dead_letter_producer=self._sink,
            max_attempts=s.max_attempts,
            backoff=self._backoff,
            max_poll_records=s.max_poll_records,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            registry=self._registry,
        )

    async def start(self) -> None:
        self._stopping.clear()
        self._tasks = [
            asyncio.create_task(self._supervise(index), name=f"analytics-consumer-{index}")
            for index in range(len(self.runners))
        ]
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="analytics-progress"))

    async def _supervise(self, index: int) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                # The producer is shared; start() is a no-op once it is connected.
                await self.producer.start()
                if self._stopping.is_set():
                    return
                runner = self._new_runner()
                self.runners[index] = runner
                await runner.run()
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("consumer %d failed (%d in a row): %r", index, failures, exc)
            if self._stopping.is_set():
                return
            try:
                await asyncio.wait_for(self._stopping.wait(), self._backoff.delay(max(failures, 1)))
            except TimeoutError:
                continue

    async def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self._settings.progress_flush_seconds)
            except TimeoutError:
                await self.flush()

    async def flush(self) -> None:
        marks = self.progress.take()
        if not marks:
            return
        try:
            await self._store.record_progress(marks)
        except Exception as exc:
            self.progress.restore(marks)
            log.warning("progress flush failed: %r", exc)
            return
        newest: dict[str, datetime] = {}
        for (topic, _), (event_time, _) in marks.items():
            newest[topic] = max(newest.get(topic, event_time), event_time)
        for topic, event_time in newest.items():
            self._metrics.newest_event.labels(topic).set(event_time.timestamp())

    async def stop(self) -> None:
        self._stopping.set()
        self.applier.stop()
        runners = [runner for runner in self.runners if runner is not None]
        await asyncio.gather(*(runner.stop(grace=10.0) for runner in runners))
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=10.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        self._tasks = []
        await self.flush()
        await self.producer.stop()


@dataclass
class AnalyticsApp:
    settings: AnalyticsSettings
    server: GrpcServer
    servicer: AnalyticsServicer
    store: AnalyticsStore
    positions: KafkaPositions
    lag: LagMonitor
    consumers: ConsumerPart | None
    metrics: AnalyticsMetrics
    mongo: AsyncMongoClient[Any]
    parts: list[Lifecycle] = field(default_factory=list)


def build_app(
    settings: AnalyticsSettings,
    *,
    token_verifier: TokenVerifier | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> AnalyticsApp:
    """Build every part of analytics from ``settings``; nothing connects until started."""
    saturation = SaturationMetrics(registry)
    pool_monitor = MongoPoolMonitor()
    mongo = mongo_client(settings, pool_monitor)
    saturation.watch_mongo("mongodb", pool_monitor, mongo.options.pool_options.max_pool_size)
    store = AnalyticsStore(mongo[settings.mongo_database])
    metrics = AnalyticsMetrics(registry)
    connection = KafkaConnection(
        bootstrap_servers=settings.kafka_bootstrap_servers, client_id="analytics"
    )
    positions = KafkaPositions(
        connection,
        group_id=settings.consumer_group,
        topics=settings.topics,
        cache_seconds=settings.lag_cache_seconds,
    )
    lag = LagMonitor(positions, metrics, interval=settings.lag_refresh_seconds)
    consumers = (
        ConsumerPart(
            settings, connection=connection, store=store, metrics=metrics, registry=registry
        )
        if settings.consume
        else None
    )
    channel: grpc.aio.Channel | None = None
    if token_verifier is None:
        token_verifier, channel = verifier_from_auth(
            settings, auth_target=settings.auth_target, tls=settings.client_tls
        )
    server = GrpcServer(
        settings,
        error_domain="analytics.mercato",
        token_verifier=token_verifier,
        registry=registry,
    )
    servicer = AnalyticsServicer(store, positions)
    server.add_service(
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server, servicer, SERVICE_NAME
    )
    parts: list[Lifecycle] = [
        MongoPart(mongo, store),
        CloseOnStop(channel.close if channel is not None else None),
        lag,
    ]
    if consumers is not None:
        saturation.watch_producer(consumers.producer)
        parts.append(consumers)
    parts.append(saturation)
    parts.append(server)
    return AnalyticsApp(
        settings=settings,
        server=server,
        servicer=servicer,
        store=store,
        positions=positions,
        lag=lag,
        consumers=consumers,
        metrics=metrics,
        mongo=mongo,
        parts=parts,
    )
