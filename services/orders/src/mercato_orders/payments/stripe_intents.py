"""The ``stripe`` payment provider: Stripe PaymentIntents through the official SDK.

Its own module, imported only when PAYMENT_PROVIDER is ``stripe``: the SDK costs about 10 MiB of
memory in every process that imports it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import KW_ONLY, dataclass

import stripe

from mercato_orders.domain.errors import PaymentDeclined, PaymentEventInvalid, PaymentUnavailable
from mercato_orders.domain.model import Money
from mercato_orders.domain.payments import Charge, PaymentEvent, PaymentEventKind

__all__ = ["StripePaymentProvider"]

log = logging.getLogger("mercato_orders.payments")

#: PaymentIntent statuses after a server-side confirmation (https://docs.stripe.com/payments/paymentintents/lifecycle).
_SETTLED = "succeeded"
_SETTLING = "processing"  # the money comes later: payment_intent.succeeded (or payment_failed)
_EVENT_KINDS = {
    "payment_intent.succeeded": PaymentEventKind.SUCCEEDED,
    "payment_intent.payment_failed": PaymentEventKind.FAILED,
}
#: Stripe's refund reasons are a closed list; ours goes into the refund's metadata.
_REFUND_REASON = "requested_by_customer"


@dataclass(eq=False, repr=False)  # no repr: the clients and the secret hold credentials
class StripePaymentProvider:
    """Stripe PaymentIntents, confirmed on the server with the client's PaymentMethod (``pm_…``,
    from Stripe.js or a Stripe test method such as ``pm_card_visa``).

    - charge: one PaymentIntent per (order, payment method) (its idempotency key), for the
      order's total, ``metadata.order_id`` set, redirect-based methods off. ``succeeded``: a
      settled charge; ``processing``: an unsettled one (the event settles it); any other status
      (``requires_payment_method`` after a failed attempt, ``requires_action`` for a method that
      needs the customer, ``canceled``) and card errors: declined. Network errors, rate limits,
      Stripe's 5xx and a refused API key: unavailable (logged without the key).
    - refund: a full refund of the PaymentIntent, idempotent per PaymentIntent.
    - events: the webhook's ``Stripe-Signature`` is checked with the SDK's helper against the
      endpoint's signing secret, at most ``tolerance_seconds`` old.
    """

    settles_by_event = True

    client: stripe.StripeClient
    http_client: stripe.HTTPXClient
    _: KW_ONLY
    webhook_secret: str
    tolerance_seconds: int = 300

    @classmethod
    def create(
        cls,
        *,
        api_key: str,
        webhook_secret: str,
        api_base: str | None = None,
        timeout_seconds: float = 10.0,
        max_network_retries: int = 2,
        tolerance_seconds: int = 300,
    ) -> StripePaymentProvider:
        """A provider with its own HTTPX client (asynchronous calls; the SDK retries network
        errors and 409/429/5xx with the same idempotency key)."""
        http_client = stripe.HTTPXClient(timeout=timeout_seconds)
        client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else {},
            http_client=http_client,
            max_network_retries=max_network_retries,
        )
        return cls(
            client,
            http_client,
            webhook_secret=webhook_secret,
            tolerance_seconds=tolerance_seconds,
        )

    async def close(self) -> None:
        await self.http_client.close_async()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped

    async def charge(self, *, order_id: str, amount: Money, token: str) -> Charge:
        if amount.amount_minor <= 0:
            raise PaymentDeclined("the amount must be positive")
        method = hashlib.sha256(token.encode()).hexdigest()[:32]
        try:
            intent = await self.client.v1.payment_intents.create_async(
                {
                    "amount": amount.amount_minor,
                    "currency": amount.currency_code.lower(),
                    "payment_method": token,
                    "confirm": True,
                    "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                    "metadata": {"order_id": order_id},
                },
                {"idempotency_key": f"mercato-order-{order_id}-{method}"},
            )
        except stripe.CardError as error:
            raise PaymentDeclined(_decline_message(error)) from None
        except stripe.IdempotencyError:
            raise PaymentDeclined("this payment was already made for another amount") from None
        except stripe.InvalidRequestError as error:
            raise PaymentDeclined(_decline_message(error)) from None
        except stripe.StripeError as error:
            _log_unavailable("payment", error)
            raise PaymentUnavailable() from None
        charge = Charge(
            id=intent.id,
            amount=Money(intent.currency.upper(), intent.amount),
            settled=intent.status == _SETTLED,
        )
        if intent.status in (_SETTLED, _SETTLING):
            return charge
        log.info(
            "payment not completed",
            extra={"payment_intent": intent.id, "status": intent.status, "order_id": order_id},
        )
        if intent.status == "requires_action":
            raise PaymentDeclined("the payment method needs the customer's action; use another")
        raise PaymentDeclined("the payment was not completed; use another payment method")

    async def refund(self, *, charge_id: str, reason: str) -> None:
        try:
            await self.client.v1.refunds.create_async(
                {
                    "payment_intent": charge_id,
                    "reason": _REFUND_REASON,
                    "metadata": {"mercato_reason": reason[:500]},
                },
                {"idempotency_key": f"mercato-refund-{charge_id}"},
            )
        except stripe.StripeError as error:
            if isinstance(error, stripe.InvalidRequestError) and (
                error.code == "charge_already_refunded"
            ):
                return
            _log_unavailable("refund", error)
            raise PaymentUnavailable() from None

    def parse_event(self, payload: bytes, signature: str) -> PaymentEvent:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise PaymentEventInvalid("payload", "not UTF-8 JSON") from None
        try:
            stripe.WebhookSignature.verify_header(
                text, signature, self.webhook_secret, self.tolerance_seconds
            )
        except stripe.SignatureVerificationError:
            raise PaymentEventInvalid(
                "stripe_signature", "does not verify (wrong secret, altered body or too old)"
            ) from None
        try:
            event = json.loads(text)
            kind = _EVENT_KINDS.get(event["type"], PaymentEventKind.OTHER)
            event_id = str(event["id"])
            if kind is not PaymentEventKind.SUCCEEDED:
                return PaymentEvent(id=event_id, kind=kind)
            intent = event["data"]["object"]
            if not intent["id"]:
                raise ValueError("a payment intent without an id")
            metadata = intent.get("metadata") or {}
            return PaymentEvent(
                id=event_id,
                kind=kind,
                order_id=str(metadata.get("order_id", "")),
                charge=Charge(
                    id=str(intent["id"]),
                    amount=Money(str(intent["currency"]).upper(), int(intent["amount"])),
                ),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PaymentEventInvalid("payload", "not a Stripe event") from None


def _decline_message(error: stripe.StripeError) -> str:
    # Stripe's user_message is written for the customer (never the key or internals).
    return error.user_message or "the payment method was declined"


def _log_unavailable(what: str, error: stripe.StripeError) -> None:
    # The exception's text names no key; its class and HTTP status are what an SRE needs.
    log.warning(
        "stripe %s failed",
        what,
        extra={"error": type(error).__name__, "http_status": error.http_status},
    )
