"""The auth service's periodic work: housekeeping and the signing keys' rotation and reload."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mercato_auth.service import AuthService, KeyRing
from mercato_common.runtime import Periodic

__all__ = ["housekeeping", "key_maintenance"]

_log = logging.getLogger("mercato_auth")


def housekeeping(service: AuthService, *, interval: float) -> Periodic:
    """Deletes expired refresh tokens, stale throttle rows and long-retired keys."""
    return _after_start("auth-housekeeping", service.housekeeping, interval)


def key_maintenance(keys: KeyRing) -> Periodic:
    """Rotates the signing key when due and reloads it, every refresh interval of the ring."""
    return _after_start("signing-key-maintenance", keys.maintain, keys.refresh_interval)


def _after_start(name: str, tick: Callable[[], Awaitable[Any]], interval: float) -> Periodic:
    # The first run one interval after start: there is nothing to do yet (the key ring has just
    # loaded its keys). A run in progress is cancelled at stop.
    return Periodic(name, tick, interval=interval, immediate=False, logger=_log)
