"""The analytics errors: root :class:`AnalyticsError` (domain ``analytics.mercato``) and its
subclasses, mapped to gRPC codes by the server's interceptor; :class:`InvalidEvent` for an event
that breaks its contract (never applied: dead-lettered)."""

from __future__ import annotations

from mercato_common import errors
from mercato_common.errors import MercatoError

__all__ = [
    "AnalyticsError",
    "CurrencyRequired",
    "InvalidEvent",
    "InvalidRange",
    "KafkaUnavailable",
    "StoreUnavailable",
]


class AnalyticsError(MercatoError):
    """Root of the analytics service's errors."""

    domain = "analytics.mercato"


class InvalidRange(AnalyticsError, errors.InvalidArgument):
    default_reason = "INVALID_RANGE"


class CurrencyRequired(AnalyticsError, errors.InvalidArgument):
    default_reason = "CURRENCY_REQUIRED"


class KafkaUnavailable(AnalyticsError, errors.Unavailable):
    """Kafka did not answer (the consumer positions cannot be read)."""

    default_reason = "KAFKA_UNAVAILABLE"


class StoreUnavailable(AnalyticsError, errors.Unavailable):
    """The database did not answer (or answered "try again"); nothing was lost, retry."""

    default_reason = "STORE_UNAVAILABLE"


class InvalidEvent(ValueError):
    """An event whose payload breaks the contract: it can never be applied (dead-letter it)."""
