"""The payment-provider port: what the orders service needs from a payment provider.

An implementation charges a payment method token for an amount under an idempotency key (the
same key and amount return the same charge instead of charging twice, until that charge is
refunded) and refunds (voids) a charge. It raises :class:`PaymentDeclined` when the provider
refuses the payment method and :class:`PaymentUnavailable` when it cannot be reached; nothing was
charged in either case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mercato_orders.domain.model import Money

__all__ = ["Charge", "PaymentProvider"]


@dataclass(frozen=True, slots=True)
class Charge:
    """A successful charge: the provider's reference and the amount taken."""

    id: str
    amount: Money


class PaymentProvider(Protocol):
    async def charge(self, *, idempotency_key: str, amount: Money, token: str) -> Charge:
        """Take ``amount`` with the payment method ``token``; the same key → the same charge."""
        ...

    async def refund(self, *, charge_id: str, reason: str) -> None:
        """Give a charge back in full (a void if not settled yet). Idempotent."""
        ...
