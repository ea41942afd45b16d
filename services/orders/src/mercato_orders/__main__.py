"""``python -m mercato_orders [serve | migrate | reconcile]``.

The only place that reads the environment. ``serve`` (the default) runs the service until
SIGTERM; ``migrate`` applies the database migrations and exits; ``reconcile`` runs one full
reconciliation round (abandoned creates, owed releases/refunds, orphan and lapsed reservations)
and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry

from mercato_common.runtime import Lifecycle, run_until_signal, start_all, stop_all
from mercato_common.settings import SettingsError, load_settings
from mercato_common.telemetry import configure_logging, setup_telemetry
from mercato_orders.app import build_app
from mercato_orders.settings import OrdersSettings
from mercato_orders.store import TRACER_NAME, Database, migrations_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mercato_orders", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service (default)")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser("reconcile", help="run one full reconciliation round and exit")
    return parser


async def _serve(settings: OrdersSettings) -> None:
    app = build_app(settings)
    await run_until_signal(app.parts)


async def _migrate(settings: OrdersSettings) -> None:
    database = Database(
        settings.database_url.get_secret_value(),
        tracer_name=TRACER_NAME,
        migrations=migrations_dir(),
        min_size=1,
        max_size=2,
        command_timeout=settings.database_command_timeout_seconds,
        migrate_on_start=False,
    )
    await database.start()
    try:
        async with database.pool.acquire() as conn:
            applied = await database.run_migrations(conn)
        print(f"applied {len(applied)} migration(s)")
    finally:
        await database.stop()


async def _reconcile(settings: OrdersSettings) -> None:
    app = build_app(settings, registry=CollectorRegistry())
    parts: list[Lifecycle] = [app.database, app.channels, app.service]
    await start_all(parts)
    try:
        report = await app.reconciler.run_once(full=True)
        print(report)
    finally:
        await stop_all(parts)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(OrdersSettings, environ)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    command = args.command or "serve"
    if command == "serve":
        telemetry = setup_telemetry(
            service=settings.service_name,
            version=settings.service_version,
            log_level=settings.log_level,
            otlp_endpoint=settings.otlp_endpoint,
            metrics_port=settings.metrics_port,
        )
        try:
            asyncio.run(_serve(settings))
        finally:
            telemetry.shutdown()
        return 0
    configure_logging(settings.service_name, settings.service_version, settings.log_level)
    if command == "migrate":
        asyncio.run(_migrate(settings))
    elif command == "reconcile":
        asyncio.run(_reconcile(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
