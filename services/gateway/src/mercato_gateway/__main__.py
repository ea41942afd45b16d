"""``python -m mercato_gateway [serve | openapi]``: run the gateway, or print its OpenAPI document.

The only place that reads the environment. ``serve`` runs uvicorn (uvloop, httptools) until
SIGTERM/SIGINT. Then the gateway drains (:class:`DrainingServer`: not ready, answers close their
connections, still serving, for ``SHUTDOWN_DRAIN_SECONDS``); uvicorn stops accepting
connections, gives in-flight requests ``SHUTDOWN_GRACE_SECONDS`` and runs the application's
shutdown (channels, Redis). With ``WORKERS`` > 1 uvicorn's own supervisor handles the signal and
there is no drain: the chart's preStop pause covers it.

With ``WORKERS`` > 1, uvicorn starts that many worker processes, each building its own
application through :func:`worker_app`; metrics then use prometheus_client's multiprocess mode
(a temporary directory shared by the workers), served by this supervisor process on the
metrics port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from mercato_common.client import TLS_CHECK_SECONDS
from mercato_common.settings import SettingsError, load_settings
from mercato_common.telemetry import telemetry_for
from mercato_common.tls import ContextCertificates
from mercato_gateway.app import build_app, derive_routes
from mercato_gateway.openapi import build_openapi
from mercato_gateway.settings import GatewaySettings

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_log = logging.getLogger("mercato_gateway")


def _uvicorn_options(settings: GatewaySettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,  # the gateway writes its own JSON access log
        "log_config": None,  # keep the JSON logging configured by setup_telemetry
        "proxy_headers": False,  # X-Forwarded-For is handled with TRUSTED_PROXY_HOPS
        "server_header": False,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_seconds) or None,
    }
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        options["ssl_certfile"] = str(settings.tls_cert_file)
        options["ssl_keyfile"] = str(settings.tls_key_file)
        options["ssl_context_factory"] = reloading_ssl_context
    return options


# The reload loops of this process's listeners (referenced: a task must outlive its creator).
_tls_reloads: set[asyncio.Task[None]] = set()


def reloading_ssl_context(
    config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """uvicorn's SSL context, with renewed certificate files loaded into it in place (looked at
    every ``TLS_CHECK_SECONDS``): new connections get the new certificate, as cert-manager
    renews it, without a restart. Called by each worker process while it loads its config."""
    context = default()
    certificates = ContextCertificates(
        context,
        cert_file=Path(config.ssl_certfile) if config.ssl_certfile else None,
        key_file=Path(config.ssl_keyfile) if config.ssl_keyfile else None,
        what="HTTPS",
    )

    async def watch() -> None:
        while True:
            await asyncio.sleep(TLS_CHECK_SECONDS)
            certificates.reload_if_changed()

    try:
        task = asyncio.get_running_loop().create_task(watch(), name="https-certificate-reload")
    except RuntimeError:  # loaded outside a running loop: nothing to watch from
        return context
    _tls_reloads.add(task)
    task.add_done_callback(_tls_reloads.discard)
    return context


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before it stops: the first SIGTERM/SIGINT turns the gateway not
    ready (``/readyz`` 503, answers with ``Connection: close``) and keeps serving for
    ``drain_seconds``, so that load balancers see it go and clients reconnect elsewhere; only
    then does uvicorn close the listener and give in-flight requests their grace. A second
    signal stops at once."""

    def __init__(self, config: uvicorn.Config, *, drain: Callable[[], None], seconds: float):
        super().__init__(config)
        self._drain = drain
        self._drain_seconds = seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False
        self._ticked = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    async def main_loop(self) -> None:
        # uvicorn's own loop wakes every 0.1 s to see whether to stop; this one once a second
        # (what its Date header needs: each call below refreshes it) and at once on a stop.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ticked.wait(), 1.0)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._ticked.set)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if self._signalled or self._drain_seconds <= 0 or loop is None:
            self._stop(sig, frame)
            return
        self._signalled = True
        self._drain()
        _log.info("draining", extra={"seconds": self._drain_seconds})
        loop.call_soon_threadsafe(loop.call_later, self._drain_seconds, self._stop, sig, None)


def worker_app() -> Any:
    """Application factory of a worker process (``WORKERS`` > 1)."""
    settings = load_settings(GatewaySettings, os.environ)
    # Each worker serves requests, so each needs the tracer provider (spans, trace ids in the
    # logs); the supervisor serves the metrics endpoint, so none here.
    telemetry_for(settings, serve_metrics=False)
    return build_app(settings).asgi


def _serve(settings: GatewaySettings, environ: Mapping[str, str]) -> int:
    options = _uvicorn_options(settings)
    if settings.workers == 1:
        telemetry = telemetry_for(settings)
        try:
            app = build_app(settings)
            server = DrainingServer(
                uvicorn.Config(app.asgi, **options),
                drain=app.readiness.drain,
                seconds=settings.shutdown_drain_seconds,
            )
            server.run()
        finally:
            telemetry.shutdown()
        return 0
    from prometheus_client import CollectorRegistry, multiprocess

    with tempfile.TemporaryDirectory(prefix="mercato-gateway-metrics-") as directory:
        os.environ[_MULTIPROC_ENV] = environ.get(_MULTIPROC_ENV) or directory
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        telemetry = telemetry_for(settings, registry=registry)
        try:
            uvicorn.run(
                "mercato_gateway.__main__:worker_app",
                factory=True,
                workers=settings.workers,
                **options,
            )
        finally:
            telemetry.shutdown()
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "serve"
    if command not in ("serve", "openapi"):
        print(f"usage: python -m mercato_gateway [serve|openapi], not {command!r}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(GatewaySettings, environ)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    if command == "openapi":
        document = build_openapi(
            derive_routes(), version=settings.service_version, server_url=settings.public_url
        )
        print(json.dumps(document, indent=2))
        return 0
    return _serve(settings, environ)


if __name__ == "__main__":
    raise SystemExit(main())
