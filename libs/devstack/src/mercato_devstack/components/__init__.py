"""The four servers of the local stack."""

from __future__ import annotations

from mercato_devstack.components.base import Component, ComponentStatus
from mercato_devstack.components.ferretdb import FerretDB
from mercato_devstack.components.kafka import Kafka
from mercato_devstack.components.postgres import Postgres
from mercato_devstack.components.redis import Redis

#: Start order; `down` stops them in reverse.
COMPONENT_TYPES: tuple[type[Component], ...] = (Postgres, Kafka, Redis, FerretDB)
NAMES: tuple[str, ...] = tuple(kind.name for kind in COMPONENT_TYPES)

__all__ = [
    "COMPONENT_TYPES",
    "NAMES",
    "Component",
    "ComponentStatus",
    "FerretDB",
    "Kafka",
    "Postgres",
    "Redis",
]
