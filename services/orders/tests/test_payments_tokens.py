"""The payment providers (dev; Stripe's event checks) and the service-token cache."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import pytest

from mercato_common.errors import ErrorKind
from mercato_orders.clients import ServiceTokens, TokenGrant
from mercato_orders.domain.errors import (
    CatalogUnavailable,
    PaymentDeclined,
    PaymentEventInvalid,
    PaymentUnavailable,
)
from mercato_orders.domain.model import Money
from mercato_orders.domain.payments import Charge, PaymentEvent, PaymentEventKind
from mercato_orders.payments import (
    TOKEN_DECLINED,
    TOKEN_OK,
    TOKEN_UNAVAILABLE,
    DevPaymentProvider,
)
from mercato_orders.payments.stripe_intents import StripePaymentProvider

EUR = Money("EUR", 1000)


async def test_dev_provider_outcomes_by_token() -> None:
    provider = DevPaymentProvider()
    charge = await provider.charge(order_id="1", amount=EUR, token=TOKEN_OK)
    assert charge.amount == EUR
    assert charge.id.startswith("pay_dev_")
    with pytest.raises(PaymentDeclined) as declined:
        await provider.charge(order_id="2", amount=EUR, token=TOKEN_DECLINED)
    assert (declined.value.kind, declined.value.reason) == (
        ErrorKind.FAILED_PRECONDITION,
        "PAYMENT_DECLINED",
    )
    with pytest.raises(PaymentDeclined):
        await provider.charge(order_id="2", amount=EUR, token="tok_anything")
    with pytest.raises(PaymentUnavailable) as unavailable:
        await provider.charge(order_id="2", amount=EUR, token=TOKEN_UNAVAILABLE)
    assert unavailable.value.kind is ErrorKind.UNAVAILABLE
    with pytest.raises(PaymentDeclined):
        await provider.charge(order_id="3", amount=Money("EUR", 0), token=TOKEN_OK)
    assert len(provider.charges()) == 1


async def test_dev_provider_is_idempotent_per_key_until_refunded() -> None:
    provider = DevPaymentProvider()
    first, second = await asyncio.gather(
        provider.charge(order_id="1", amount=EUR, token=TOKEN_OK),
        provider.charge(order_id="1", amount=EUR, token=TOKEN_OK),
    )
    assert first == second
    with pytest.raises(PaymentDeclined):
        await provider.charge(order_id="1", amount=Money("EUR", 999), token=TOKEN_OK)
    await provider.refund(charge_id=first.id, reason="void")
    await provider.refund(charge_id=first.id, reason="void")  # idempotent
    assert provider.refunded(first.id)
    third = await provider.charge(order_id="1", amount=EUR, token=TOKEN_OK)
    assert third.id != first.id
    # Deterministic ids: the same history gives the same ids.
    again = DevPaymentProvider()
    assert (await again.charge(order_id="1", amount=EUR, token=TOKEN_OK)).id == first.id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_service_token_is_cached_until_shortly_before_expiry() -> None:
    clock = Clock()
    issued: list[int] = []

    async def issue() -> TokenGrant:
        issued.append(1)
        await asyncio.sleep(0.01)
        return TokenGrant(f"token-{len(issued)}", 900)

    tokens = ServiceTokens(issue, refresh_margin=60, clock=clock)
    # A burst of calls asks auth once.
    assert set(await asyncio.gather(*(tokens.token() for _ in range(20)))) == {"token-1"}
    clock.now += 839
    assert await tokens.token() == "token-1"
    clock.now += 2  # within the margin: renewed
    assert await tokens.token() == "token-2"
    assert await tokens.metadata() == (("authorization", "Bearer token-2"),)
    tokens.invalidate("token-1")  # an old token: ignored
    assert await tokens.token() == "token-2"
    tokens.invalidate()
    assert await tokens.token() == "token-3"


async def test_service_token_short_lifetimes_renew_halfway() -> None:
    clock = Clock()

    async def issue() -> TokenGrant:
        return TokenGrant("short", 60)

    tokens = ServiceTokens(issue, refresh_margin=300, clock=clock)
    await tokens.token()
    clock.now += 29
    await tokens.token()
    assert tokens.issued == 1
    clock.now += 2
    await tokens.token()
    assert tokens.issued == 2


async def test_service_token_outage_uses_the_cached_token_while_valid() -> None:
    clock = Clock()
    fail = False

    async def issue() -> TokenGrant:
        if fail:
            raise ConnectionError("auth down")
        return TokenGrant("cached", 900)

    tokens = ServiceTokens(issue, refresh_margin=60, clock=clock)
    assert await tokens.token() == "cached"
    fail = True
    clock.now += 880  # renewal due, auth down: still valid for 20 s
    assert await tokens.token() == "cached"
    clock.now += 20
    with pytest.raises(CatalogUnavailable):
        await tokens.token()


# Stripe: the webhook's signature and body, checked with the SDK's helpers (no network).

WEBHOOK_SECRET = "whsec_unit"


def _stripe() -> StripePaymentProvider:
    return StripePaymentProvider.create(api_key="sk_test_unit", webhook_secret=WEBHOOK_SECRET)


def _signed(event: dict[str, object], secret: str = WEBHOOK_SECRET) -> tuple[bytes, str]:
    payload = json.dumps(event).encode()
    timestamp = int(time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return payload, f"t={timestamp},v1={mac.hexdigest()}"


def test_stripe_events_are_read_only_when_signed() -> None:
    provider = _stripe()
    succeeded = {
        "id": "evt_1",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": "pi_1",
                "amount": 2599,
                "currency": "eur",
                "metadata": {"order_id": "o-1"},
            }
        },
    }
    event = provider.parse_event(*_signed(succeeded))
    assert event == PaymentEvent(
        id="evt_1",
        kind=PaymentEventKind.SUCCEEDED,
        order_id="o-1",
        charge=Charge(id="pi_1", amount=Money("EUR", 2599)),
    )
    failed = provider.parse_event(
        *_signed({"id": "evt_2", "type": "payment_intent.payment_failed"})
    )
    assert failed.kind is PaymentEventKind.FAILED
    other = provider.parse_event(*_signed({"id": "evt_3", "type": "charge.refunded"}))
    assert other.kind is PaymentEventKind.OTHER

    with pytest.raises(PaymentEventInvalid) as wrong:
        provider.parse_event(*_signed(succeeded, secret="whsec_other"))
    assert wrong.value.field_violations[0].field == "stripe_signature"
    payload, signature = _signed(succeeded)
    with pytest.raises(PaymentEventInvalid):
        provider.parse_event(payload.replace(b"2599", b"1"), signature)
    with pytest.raises(PaymentEventInvalid) as malformed:
        provider.parse_event(*_signed({"type": "payment_intent.succeeded", "id": "evt_4"}))
    assert malformed.value.field_violations[0].field == "payload"
    no_id = {
        "id": "evt_5",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": "", "amount": 1, "currency": "eur"}},
    }
    with pytest.raises(PaymentEventInvalid):
        provider.parse_event(*_signed(no_id))


def test_stripe_refuses_non_positive_amounts_without_calling_stripe() -> None:
    with pytest.raises(PaymentDeclined):
        asyncio.run(_stripe().charge(order_id="o", amount=Money("EUR", 0), token="pm_card_visa"))
