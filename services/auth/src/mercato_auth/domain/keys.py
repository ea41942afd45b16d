"""Signing-key life cycle rules.

A key is ``next`` (published, not yet signing), then ``active`` (the one key that signs), then
``retired`` (published until every token it signed has expired), then deleted. Publishing the
next key a whole rotation period before it signs means verifiers that cache the JWKS already
know it when the first token signed with it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

__all__ = ["KeyState", "SigningKeyInfo", "publish_until", "rotation_due"]


class KeyState(Enum):
    NEXT = "next"
    ACTIVE = "active"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class SigningKeyInfo:
    kid: str
    alg: str
    state: KeyState
    create_time: datetime
    activate_time: datetime | None
    retire_time: datetime | None
    publish_until: datetime | None


def rotation_due(active: SigningKeyInfo, now: datetime, interval: timedelta) -> bool:
    started = active.activate_time or active.create_time
    return now - started >= interval


def publish_until(retire_time: datetime, token_lifetime: timedelta, margin: timedelta) -> datetime:
    """Until when a key retired at ``retire_time`` stays in the JWKS.

    ``margin`` covers the verifiers' clock leeway and the time other replicas may keep signing
    with their cached copy of the key before they notice the rotation.
    """
    return retire_time + token_lifetime + margin
