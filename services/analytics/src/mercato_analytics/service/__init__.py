"""The analytics use cases, between the inbound adapters (api, consume, jobs, commands) and the
domain: ``apply`` (one consumed event's effect, exactly once), ``queries`` (the RPCs' reads)
and ``rebuild`` (every aggregate recomputed from the topics)."""

from mercato_analytics.service.apply import ApplyEvent
from mercato_analytics.service.queries import PositionReader, Queries
from mercato_analytics.service.rebuild import GroupActiveError, RebuildReport, rebuild

__all__ = [
    "ApplyEvent",
    "GroupActiveError",
    "PositionReader",
    "Queries",
    "RebuildReport",
    "rebuild",
]
