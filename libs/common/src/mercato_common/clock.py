"""The wall clock the services read: aware datetimes in UTC.

Code that takes a clock (``clock: Callable[[], datetime] = utcnow``) lets tests hand in a fixed
one instead.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utcnow"]


def utcnow() -> datetime:
    """Now, as an aware datetime in UTC."""
    return datetime.now(UTC)
