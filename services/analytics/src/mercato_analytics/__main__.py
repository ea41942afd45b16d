"""``python -m mercato_analytics [serve|migrate|rebuild]``.

* ``serve`` (default): consume the event topics and serve the queries until SIGTERM/SIGINT.
* ``migrate``: create the MongoDB indexes and exit.
* ``rebuild [--database NAME] [--force]``: recompute every aggregate from the topics' retained
  events (see :mod:`mercato_analytics.rebuild`); in place by default (the consumers must be
  stopped; the group's offsets are moved to where the rebuild ended), or into another database.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from mercato_analytics.app import build_app, mongo_client
from mercato_analytics.rebuild import GroupActiveError, rebuild
from mercato_analytics.settings import AnalyticsSettings
from mercato_analytics.store import AnalyticsStore
from mercato_common.kafka import KafkaConnection
from mercato_common.runtime import run_until_signal
from mercato_common.settings import SettingsError, load_settings
from mercato_common.telemetry import setup_telemetry

log = logging.getLogger("mercato_analytics")


async def _serve(settings: AnalyticsSettings) -> None:
    app = build_app(settings)
    await run_until_signal(app.parts)


async def _migrate(settings: AnalyticsSettings) -> None:
    app = build_app(settings)
    await app.parts[0].start()
    await app.parts[0].stop()


async def _rebuild(settings: AnalyticsSettings, database: str | None, force: bool) -> int:
    client = mongo_client(settings)
    in_place = database is None or database == settings.mongo_database
    store = AnalyticsStore(client[database or settings.mongo_database])
    try:
        report = await rebuild(
            connection=KafkaConnection(
                bootstrap_servers=settings.kafka_bootstrap_servers, client_id="analytics-rebuild"
            ),
            store=store,
            topics=settings.topics,
            group_id=settings.consumer_group,
            commit_group=in_place,
            check_group=in_place and not force,
        )
    except GroupActiveError as exc:
        print(f"rebuild refused: {exc}", file=sys.stderr)
        return 3
    finally:
        await client.close()
    print("\n".join(report.lines()))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mercato_analytics")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="consume and serve (the default)")
    commands.add_parser("migrate", help="create the indexes and exit")
    rebuild_parser = commands.add_parser("rebuild", help="recompute the aggregates from Kafka")
    rebuild_parser.add_argument(
        "--database", help="rebuild into this database instead (group offsets untouched)"
    )
    rebuild_parser.add_argument(
        "--force", action="store_true", help="rebuild in place even if the group has members"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command or "serve"
    try:
        settings = load_settings(AnalyticsSettings, os.environ)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    telemetry = setup_telemetry(
        service=settings.service_name,
        version=settings.service_version,
        log_level=settings.log_level,
        otlp_endpoint=settings.otlp_endpoint,
        metrics_port=settings.metrics_port if command == "serve" else None,
    )
    try:
        if command == "serve":
            asyncio.run(_serve(settings))
        elif command == "migrate":
            asyncio.run(_migrate(settings))
        else:
            return asyncio.run(_rebuild(settings, args.database, args.force))
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
