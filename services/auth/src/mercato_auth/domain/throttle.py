"""Brute-force throttling of logins (and client authentication), after OWASP's guidance.

Each failure counts against several keys:

- ``account_address:`` the account *from this address*: the tight limit (a few failures, then
  exponentially growing locks). Guessing one account's password from one place stops here,
  and it locks nobody else out: the owner elsewhere is unaffected.
- ``address:`` every account from one address (password spraying): a higher limit.
- ``account:`` the account from anywhere: a slower ceiling against guesses spread over many
  addresses, whose lock is short and never grows, so that the owner is never locked out for
  longer than that (an attacker cannot deny the account to its owner).
- ``client:`` a client id (client credentials), with the address.

Failures within ``window`` of the previous one accumulate; from ``max_failures`` on, every
further failure locks the key for ``base_delay * 2 ** (failures - max_failures)``, capped at
``max_delay``. While a key is locked, attempts are refused before any password is checked and do
not count. A success resets the keys of the attempt. The state lives in PostgreSQL so that every
replica sees it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

__all__ = [
    "ThrottleKey",
    "ThrottleKind",
    "ThrottlePolicy",
    "ThrottleState",
    "record_failure",
    "retry_after",
    "throttle_key",
]


class ThrottleKind(Enum):
    ACCOUNT = "account"
    ACCOUNT_ADDRESS = "account_address"
    ADDRESS = "address"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class ThrottleKey:
    kind: ThrottleKind
    # "<kind>:<sha-256 prefix of the value>": bounded length, no email stored in clear.
    key: str


def throttle_key(kind: ThrottleKind, value: str) -> ThrottleKey:
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:40]
    return ThrottleKey(kind=kind, key=f"{kind.value}:{digest}")


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    max_failures: int
    window: timedelta
    base_delay: timedelta
    max_delay: timedelta

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if self.base_delay <= timedelta(0) or self.max_delay < self.base_delay:
            raise ValueError("need 0 < base_delay <= max_delay")


@dataclass(frozen=True, slots=True)
class ThrottleState:
    failures: int
    last_failure_time: datetime
    locked_until: datetime | None = None


def retry_after(state: ThrottleState | None, now: datetime) -> int | None:
    """Whole seconds until the key may try again, or None when it is not locked."""
    if state is None or state.locked_until is None or state.locked_until <= now:
        return None
    return max(1, math.ceil((state.locked_until - now).total_seconds()))


def record_failure(
    state: ThrottleState | None, now: datetime, policy: ThrottlePolicy
) -> ThrottleState:
    """The state after one more failure."""
    if state is None or now - state.last_failure_time > policy.window:
        failures = 1
    else:
        failures = state.failures + 1
    locked_until = None
    if failures >= policy.max_failures:
        exponent = min(failures - policy.max_failures, 32)
        delay = min(policy.base_delay * (2**exponent), policy.max_delay)
        locked_until = now + delay
    return ThrottleState(failures=failures, last_failure_time=now, locked_until=locked_until)
