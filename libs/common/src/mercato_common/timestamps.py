"""Protobuf Timestamps to and from aware datetimes in UTC, as every service's ``convert.py`` and
the event envelope need them.

Pure functions with no I/O; a time that does not fit a datetime (``ToDatetime`` raises
``ValueError``/``OverflowError``) is the caller's to turn into its own error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["optional_time", "timestamp"]


def timestamp(when: datetime) -> Timestamp:
    """``when`` (aware; a naive one is taken as local time) as a Timestamp."""
    stamp = Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return stamp


def optional_time(message: Any, field: str) -> datetime | None:
    """A message's Timestamp field as an aware UTC time; None when it is not set."""
    if not message.HasField(field):
        return None
    value: Timestamp = getattr(message, field)
    return value.ToDatetime(tzinfo=UTC)
