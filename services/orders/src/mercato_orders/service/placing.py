"""Placing an order: the reservation saga with the catalog, and its compensation.

Placement (``create``), step by step:

1. **Claim the idempotency key** (``INSERT ... ON CONFLICT DO NOTHING``) with a fresh order id
   and an owner token, before anything is reserved. Of many concurrent requests with one key,
   exactly one inserts; the others see its row: another body → ``IDEMPOTENCY_KEY_REUSED``;
   DONE → the same order; PENDING → wait for it (then the same order), ``IDEMPOTENCY_KEY_IN_USE``
   after ``idempotency_wait_seconds``; PENDING with an expired lease (its create died) → take it
   over and continue under the same order id (the catalog's reservation, if any, is reused).
2. **Reserve** the stock under the order id (``ReserveStock``, all lines or none). The catalog
   refuses unknown, archived and out-of-stock lines all at once, holding nothing.
3. **Price** the lines at the products the reservation answers (as its holds wrote them), never
   from the client; from ``BatchGetProducts`` only when the catalog did not answer them (an
   older catalog). Pricing after reserving saves a read of every product and a round trip per
   order; its refusals (several currencies, a total too large) release the reservation.
4. **Commit** the key (DONE, guarded by the owner token), the order (CONFIRMED, with its history)
   and ``OrderPlaced`` in one PostgreSQL statement (``store.placement``: atomic, one round trip).

On a refusal (step 2-3) nothing stays held: the key is forgotten, a reservation made is
released, and the caller gets FAILED_PRECONDITION. When the outcome of step 2 or 4 is unknown
(catalog unreachable, deadline, database down, the caller cancelled), the reservation is
released by a compensation that runs outside the caller's deadline; if that fails too, the key
is left to the reconciliation (:mod:`mercato_orders.service.reconcile`), which releases it
later. Either way no order is left without its event and no stock stays reserved without an
order.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from mercato_orders import publish
from mercato_orders.clients import ReservationClosedError
from mercato_orders.domain.errors import (
    CatalogUnavailable,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    MixedCurrencies,
    OrdersUnavailable,
    ProductLimitExceeded,
    StockUnavailable,
    TooManyOpenOrders,
    TotalTooLarge,
)
from mercato_orders.domain.model import Order, OrderState, RequestedLine
from mercato_orders.domain.rules import (
    Viewer,
    check_idempotency_key,
    check_lines,
    check_user_limits,
    new_order,
    price_lines,
    request_fingerprint,
)
from mercato_orders.service.base import ServiceBase
from mercato_orders.store import KeyState, new_token

__all__ = ["Placing"]

log = logging.getLogger("mercato_orders.service")

# Refusals after which nothing is held in the catalog (it reserves all lines or none).
_REFUSALS = (StockUnavailable, MixedCurrencies, TotalTooLarge)


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


class Placing(ServiceBase):
    """CreateOrder: the placement saga and its compensation (see the module docstring)."""

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
        if claim.fresh and self.config.limits.any:
            # A new create (not a retry, not one taken over): within the user's caps, or
            # refused before anything is reserved.
            try:
                await self._check_limits(claim.user_id, requested)
            except (TooManyOpenOrders, ProductLimitExceeded):
                await self._forget(claim)
                raise
        try:
            return await self._place(claim, requested, accepted_at)
        except _KeyLostError:
            # The key changed hands (our lease ran out): its new owner answers for it.
            result = await self._claim(viewer.subject, key, fingerprint)
            if isinstance(result, Order):
                return result
            raise IdempotencyKeyInUse() from None

    async def _check_limits(self, user_id: str, lines: Sequence[RequestedLine]) -> None:
        async with self.store.read() as tx:
            holdings = await tx.orders.holdings(user_id, [line.sku for line in lines])
        # The user's creates in progress include this one, already claimed.
        others = replace(holdings, creates_in_progress=max(holdings.creates_in_progress - 1, 0))
        check_user_limits(lines, others, self.config.limits)

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
            may_hold = True
            try:
                held = await self.catalog.reserve(order_id, lines)
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
                held = await self.catalog.reserve(order_id, lines)
            products = held.products or await self.catalog.products([s.sku for s in lines])
            # The reservation decided availability; a pricing refusal releases it (below).
            priced, total = price_lines(lines, products, check_availability=False)
            order = new_order(
                order_id=order_id,
                user_id=owned.user_id,
                idempotency_key=owned.key,
                lines=priced,
                total=total,
                accepted_at=accepted_at,
                confirmed_at=self._now(),
            )
            # One statement: the key completed (while still ours), the order and its event.
            async with self.store.read() as tx:
                if not await tx.placements.confirm(
                    order,
                    owner=owned.owner,
                    key_ttl=self.config.key_ttl,
                    event=publish.order_placed(order),
                ):
                    raise _KeyLostError()
        except _KeyLostError:
            raise
        except _REFUSALS:
            # Nothing is held (the catalog reserved all lines or none; a reservation made before
            # a pricing refusal is released): forget the key, so that the same request may be
            # tried again once the stock is there.
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
            await self.release_stock(order_id, reason)
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
