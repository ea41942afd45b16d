"""The orders use cases: the placement saga, payment, cancellation, fulfilment and reads.

Placement (``create``), step by step:

1. **Claim the idempotency key** (``INSERT ... ON CONFLICT DO NOTHING``) with a fresh order id
   and an owner token, before anything is reserved. Of many concurrent requests with one key,
   exactly one inserts; the others see its row: another body → ``IDEMPOTENCY_KEY_REUSED``;
   DONE → the same order; PENDING → wait for it (then the same order), ``IDEMPOTENCY_KEY_IN_USE``
   after ``idempotency_wait_seconds``; PENDING with an expired lease (its create died) → take it
   over and continue under the same order id (the catalog's reservation, if any, is reused).
2. **Price** the lines from the catalog (``BatchGetProducts``), never from the client.
3. **Reserve** the stock under the order id (``ReserveStock``, all lines or none).
4. **Commit** the key (DONE, guarded by the owner token), the order (CONFIRMED, with its history)
   and ``OrderPlaced`` in one PostgreSQL transaction.

On a refusal (step 2-3) nothing is held: the key is forgotten and the caller gets
FAILED_PRECONDITION. When the outcome of step 3 or 4 is unknown (catalog unreachable, deadline,
database down, the caller cancelled), the reservation is released by a compensation that runs
outside the caller's deadline; if that fails too, the key is left to the reconciler
(:mod:`mercato_orders.reconciler`), which releases it later. Either way no order is left without
its event and no stock stays reserved without an order.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from mercato_common.kafka import Envelope
from mercato_orders import events
from mercato_orders.clients import CatalogClient, ReservationClosedError
from mercato_orders.domain.errors import (
    CatalogUnavailable,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidStateTransition,
    MixedCurrencies,
    OrderNotFound,
    OrdersUnavailable,
    ReservationExpired,
    StockUnavailable,
    TotalTooLarge,
)
from mercato_orders.domain.model import Money, Order, OrderState, RequestedLine
from mercato_orders.domain.payments import Charge, PaymentProvider
from mercato_orders.domain.rules import (
    OrderFilter,
    Viewer,
    cancel,
    check_amount,
    check_idempotency_key,
    check_lines,
    check_payable,
    decode_page_token,
    encode_page_token,
    fail,
    fulfil,
    new_order,
    pay,
    price_lines,
    request_fingerprint,
    visible,
)
from mercato_orders.domain.rules import PageToken as Position
from mercato_orders.store import KeyState, OrdersStore, new_token

__all__ = ["OrdersConfig", "OrdersMetrics", "OrdersService", "utcnow"]

log = logging.getLogger("mercato_orders.service")

_T = TypeVar("_T")

# Refusals after which nothing is held in the catalog (it reserves all lines or none).
_REFUSALS = (StockUnavailable, MixedCurrencies, TotalTooLarge)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class OrdersConfig:
    key_ttl: timedelta = timedelta(days=1)
    lease: timedelta = timedelta(seconds=30)
    wait_seconds: float = 10.0
    compensation_timeout: float = 5.0


class OrdersMetrics:
    """Business counters of the orders service (Prometheus)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.placed = Counter(
            "mercato_orders_placed_total",
            "Orders placed (committed CONFIRMED with their stock reserved).",
            ["currency"],
            registry=registry,
        )
        self.revenue = Counter(
            "mercato_orders_revenue_minor_total",
            "Amounts paid, in minor units of the currency.",
            ["currency"],
            registry=registry,
        )
        self.transitions = Counter(
            "mercato_orders_transitions_total",
            "Order state transitions committed, by target state.",
            ["to_state"],
            registry=registry,
        )
        self.replays = Counter(
            "mercato_orders_idempotent_replays_total",
            "CreateOrder requests answered with the order an earlier request of the key placed.",
            registry=registry,
        )
        self.compensations = Counter(
            "mercato_orders_saga_compensations_total",
            "Reservations given back after a failed create: released now, or deferred to "
            "reconciliation.",
            ["outcome"],
            registry=registry,
        )
        self.reconciled = Counter(
            "mercato_orders_reconciled_total",
            "Repairs made by the reconciler, by action.",
            ["action"],
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class _OwnedKey:
    user_id: str
    key: str
    fingerprint: str
    order_id: str
    owner: str
    # False when taken over from a create that died: its reservation may exist already.
    fresh: bool


class _KeyLostError(Exception):
    """Another create (or the reconciler) took the key over: it owns the order id now."""


class OrdersService:
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

    # --- lifecycle ------------------------------------------------------------------------------

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

    # --- reads ----------------------------------------------------------------------------------

    async def get(self, viewer: Viewer, order_id: str) -> Order:
        async with self.store.read() as tx:
            order = await tx.orders.get(order_id)
        if order is None or not visible(order, viewer):
            raise OrderNotFound(order_id)
        return order

    async def list_orders(
        self, viewer: Viewer, flt: OrderFilter, page_token: str, page_size: int
    ) -> tuple[list[Order], str]:
        position = decode_page_token(page_token, flt)
        async with self.store.read() as tx:
            orders = await tx.orders.list_orders(flt, position, page_size + 1)
        next_token = ""
        if len(orders) > page_size:
            orders = orders[:page_size]
            last = orders[-1]
            next_token = encode_page_token(Position(last.create_time, last.id), flt)
        return orders, next_token

    # --- placement ------------------------------------------------------------------------------

    async def create(
        self, viewer: Viewer, lines: Sequence[RequestedLine], idempotency_key: str
    ) -> Order:
        """Place an order (see the module docstring); the same order for a repeated key."""
        requested = check_lines(lines)
        key = check_idempotency_key(idempotency_key)
        fingerprint = request_fingerprint(requested)
        accepted_at = self._now()
        claim = await self._claim(viewer.subject, key, fingerprint)
        if isinstance(claim, Order):
            self.metrics.replays.inc()
            return claim
        try:
            return await self._place(claim, requested, accepted_at)
        except _KeyLostError:
            # The key changed hands (our lease ran out): its new owner answers for it.
            result = await self._claim(viewer.subject, key, fingerprint)
            if isinstance(result, Order):
                return result
            raise IdempotencyKeyInUse() from None

    async def _claim(self, user_id: str, key: str, fingerprint: str) -> Order | _OwnedKey:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.config.wait_seconds
        delay = 0.01
        while True:
            owner = new_token()
            async with self.store.read() as tx:
                row = await tx.keys.claim(
                    user_id=user_id,
                    key=key,
                    fingerprint=fingerprint,
                    order_id=str(uuid.uuid4()),
                    owner=owner,
                    lease=self.config.lease,
                )
                if row is not None and row.fingerprint != fingerprint:
                    raise IdempotencyKeyReused()
                if row is not None and row.inserted:
                    return _OwnedKey(user_id, key, fingerprint, row.order_id, owner, fresh=True)
                if row is not None and row.state is KeyState.DONE:
                    order = await tx.orders.get(row.order_id)
                    if order is not None:
                        return order
                if row is not None and row.state is KeyState.PENDING and row.lease_expired:
                    taken = await tx.keys.take_over(
                        user_id=user_id,
                        key=key,
                        old_owner=row.owner,
                        new_owner=owner,
                        lease=self.config.lease,
                    )
                    if taken is not None:
                        log.info(
                            "took over an abandoned create", extra={"order_id": taken.order_id}
                        )
                        return _OwnedKey(
                            user_id, key, fingerprint, taken.order_id, owner, fresh=False
                        )
            if row is None:
                await asyncio.sleep(0)
                continue  # the winner's row was not visible to this statement yet
            if loop.time() >= give_up_at:
                raise IdempotencyKeyInUse()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _place(
        self, owned: _OwnedKey, lines: Sequence[RequestedLine], accepted_at: datetime
    ) -> Order:
        order_id = owned.order_id
        # Whether the catalog may hold stock under the order id: a key taken over from a create
        # that died may come with its reservation.
        may_hold = not owned.fresh
        try:
            products = await self.catalog.products([line.sku for line in lines])
            priced, total = price_lines(lines, products, check_availability=owned.fresh)
            may_hold = True
            try:
                await self.catalog.reserve(order_id, lines)
            except StockUnavailable:
                may_hold = False  # a refused attempt holds nothing
                raise
            except ReservationClosedError:
                if owned.fresh:
                    raise CatalogUnavailable() from None
                # A taken-over key whose reservation was released meanwhile: new order id.
                order_id = str(uuid.uuid4())
                async with self.store.read() as tx:
                    if not await tx.keys.rekey(
                        user_id=owned.user_id, key=owned.key, owner=owned.owner, order_id=order_id
                    ):
                        raise _KeyLostError() from None
                await self.catalog.reserve(order_id, lines)
            order = new_order(
                order_id=order_id,
                user_id=owned.user_id,
                idempotency_key=owned.key,
                lines=priced,
                total=total,
                accepted_at=accepted_at,
                confirmed_at=self._now(),
            )
            async with self.store.write() as tx:
                if not await tx.keys.complete(
                    user_id=owned.user_id,
                    key=owned.key,
                    owner=owned.owner,
                    order_id=order_id,
                    ttl=self.config.key_ttl,
                ):
                    raise _KeyLostError()
                await tx.orders.insert(order)
                await tx.outbox.add(events.order_placed(order))
        except _KeyLostError:
            raise
        except _REFUSALS:
            # Nothing is held (the catalog reserves all lines or none): forget the key, so that
            # the same request may be tried again once the stock is there.
            await self._detached(self._undo(owned, order_id, may_hold, "order refused"))
            raise
        except asyncio.CancelledError:
            # The caller went away (cancelled, deadline): undo in the background.
            self._detached(self._undo(owned, order_id, may_hold, "order placement cancelled"))
            raise
        except BaseException as error:
            released = await asyncio.shield(
                self._detached(self._undo(owned, order_id, may_hold, "order placement failed"))
            )
            if not isinstance(error, CatalogUnavailable | OrdersUnavailable):
                raise
            log.warning(
                "order placement failed; reservation %s",
                "released" if released else "left to reconciliation",
                extra={"order_id": order_id, "error": repr(error)},
            )
            raise
        self.metrics.placed.labels(order.total.currency_code).inc()
        self.metrics.transitions.labels(OrderState.CONFIRMED.value).inc()
        return order

    async def _forget(self, owned: _OwnedKey) -> None:
        try:
            async with self.store.read() as tx:
                await tx.keys.forget(user_id=owned.user_id, key=owned.key, owner=owned.owner)
        except Exception as exc:  # its lease expires; reconciliation releases (nothing) and forgets
            log.warning("could not forget idempotency key: %r", exc)

    async def _undo(self, owned: _OwnedKey, order_id: str, reserved: bool, reason: str) -> bool:
        """Release what the create may have reserved and forget its key; True if done now.

        The key is fenced first (lease extended while still ours): a create that lost its key
        must not release stock the new owner may be using under the same order id.
        """
        if not reserved:
            await self._forget(owned)
            return True
        try:
            async with self.store.read() as tx:
                if not await tx.keys.fence(
                    user_id=owned.user_id, key=owned.key, owner=owned.owner, lease=self.config.lease
                ):
                    self.metrics.compensations.labels("skipped").inc()
                    return False  # committed after all, or taken over: not ours to undo
            await self.catalog.release(order_id, reason, within=self.config.compensation_timeout)
        except Exception as exc:
            log.warning(
                "could not release the reservation of a failed create; reconciliation will",
                extra={"order_id": order_id, "error": repr(exc)},
            )
            self.metrics.compensations.labels("deferred").inc()
            try:
                async with self.store.read() as tx:
                    await tx.keys.abandon(
                        user_id=owned.user_id,
                        key=owned.key,
                        owner=owned.owner,
                        retry_after=timedelta(0),
                    )
            except Exception as abandon_error:  # the lease then simply runs out
                log.warning("could not hand the key to reconciliation: %r", abandon_error)
            return False
        await self._forget(owned)
        self.metrics.compensations.labels("released").inc()
        return True

    # --- changes --------------------------------------------------------------------------------

    async def _change(
        self,
        order_id: str,
        viewer: Viewer | None,
        decide: Callable[[Order], Order | None],
        event: Callable[[Order, Order], Envelope],
    ) -> tuple[Order, bool]:
        """Apply ``decide`` to the locked order and write its event; (order, whether changed)."""
        async with self.store.write() as tx:
            before = await tx.orders.get(order_id, lock=True)
            if before is None or (viewer is not None and not visible(before, viewer)):
                raise OrderNotFound(order_id)
            after = decide(before)
            if after is None:
                return before, False
            await tx.orders.save(before, after)
            await tx.outbox.add(event(before, after))
        self.metrics.transitions.labels(after.state.value).inc()
        return after, True

    async def pay(self, viewer: Viewer, order_id: str, token: str, amount: Money) -> Order:
        """Charge the order's total, commit its reservation, then CONFIRMED → PAID."""
        order = await self.get(viewer, order_id)
        check_payable(order)
        check_amount(order, amount)
        # Keyed by the order: a retried or concurrent payment returns the same charge.
        charge = await self.payments.charge(
            idempotency_key=f"order:{order.id}", amount=order.total, token=token
        )
        try:
            await self.catalog.commit(order.id)
        except ReservationClosedError:
            await self._refund(charge, "stock reservation expired")
            now = self._now()
            failed, _ = await self._change(
                order.id,
                None,
                lambda o: fail(o, reason="stock reservation expired", now=now),
                lambda before, after: events.order_failed(after, before.state),
            )
            raise ReservationExpired(failed.state) from None
        except Exception:
            # Not paid: give the money back. (If the commit did reach the catalog, paying again
            # commits nothing more and cancelling returns the units.)
            await self._refund(charge, "stock commit failed")
            raise
        now = self._now()
        try:
            paid, _ = await self._change(
                order.id,
                viewer,
                lambda o: pay(o, payment_id=charge.id, actor=viewer.subject, now=now),
                lambda before, after: events.order_paid(after),
            )
        except InvalidStateTransition as error:
            current = await self.get(viewer, order.id)
            if current.state is OrderState.PAID and current.payment_id == charge.id:
                return current  # a concurrent payment of this order used the same charge
            await self._refund(charge, f"order became {error.current.value} during payment")
            raise
        self.metrics.revenue.labels(paid.total.currency_code).inc(paid.total.amount_minor)
        return paid

    async def _refund(self, charge: Charge, reason: str) -> None:
        try:
            await self.payments.refund(charge_id=charge.id, reason=reason)
        except Exception:
            # The charge stays on the provider under the order's key: a retried payment reuses
            # it instead of charging again.
            log.exception("refund failed", extra={"charge_id": charge.id})

    async def cancel(self, viewer: Viewer, order_id: str, reason: str) -> Order:
        """Cancel before fulfilment; the stock (and a payment) is given back after the commit."""
        now = self._now()
        order, changed = await self._change(
            order_id,
            viewer,
            lambda o: cancel(o, actor=viewer.subject, reason=reason, now=now),
            lambda before, after: events.order_cancelled(after, before.state),
        )
        if changed:
            order = await self.settle(order)
        return order

    async def fulfil(self, actor: str, order_id: str, shipment_reference: str) -> Order:
        now = self._now()
        order, _ = await self._change(
            order_id,
            None,
            lambda o: fulfil(o, actor=actor, shipment_reference=shipment_reference, now=now),
            lambda before, after: events.order_fulfilled(after),
        )
        return order

    async def fail_lapsed(self, order_id: str, reason: str) -> Order | None:
        """CONFIRMED → FAILED by "system" (its reservation lapsed); None if it moved on."""
        now = self._now()
        try:
            order, changed = await self._change(
                order_id,
                None,
                lambda o: (
                    fail(o, reason=reason, now=now) if o.state is OrderState.CONFIRMED else None
                ),
                lambda before, after: events.order_failed(after, before.state),
            )
        except OrderNotFound:
            return None
        return order if changed else None

    async def settle(self, order: Order) -> Order:
        """Do what a committed change owes: refund the payment, give the stock back.

        Failures are logged and left for the reconciler (the flags stay set).
        """
        refunded = released = False
        try:
            if order.refund_pending:
                await self.payments.refund(charge_id=order.payment_id, reason=order.state_reason)
                refunded = True
            if order.release_pending:
                await self.catalog.release(order.id, order.state_reason or order.state.value)
                released = True
        except Exception as exc:
            log.warning(
                "could not settle the order now; reconciliation will",
                extra={"order_id": order.id, "error": repr(exc)},
            )
        if refunded or released:
            async with self.store.read() as tx:
                await tx.orders.settle(order.id, released=released, refunded=refunded)
            order = order.changed(
                refund_pending=order.refund_pending and not refunded,
                release_pending=order.release_pending and not released,
            )
        return order
