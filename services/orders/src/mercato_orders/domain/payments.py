"""The payment-provider port: what the orders service needs from a payment provider.

An implementation charges a payment method token for an order's amount (the same order and
amount return the same charge instead of charging twice, until that charge is refunded) and
refunds (voids) a charge. It raises :class:`PaymentDeclined` when the provider refuses the
payment method and :class:`PaymentUnavailable` when it cannot be reached; nothing was charged in
either case.

A provider that settles some payments later (Stripe: a PaymentIntent ``processing``) returns an
unsettled charge and reports the outcome as a signed event, which :meth:`parse_event` verifies
and reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from mercato_orders.domain.model import Money

__all__ = ["Charge", "PaymentEvent", "PaymentEventKind", "PaymentProvider"]


@dataclass(frozen=True, slots=True)
class Charge:
    """A charge: the provider's reference and the amount. ``settled`` is False while the
    provider has not taken the money yet (its event will say)."""

    id: str
    amount: Money
    settled: bool = True


class PaymentEventKind(Enum):
    SUCCEEDED = "SUCCEEDED"  # the money was taken: the order may be paid
    FAILED = "FAILED"  # an attempt failed; the order stays payable
    OTHER = "OTHER"  # nothing this service acts on


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """A verified event of the provider. ``order_id`` is empty for a payment this suite did not
    start; ``charge`` is set for SUCCEEDED."""

    id: str
    kind: PaymentEventKind
    order_id: str = ""
    charge: Charge | None = None


class PaymentProvider(Protocol):
    @property
    def settles_by_event(self) -> bool:
        """Whether the provider reports payments as events: then a charge whose order could
        not be paid for a passing reason (the catalog unreachable) is kept, since the event is
        delivered again until it is acknowledged."""
        ...

    async def charge(self, *, order_id: str, amount: Money, token: str) -> Charge:
        """Take ``amount`` with the payment method ``token``; the same order → the same charge."""
        ...

    async def refund(self, *, charge_id: str, reason: str) -> None:
        """Give a charge back in full (a void if not settled yet). Idempotent."""
        ...

    def parse_event(self, payload: bytes, signature: str) -> PaymentEvent:
        """The event, if ``signature`` proves the provider sent ``payload``; else
        :class:`PaymentEventInvalid`. :class:`PaymentEventsUnsupported` if it sends none."""
        ...

    async def close(self) -> None:
        """Release the provider's connections (at the service's stop)."""
        ...
