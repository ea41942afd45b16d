"""The analytics use cases, between the inbound adapters (api, consume, jobs, commands) and the
domain: ``apply`` (one consumed event's effect, exactly once), ``rollup`` (the dirty minutes
rolled up into minute, hour and day roll-ups), ``queries`` (the RPCs' reads) and ``rebuild``
(every aggregate recomputed from the topics)."""

from mercato_analytics.service.apply import ApplyEvent
from mercato_analytics.service.queries import PositionReader, Queries
from mercato_analytics.service.rebuild import GroupActiveError, RebuildReport, rebuild
from mercato_analytics.service.rollup import MarkDirty, RollUp

__all__ = [
    "ApplyEvent",
    "GroupActiveError",
    "MarkDirty",
    "PositionReader",
    "Queries",
    "RebuildReport",
    "RollUp",
    "rebuild",
]
