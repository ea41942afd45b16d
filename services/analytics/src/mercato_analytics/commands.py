"""Analytics' admin command: ``python -m mercato_analytics rebuild [--database NAME] [--force]``
recomputes every aggregate from the topics' retained events (the use case is
``service.rebuild``); in place by default (the consumers must be stopped; the group's offsets
are moved to where the rebuild ended), or into another database (the group is left alone).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from mercato_analytics.consume import EventApplier
from mercato_analytics.domain import Progress
from mercato_analytics.metrics import AnalyticsMetrics
from mercato_analytics.service import GroupActiveError, RebuildReport, rebuild
from mercato_analytics.settings import AnalyticsSettings
from mercato_analytics.store import AnalyticsStore
from mercato_common.kafka import KafkaConnection, kafka_connection
from mercato_common.kit import Command, Service
from mercato_common.runtime import stop_all

__all__ = ["COMMANDS", "rebuild_arguments", "rebuild_store"]


def rebuild_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database", help="rebuild into this database instead (group offsets untouched)"
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild in place even if the group has members"
    )


async def rebuild_store(
    *,
    connection: KafkaConnection,
    store: AnalyticsStore,
    topics: Sequence[str],
    group_id: str,
    commit_group: bool,
    check_group: bool = True,
) -> RebuildReport:
    """Rebuild ``store`` from ``topics`` with the live consumers' handler (whose metrics go to a
    registry of their own: a rebuild is no consumption)."""
    progress = Progress()
    applier = EventApplier(store, metrics=AnalyticsMetrics(CollectorRegistry()), progress=progress)
    return await rebuild(
        connection=connection,
        store=store,
        topics=topics,
        group_id=group_id,
        commit_group=commit_group,
        check_group=check_group,
        apply_record=applier.apply_record,
        progress=progress,
    )


class AdminApp(Protocol):
    """What the command uses of the built service (``mercato_analytics.app.AnalyticsApp``)."""

    @property
    def settings(self) -> AnalyticsSettings: ...
    @property
    def kit(self) -> Service: ...
    @property
    def mongo(self) -> AsyncMongoClient[Any]: ...


async def _rebuild(app: AdminApp, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """The ``rebuild`` command; the exit status (3: refused, the group has members)."""
    settings = app.settings
    database: str | None = args.database
    in_place = database is None or database == settings.mongo_database
    store = AnalyticsStore(app.mongo[database or settings.mongo_database])
    try:
        report = await rebuild_store(
            connection=kafka_connection(settings, client_id="analytics-rebuild"),
            store=store,
            topics=settings.topics,
            group_id=settings.consumer_group,
            commit_group=in_place,
            check_group=in_place and not args.force,
        )
    except GroupActiveError as exc:
        print(f"rebuild refused: {exc}", file=sys.stderr)
        return 3
    finally:
        await stop_all(app.kit.stores)
    print("\n".join(report.lines()))
    return 0


COMMANDS: tuple[Command[Any, Any], ...] = (
    Command(
        "rebuild",
        "recompute the aggregates from the topics' retained events",
        _rebuild,
        rebuild_arguments,
    ),
)
