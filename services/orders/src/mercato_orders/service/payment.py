"""Paying an order: charge its total, commit its stock reservation, then CONFIRMED → PAID.

The charge is keyed by the order, so a retried or concurrent payment returns the same charge
instead of charging twice. A provider that settles later (Stripe ``processing``) pays the order
through its signed event (:meth:`Payment.record_event`), by the same steps. Whatever goes wrong
after the money was taken gives it back, except a passing failure while the provider will
deliver its event again: then the event's retry pays the order.
"""

from __future__ import annotations

import logging
import uuid

from mercato_orders import publish
from mercato_orders.clients import ReservationClosedError
from mercato_orders.domain.errors import (
    InvalidStateTransition,
    OrderNotFound,
    PaymentEventInvalid,
    ReservationExpired,
)
from mercato_orders.domain.model import Money, Order, OrderState
from mercato_orders.domain.payments import Charge, PaymentEvent, PaymentEventKind
from mercato_orders.domain.rules import Viewer, check_amount, check_payable, fail, pay
from mercato_orders.service.changes import Changes
from mercato_orders.service.reading import Reading

__all__ = ["PAYMENT_PROVIDER_ACTOR", "Payment"]

log = logging.getLogger("mercato_orders.service")

#: The actor of a state change made on the payment provider's event.
PAYMENT_PROVIDER_ACTOR = "payment-provider"


class Payment(Changes, Reading):
    """PayOrder and RecordPaymentEvent (they read and change the order, hence the bases)."""

    async def pay(self, viewer: Viewer, order_id: str, token: str, amount: Money) -> Order:
        """Charge the order's total, commit its reservation, then CONFIRMED → PAID. With a
        charge the provider settles later, the order is returned still CONFIRMED."""
        order = await self.get(viewer, order_id)
        check_payable(order)
        check_amount(order, amount)
        # Keyed by the order: a retried or concurrent payment returns the same charge.
        charge = await self.payments.charge(order_id=order.id, amount=order.total, token=token)
        if charge.amount != order.total:
            await self._refund(charge, "charged amount differs from the order's total")
            check_amount(order, charge.amount)
        if not charge.settled:
            return order  # the provider's event pays it (record_event)
        return await self._settle(order, charge, viewer=viewer, actor=viewer.subject)

    async def record_event(self, payload: bytes, signature: str) -> str:
        """Act on a signed event of the provider; the order it is about ("" if none).

        A succeeded payment pays its CONFIRMED order if the amounts match; one that cannot pay
        its order is refunded. Repeated events change nothing more."""
        try:
            event = self.payments.parse_event(payload, signature)
        except PaymentEventInvalid:
            self.metrics.payment_events.labels("invalid").inc()
            raise
        order_id, outcome = await self._act_on(event)
        self.metrics.payment_events.labels(outcome).inc()
        return order_id

    async def _act_on(self, event: PaymentEvent) -> tuple[str, str]:
        """(the order, the outcome counted) of a verified event."""
        if event.kind is not PaymentEventKind.SUCCEEDED or event.charge is None:
            return event.order_id, "ignored"
        charge = event.charge
        order_id = _order_id(event.order_id)
        if order_id is None:
            # Another integration on the same provider account may set the same metadata key.
            log.warning("payment for no order of this service", extra={"charge_id": charge.id})
            return "", "ignored"
        order = await self._find(order_id)
        if order is None:
            # Not refunded: another deployment may share the provider's account.
            log.warning("payment for an unknown order", extra={"charge_id": charge.id})
            return "", "ignored"
        if order.payment_id == charge.id:
            return order.id, "repeated"  # already paid by this payment
        # A refund that fails here fails the event, so the provider delivers it again.
        if order.state is not OrderState.CONFIRMED:
            await self.payments.refund(charge_id=charge.id, reason=f"order {order.state.value}")
            return order.id, "refunded"
        if charge.amount != order.total:
            log.warning(
                "payment amount differs from the order's total",
                extra={"order_id": order.id, "charge_id": charge.id},
            )
            await self.payments.refund(charge_id=charge.id, reason="amount differs from total")
            return order.id, "refunded"
        try:
            await self._settle(order, charge, viewer=None, actor=PAYMENT_PROVIDER_ACTOR)
        except (ReservationExpired, InvalidStateTransition, OrderNotFound):
            return order.id, "refunded"  # by _settle: the event is done with
        return order.id, "paid"

    async def _settle(
        self, order: Order, charge: Charge, *, viewer: Viewer | None, actor: str
    ) -> Order:
        """Commit the reservation and pay the order with ``charge`` (money already taken)."""
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
            # Not paid. If the provider delivers its event again until acknowledged, keep the
            # money: that retry pays the order. Otherwise give it back. (If the commit did
            # reach the catalog, paying again commits nothing more and cancelling returns the
            # units.)
            if not self.payments.settles_by_event:
                await self._refund(charge, "stock commit failed")
            raise
        now = self._now()
        try:
            paid, _ = await self._change(
                order.id,
                viewer,
                lambda o: pay(o, payment_id=charge.id, actor=actor, now=now),
                lambda before, after: publish.order_paid(after),
            )
        except InvalidStateTransition as error:
            current = await self._find(order.id)
            if (
                current is not None
                and current.state is OrderState.PAID
                and current.payment_id == charge.id
            ):
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


def _order_id(value: str) -> str | None:
    """The order id an event names, as the API writes it (a lower-case UUID); None if it is not
    one (so not an order of this service)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None
