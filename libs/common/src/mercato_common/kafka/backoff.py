"""Exponential backoff with jitter, shared by the Kafka consumer runner and the outbox relays."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number ``attempt`` (1-based): ``initial * multiplier**(attempt-1)``.

    The delay is capped at ``maximum`` and then reduced by up to ``jitter`` (a fraction), so that
    replicas that failed together do not retry in lockstep.
    """

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0:
            raise ValueError("backoff delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be within [0, 1]")

    def delay(self, attempt: int) -> float:
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        # Cap the exponent so that large attempt numbers cannot overflow a float.
        raw = self.initial * self.multiplier ** min(attempt - 1, 64)
        capped = min(raw, self.maximum)
        if self.jitter:
            capped *= 1 - self.jitter * random.random()
        return capped
