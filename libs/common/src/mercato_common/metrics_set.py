"""Metrics defined once per Prometheus registry.

A registry refuses a second collector of the same name, and every relay, consumer or pool of a
process shares one set of metrics: a subclass declares its metrics in ``__init__(registry)``
and callers take :meth:`MetricsSet.for_registry`, which makes the set on first use.
"""

from __future__ import annotations

from typing import Any, Self
from weakref import WeakKeyDictionary

from prometheus_client import REGISTRY, CollectorRegistry

__all__ = ["MetricsSet"]

_SETS: dict[type[Any], WeakKeyDictionary[CollectorRegistry, Any]] = {}


class MetricsSet:
    def __init__(self, registry: CollectorRegistry) -> None:
        del registry

    @classmethod
    def for_registry(cls, registry: CollectorRegistry = REGISTRY) -> Self:
        """This class's metrics in ``registry`` (made on first use)."""
        sets = _SETS.setdefault(cls, WeakKeyDictionary())
        found: Self | None = sets.get(registry)
        if found is None:
            found = sets[registry] = cls(registry)
        return found
