"""The ``dev`` payment provider: deterministic, in process, for development and tests; it moves
no money.

Test tokens of :class:`DevPaymentProvider` (documented in the proto and docs/orders.md):

| token                  | outcome                                   |
| ---------------------- | ----------------------------------------- |
| ``tok_test_ok``        | approved                                  |
| ``tok_test_declined``  | declined (PAYMENT_DECLINED)               |
| ``tok_test_unavailable`` | provider unavailable (UNAVAILABLE)      |
| anything else          | declined                                  |

Amounts must be positive integers of minor units. The same order and amount return the same
charge (no double charge when a payment is retried), until it is refunded; the same order with
another amount is refused. Charge ids are derived from the order and its charge number, so a run
is reproducible. State lives in memory: this provider is for one process in development.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from mercato_orders.domain.errors import (
    PaymentDeclined,
    PaymentEventsUnsupported,
    PaymentUnavailable,
)
from mercato_orders.domain.model import Money
from mercato_orders.domain.payments import Charge, PaymentEvent

__all__ = [
    "TOKEN_DECLINED",
    "TOKEN_OK",
    "TOKEN_UNAVAILABLE",
    "DevPaymentProvider",
]

TOKEN_OK = "tok_test_ok"  # noqa: S105 - a documented test token, not a secret
TOKEN_DECLINED = "tok_test_declined"  # noqa: S105
TOKEN_UNAVAILABLE = "tok_test_unavailable"  # noqa: S105


@dataclass
class _Record:
    charge: Charge
    refunded: bool = False


@dataclass
class DevPaymentProvider:
    """Deterministic payments: the outcome depends only on the token (see the module doc)."""

    _by_key: dict[str, list[_Record]] = field(default_factory=dict)
    _by_id: dict[str, _Record] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def settles_by_event(self) -> bool:
        return False

    async def charge(self, *, order_id: str, amount: Money, token: str) -> Charge:
        if amount.amount_minor <= 0:
            raise PaymentDeclined("the amount must be positive")
        if token == TOKEN_UNAVAILABLE:
            raise PaymentUnavailable()
        if token != TOKEN_OK:
            raise PaymentDeclined("the card was declined")
        async with self._lock:
            records = self._by_key.setdefault(order_id, [])
            if records and not records[-1].refunded:
                existing = records[-1].charge
                if existing.amount != amount:
                    raise PaymentDeclined("this payment was already made for another amount")
                return existing
            digest = hashlib.sha256(f"order:{order_id}:{len(records)}".encode()).hexdigest()
            record = _Record(Charge(id=f"pay_dev_{digest[:24]}", amount=amount))
            records.append(record)
            self._by_id[record.charge.id] = record
            return record.charge

    async def refund(self, *, charge_id: str, reason: str) -> None:
        async with self._lock:
            record = self._by_id.get(charge_id)
            if record is not None:
                record.refunded = True

    def parse_event(self, payload: bytes, signature: str) -> PaymentEvent:
        raise PaymentEventsUnsupported()

    async def close(self) -> None:
        return None

    def refunded(self, charge_id: str) -> bool:
        """Whether a charge was refunded (for tests and the development console)."""
        record = self._by_id.get(charge_id)
        return record is not None and record.refunded

    def charges(self) -> list[Charge]:
        return [record.charge for record in self._by_id.values()]
