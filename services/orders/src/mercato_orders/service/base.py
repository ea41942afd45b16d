"""What the orders use cases share: their dependencies, settings values and metrics."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from mercato_common.clock import utcnow
from mercato_orders.clients import CatalogClient
from mercato_orders.domain.payments import PaymentProvider
from mercato_orders.domain.rules import UserLimits
from mercato_orders.store import OrdersStore

__all__ = ["OrdersConfig", "OrdersMetrics", "ServiceBase"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class OrdersConfig:
    key_ttl: timedelta = timedelta(days=1)
    lease: timedelta = timedelta(seconds=30)
    wait_seconds: float = 10.0
    compensation_timeout: float = 5.0
    limits: UserLimits = field(default_factory=UserLimits)


PAYMENT_EVENT_OUTCOMES = ("paid", "repeated", "refunded", "ignored", "invalid")


class OrdersMetrics:
    """Business counters of the orders service (Prometheus)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        counter = partial(Counter, registry=registry)
        self.placed = counter(
            "mercato_orders_placed_total",
            "Orders placed (committed CONFIRMED with their stock reserved).",
            ["currency"],
        )
        self.revenue = counter(
            "mercato_orders_revenue_minor_total",
            "Amounts paid, in minor units of the currency.",
            ["currency"],
        )
        self.transitions = counter(
            "mercato_orders_transitions_total",
            "Order state transitions committed, by target state.",
            ["to_state"],
        )
        self.replays = counter(
            "mercato_orders_idempotent_replays_total",
            "CreateOrder requests answered with the order an earlier request of the key placed.",
        )
        self.compensations = counter(
            "mercato_orders_saga_compensations_total",
            "Reservations given back after a failed create: released now, or deferred to "
            "reconciliation.",
            ["outcome"],
        )
        for outcome in ("released", "deferred", "skipped"):  # at 0 from the start
            self.compensations.labels(outcome)
        self.reconciled = counter(
            "mercato_orders_reconciled_total",
            "Repairs made by the reconciler, by action.",
            ["action"],
        )
        self.payment_events = counter(
            "mercato_orders_payment_events_total",
            "Events of the payment provider (its webhook), by outcome: paid (the order), "
            "repeated (already paid by it), refunded (it could not pay its order), ignored "
            "(another type, or no order of this deployment), invalid (refused: signature or body).",
            ["outcome"],
        )
        for outcome in PAYMENT_EVENT_OUTCOMES:  # at 0 from the start
            self.payment_events.labels(outcome)


class ServiceBase:
    """The dependencies of every use case; a lifecycle part that drains detached work on stop."""

    def __init__(
        self,
        store: OrdersStore,
        catalog: CatalogClient,
        payments: PaymentProvider,
        *,
        config: OrdersConfig | None = None,
        metrics: OrdersMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.payments = payments
        self.config = config or OrdersConfig()
        self.metrics = metrics or OrdersMetrics(CollectorRegistry())
        self._now = clock
        self._background: set[asyncio.Task[Any]] = set()

    def now(self) -> datetime:
        return self._now()

    async def start(self) -> None:
        return None

    async def stop(self, grace: float = 10.0) -> None:
        """Let detached compensations finish (bounded); what is left, reconciliation does."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=grace)

    def _detached(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Run ``coro`` outside the caller's context: no deadline, not cancelled with the call.

        The trace context is carried over so the compensation shows in the request's trace.
        """
        trace_context = otel_context.get_current()

        async def run() -> _T:
            token = otel_context.attach(trace_context)
            try:
                return await coro
            finally:
                otel_context.detach(token)

        task = asyncio.get_running_loop().create_task(run(), context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def release_stock(self, order_id: str, reason: str) -> None:
        """Give back what the catalog holds for the order, outside any caller's deadline."""
        await self.catalog.release(order_id, reason, within=self.config.compensation_timeout)
