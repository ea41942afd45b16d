"""Time buckets: UTC-aligned minutes, hours and days (truncation, rounding, enumeration), the
bounds of accepted times and the validation of requested ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import Enum

from mercato_analytics.domain.errors import InvalidRange
from mercato_common.errors import FieldViolation

__all__ = [
    "MAX_TIME",
    "MIN_TIME",
    "BucketSize",
    "as_utc",
    "bucket_starts",
    "ceil_time",
    "check_range",
    "floor_time",
]

# Bounds of the times the service accepts (events and query ranges): bucket arithmetic stays
# far from datetime's limits, and nonsense like year 1 is refused instead of stored.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)


class BucketSize(Enum):
    """A bucket size; the value is the short code stored in the documents."""

    MINUTE = "m"
    HOUR = "h"
    DAY = "d"

    @property
    def step(self) -> timedelta:
        return _STEPS[self]

    @property
    def max_range(self) -> timedelta:
        """Longest range a sales summary may ask for with this bucket size (the contract's)."""
        return _MAX_RANGES[self]


_STEPS = {
    BucketSize.MINUTE: timedelta(minutes=1),
    BucketSize.HOUR: timedelta(hours=1),
    BucketSize.DAY: timedelta(days=1),
}
_MAX_RANGES = {
    BucketSize.MINUTE: timedelta(hours=24),
    BucketSize.HOUR: timedelta(days=31),
    BucketSize.DAY: timedelta(days=1096),
}


def as_utc(when: datetime) -> datetime:
    """``when`` in UTC; a naive time is a programming error here."""
    if when.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return when.astimezone(UTC)


def floor_time(when: datetime, size: BucketSize) -> datetime:
    """Start of the bucket of ``size`` that contains ``when`` (UTC)."""
    when = as_utc(when)
    if size is BucketSize.MINUTE:
        return when.replace(second=0, microsecond=0)
    if size is BucketSize.HOUR:
        return when.replace(minute=0, second=0, microsecond=0)
    return when.replace(hour=0, minute=0, second=0, microsecond=0)


def ceil_time(when: datetime, size: BucketSize) -> datetime:
    """``when`` rounded up to a bucket boundary (unchanged when already on one)."""
    floor = floor_time(when, size)
    return floor if floor == as_utc(when) else floor + size.step


def bucket_starts(start: datetime, end: datetime, size: BucketSize) -> list[datetime]:
    """Starts of the buckets covering ``[start, end)``, both already aligned to ``size``."""
    out: list[datetime] = []
    current = start
    while current < end:
        out.append(current)
        current += size.step
    return out


def check_range(
    start: datetime, end: datetime, *, max_range: timedelta | None = None
) -> tuple[datetime, datetime]:
    """Validate a requested ``[start, end)`` (the server's interceptor checked it too)."""
    violations: list[FieldViolation] = []
    for name, value in (("start_time", start), ("end_time", end)):
        if not MIN_TIME <= value < MAX_TIME:
            violations.append(FieldViolation(name, "must be between 1970 and 9000"))
    if violations:
        raise InvalidRange("time out of range", field_violations=violations)
    if start >= end:
        raise InvalidRange(
            "start_time must be before end_time",
            field_violations=[FieldViolation("end_time", "must be after start_time")],
        )
    if max_range is not None and end - start > max_range:
        raise InvalidRange(
            "range too long for the bucket size",
            field_violations=[FieldViolation("end_time", f"range longer than {max_range}")],
        )
    return as_utc(start), as_utc(end)
