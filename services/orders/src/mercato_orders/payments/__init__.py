"""Payment providers (the port is ``domain/payments.py``): ``dev`` here; ``stripe`` in
:mod:`mercato_orders.payments.stripe_intents`, imported only when chosen."""

from mercato_orders.payments.dev import (
    TOKEN_DECLINED,
    TOKEN_OK,
    TOKEN_UNAVAILABLE,
    DevPaymentProvider,
)

__all__ = ["TOKEN_DECLINED", "TOKEN_OK", "TOKEN_UNAVAILABLE", "DevPaymentProvider"]
