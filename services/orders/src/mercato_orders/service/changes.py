"""Changing a placed order: cancel, fulfil, fail a lapsed one, and settle what a change owes.

Each change locks the order, applies a rule of :mod:`mercato_orders.domain.rules` and writes the
order and its event (:mod:`mercato_orders.publish`) in one transaction. What a change owes to
other systems (the stock back to the catalog, a refund) is done right after the commit by
:meth:`Changes.settle`, or later by the reconciliation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mercato_common.kafka import Envelope
from mercato_orders import publish
from mercato_orders.domain.errors import OrderNotFound
from mercato_orders.domain.model import Order, OrderState
from mercato_orders.domain.rules import Viewer, cancel, fail, fulfil, visible
from mercato_orders.service.base import ServiceBase

__all__ = ["Changes"]

log = logging.getLogger("mercato_orders.service")


class Changes(ServiceBase):
    """Cancel, fulfil, fail a lapsed order, and settle what a committed change owes."""

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

    async def cancel(self, viewer: Viewer, order_id: str, reason: str) -> Order:
        """Cancel before fulfilment; the stock (and a payment) is given back after the commit."""
        now = self._now()
        order, changed = await self._change(
            order_id,
            viewer,
            lambda o: cancel(o, actor=viewer.subject, reason=reason, now=now),
            lambda before, after: publish.order_cancelled(after, before.state),
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
            lambda before, after: publish.order_fulfilled(after),
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
                lambda before, after: publish.order_failed(after, before.state),
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
