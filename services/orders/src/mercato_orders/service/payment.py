"""Paying an order: charge its total, commit its stock reservation, then CONFIRMED → PAID.

The charge is keyed by the order, so a retried or concurrent payment returns the same charge
instead of charging twice. Whatever goes wrong after the charge gives the money back.
"""

from __future__ import annotations

import logging

from mercato_orders import publish
from mercato_orders.clients import ReservationClosedError
from mercato_orders.domain.errors import InvalidStateTransition, ReservationExpired
from mercato_orders.domain.model import Money, Order, OrderState
from mercato_orders.domain.payments import Charge
from mercato_orders.domain.rules import Viewer, check_amount, check_payable, fail, pay
from mercato_orders.service.changes import Changes
from mercato_orders.service.reading import Reading

__all__ = ["Payment"]

log = logging.getLogger("mercato_orders.service")


class Payment(Changes, Reading):
    """PayOrder (it reads and changes the order, hence its bases)."""

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
                lambda before, after: publish.order_failed(after, before.state),
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
                lambda before, after: publish.order_paid(after),
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
