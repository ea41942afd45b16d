"""Conversions between the catalog's domain values and their protobuf forms, shared by the API
(api.py) and the events (events.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from mercato.type.v1 import money_pb2
from mercato_catalog.domain import Money

__all__ = ["money_to_proto", "timestamp"]


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


def money_to_proto(money: Money) -> money_pb2.Money:
    return money_pb2.Money(currency_code=money.currency_code, amount_minor=money.amount_minor)
