"""``python -m mercato_catalog``: serve the catalog until SIGTERM/SIGINT.

``python -m mercato_catalog migrate`` only creates the MongoDB indexes and exits.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mercato_catalog.app import build_app
from mercato_catalog.settings import CatalogSettings
from mercato_common.runtime import run_until_signal
from mercato_common.settings import SettingsError, load_settings
from mercato_common.telemetry import setup_telemetry


async def _serve(settings: CatalogSettings) -> None:
    app = build_app(settings)
    await run_until_signal(app.parts)


async def _migrate(settings: CatalogSettings) -> None:
    app = build_app(settings)
    await app.parts[0].start()
    await app.parts[0].stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "serve"
    if command not in ("serve", "migrate"):
        print(f"usage: python -m mercato_catalog [serve|migrate], not {command!r}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(CatalogSettings, os.environ)
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
        asyncio.run(_serve(settings) if command == "serve" else _migrate(settings))
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
