"""Wiring: the one place that builds the gateway's objects from its settings.

``build_app`` derives the routes from the compiled descriptors, creates the upstream channels,
the token verifier (JWKS from auth over gRPC), the Redis client and rate limiter, the OpenAPI
document, and the Starlette application::

    GatewayAsgi (lifespan: start and stop the parts)
      -> EdgeMiddleware (request id, trace span, security headers, metrics, access log)
        -> CORSMiddleware (allow-list; only for requests that carry an Origin)
          -> Dispatch: /healthz, /readyz, /status, /openapi.json, /docs
             -> /graphql (GraphEndpoint: the schema derived from the same routes)
             -> every derived route (GatewayEndpoint)

Nothing connects until the application's lifespan starts the parts (``GatewayApp.parts``);
shutdown stops them in reverse order after uvicorn has drained in-flight requests.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from redis.asyncio import Redis
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mercato_common.client import TLS_CHECK_SECONDS
from mercato_common.identity import JwksTokenVerifier, TokenVerifier, auth_jwks_fetcher
from mercato_common.kafka import kafka_connection, kafka_tls_reload
from mercato_common.redis_client import fail_fast_redis
from mercato_common.runtime import (
    CloseOnStop,
    Lifecycle,
    Periodic,
    keep_startup_objects,
    release_startup_objects,
    start_all,
    stop_all,
)
from mercato_common.saturation import SaturationMetrics
from mercato_gateway.auth import Authenticator
from mercato_gateway.edge import (
    REQUEST_ID_KEY,
    ROUTE_KEY,
    Draining,
    EdgeMiddleware,
    HttpMetrics,
)
from mercato_gateway.graph_endpoint import GRAPHQL_PATH, GraphEndpoint
from mercato_gateway.graph_limits import GraphLimits
from mercato_gateway.graph_live import EventFanout
from mercato_gateway.graph_socket import SocketLimits
from mercato_gateway.graphiql import graphiql_handlers
from mercato_gateway.openapi import build_openapi, docs_page
from mercato_gateway.proxy import Deadlines, Gate, GatewayEndpoint, Upstreams, method_not_allowed
from mercato_gateway.ratelimit import RateLimiter, RateLimitMetrics
from mercato_gateway.routing import (
    Route,
    Router,
    discover_methods,
    load_contract_modules,
    routes_from_methods,
)
from mercato_gateway.settings import GatewaySettings

__all__ = ["Dispatch", "GatewayApp", "GatewayAsgi", "build_app", "derive_routes"]

_log = logging.getLogger("mercato_gateway")

#: Deadline of a GetJwks call to auth: a slow auth must not hold requests with new kids long.
JWKS_TIMEOUT_SECONDS = 3.0

_CORS_HEADERS = (
    "authorization",
    "content-type",
    "idempotency-key",
    "if-none-match",
    "x-request-id",
    "traceparent",
    "tracestate",
)
_EXPOSED_HEADERS = (
    "etag",
    "x-request-id",
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "www-authenticate",
    "traceresponse",
)


def derive_routes() -> list[Route]:
    """Every ``google.api.http``-annotated RPC of the generated contracts, as routes."""
    return routes_from_methods(discover_methods(load_contract_modules()))


class UpstreamStatus:
    """Each upstream's gRPC health, for ``GET /status`` and ``gateway_upstream_up{upstream}``.

    Checked on demand (cached ``cache_seconds``) and every ``interval`` seconds in the
    background, so the gauge stays current without traffic. An upstream's state never decides
    the gateway's own readiness: one sick service must not take every gateway pod out of its
    Service (its routes answer 503 by themselves).
    """

    def __init__(
        self,
        upstreams: Upstreams,
        *,
        cache_seconds: float,
        timeout: float,
        interval: float,
        registry: CollectorRegistry,
    ) -> None:
        self._upstreams = upstreams
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._cached: tuple[float, dict[str, bool]] | None = None
        self._lock = asyncio.Lock()
        self._up = Gauge(
            "gateway_upstream_up",
            "Whether the upstream service reports SERVING (1) or not (0) to the gateway.",
            ["upstream"],
            registry=registry,
            multiprocess_mode="min",
        )
        self.refresher = Periodic("gateway-upstreams", self.check, interval=interval, logger=_log)

    async def check(self) -> dict[str, bool]:
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self._cache_seconds:
                return self._cached[1]
            health = await self._upstreams.health(self._timeout)
            for key, ok in health.items():
                self._up.labels(key).set(1 if ok else 0)
            self._cached = (now, health)
            return health


@dataclass(eq=False)
class Readiness:
    """``/readyz``: the gateway's own readiness: not draining, and Redis when it is required
    (the rate limiter fails closed); upstreams are reported by :class:`UpstreamStatus`."""

    limiter: RateLimiter | None
    _: KW_ONLY
    redis_required: bool
    draining: Draining

    def drain(self) -> None:
        """The process is going away (SIGTERM, then lifespan shutdown): not ready from now."""
        self.draining.active = True

    async def check(self) -> tuple[bool, dict[str, str]]:
        ready = True
        checks: dict[str, str] = {"gateway": "ok"}
        if self.limiter is not None:
            redis_ok = await self.limiter.ping()
            checks["redis"] = "ok" if redis_ok else "down"
            if self.redis_required and not redis_ok:
                ready = False
        if self.draining.active:
            ready = False
            checks["gateway"] = "draining"
        return ready, checks


#: A fixed path's handler: the response to send (awaited when it is a coroutine).
Handler = Callable[[], Response | Awaitable[Response]]
_FIXED_METHODS = ("GET", "HEAD")


class Dispatch:
    """The fixed paths (health, status, the OpenAPI document, docs) by exact path, GET and HEAD
    only; the endpoints of their own paths (``/graphql``) by exact path; every other request
    goes to ``default`` (the derived routes)."""

    def __init__(
        self,
        fixed: Mapping[str, Handler],
        *,
        endpoints: Mapping[str, ASGIApp],
        default: GatewayEndpoint,
    ) -> None:
        self._fixed = dict(fixed)
        self._endpoints = dict(endpoints)
        self._default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        endpoint = self._endpoints.get(path)
        if scope["type"] == "websocket" and endpoint is None:
            await send({"type": "websocket.close", "code": 1008})  # the upgrade gets a 403
            return
        handler = self._fixed.get(path)
        if handler is None:
            await (endpoint or self._default)(scope, receive, send)
            return
        scope[ROUTE_KEY] = path
        if scope["method"] not in _FIXED_METHODS:
            error = method_not_allowed(scope["method"], _FIXED_METHODS)
            await self._default.refuse(send, error, scope.get(REQUEST_ID_KEY))
            return
        response = handler()
        if inspect.isawaitable(response):
            response = await response
        await response(scope, receive, send)


class GatewayAsgi:
    """The gateway's ASGI application: ``app`` for HTTP, the lifespan protocol for start/stop.

    A plain ASGI callable rather than a Starlette application: the gateway has one routing
    table of its own (``Router``) and five fixed paths, and Starlette's router and its two
    exception middlewares cost about a tenth of the CPU of a proxied request (bench profile).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        on_startup: Callable[[], Awaitable[None]],
        on_shutdown: Callable[[], Awaitable[None]],
    ) -> None:
        self.app = app
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._on_startup()
                except Exception as exc:
                    _log.exception("gateway start failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self._on_shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


@dataclass
class GatewayApp:
    settings: GatewaySettings
    routes: list[Route]
    router: Router
    upstreams: Upstreams
    verifier: TokenVerifier
    limiter: RateLimiter | None
    openapi: dict[str, Any]
    readiness: Readiness
    upstream_status: UpstreamStatus
    asgi: GatewayAsgi
    registry: CollectorRegistry
    #: What GraphQL subscriptions read (None: the contracts have no live RPC).
    live: EventFanout | None = None
    parts: list[Lifecycle] = field(default_factory=list)


def build_app(
    settings: GatewaySettings,
    *,
    token_verifier: TokenVerifier | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> GatewayApp:
    """Build every part of the gateway; nothing connects until the lifespan starts them.

    Its metrics go to ``registry``, served on the metrics port (never on the public one).
    """
    routes = derive_routes()
    router = Router(routes)
    upstreams = Upstreams(
        settings.upstreams,
        routes,
        tls=settings.client_tls,
        max_message_bytes=settings.max_message_bytes,
    )
    if token_verifier is None:
        token_verifier = JwksTokenVerifier.from_settings(
            auth_jwks_fetcher(lambda: upstreams.channel("auth"), timeout=JWKS_TIMEOUT_SECONDS),
            settings,
            min_refresh_seconds=settings.jwks_min_refresh_seconds,
        )
    authenticator = Authenticator(token_verifier, realm=settings.auth_realm)
    redis: Redis | None = None
    limiter: RateLimiter | None = None
    if settings.rate_limit_enabled:
        if settings.redis_url:
            redis = fail_fast_redis(settings.redis_url, timeout_ms=settings.redis_timeout_ms)
        limiter = RateLimiter(
            redis,
            policies={"default": settings.rate_limit_default, "strict": settings.rate_limit_strict},
            prefix=settings.redis_prefix,
            on_redis_error=settings.rate_limit_on_redis_error,
            breaker_seconds=settings.redis_breaker_seconds,
            metrics=RateLimitMetrics(registry),
        )
    gate = Gate(
        upstreams,
        authenticator,
        limiter,
        deadlines=Deadlines(
            read=settings.read_deadline_seconds,
            write=settings.write_deadline_seconds,
            overrides=settings.deadline_overrides,
        ),
        trusted_proxy_hops=settings.trusted_proxy_hops,
    )
    endpoint = GatewayEndpoint(router, gate, max_body_bytes=settings.max_body_bytes)
    kafka = kafka_connection(settings, client_id="mercato-gateway")
    graph = GraphEndpoint(
        routes,
        gate,
        max_body_bytes=settings.max_body_bytes,
        # Each limit is the setting of its name prefixed ``graphql_`` (graphql_max_depth...).
        limits=GraphLimits(
            **{
                limit.name: getattr(settings, f"graphql_{limit.name}")
                for limit in fields(GraphLimits)
            }
        ),
        persisted_queries=settings.graphql_persisted_queries,
        kafka=kafka,
        topic_prefix=settings.kafka_topic_prefix,
        live_refresh_seconds=settings.graphql_live_refresh_seconds,
        socket_limits=SocketLimits(
            max_per_user=settings.graphql_ws_max_connections_per_user,
            max_subscriptions=settings.graphql_ws_max_subscriptions,
            init_timeout=settings.graphql_ws_init_timeout_seconds,
            idle_timeout=settings.graphql_ws_idle_timeout_seconds,
            token_check_interval=settings.graphql_ws_token_check_seconds,
        ),
        registry=registry,
    )
    document = build_openapi(
        routes, version=settings.service_version, server_url=settings.public_url
    )
    openapi_body = json.dumps(document, separators=(",", ":")).encode()
    docs_body = docs_page(document)
    draining = Draining()
    readiness = Readiness(
        limiter,
        redis_required=settings.rate_limit_on_redis_error == "closed",
        draining=draining,
    )
    upstream_status = UpstreamStatus(
        upstreams,
        cache_seconds=settings.readiness_cache_seconds,
        timeout=settings.readiness_timeout_seconds,
        interval=settings.upstream_check_interval_seconds,
        registry=registry,
    )

    def healthz() -> Response:
        return JSONResponse({"status": "ok"}, headers={"cache-control": "no-store"})

    async def readyz() -> Response:
        ready, checks = await readiness.check()
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
            headers={"cache-control": "no-store"},
        )

    async def status() -> Response:
        health = await upstream_status.check()
        serving = all(health.values())
        return JSONResponse(
            {
                "status": "ok" if serving else "degraded",
                "upstreams": {
                    key: "SERVING" if ok else "NOT_SERVING" for key, ok in health.items()
                },
            },
            status_code=200 if serving else 503,
            headers={"cache-control": "no-store"},
        )

    def openapi() -> Response:
        return Response(
            openapi_body, media_type="application/json", headers={"cache-control": "no-cache"}
        )

    def docs() -> Response:
        return HTMLResponse(
            docs_body,
            headers={
                "content-security-policy": (
                    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
                ),
                "cache-control": "no-cache",
            },
        )

    parts: list[Lifecycle] = [
        SaturationMetrics(registry),
        # Redis may be down at start: the limiter falls back, so only close it on stop.
        CloseOnStop(redis.aclose if redis is not None else None),
        # The revocation list's Redis client (the verifier's own).
        CloseOnStop(
            token_verifier.close if isinstance(token_verifier, JwksTokenVerifier) else None
        ),
        upstreams,
        upstream_status.refresher,
    ]
    if graph.live is not None:
        parts.append(graph.live)
        reload = kafka_tls_reload(kafka, settings, interval=TLS_CHECK_SECONDS, logger=_log)
        if reload is not None:
            parts.append(reload)

    started: list[Lifecycle] = []  # what start_all started, for stop_all

    async def start() -> None:
        started.extend(await start_all(parts))
        keep_startup_objects()
        _log.info("gateway started", extra={"routes": len(routes)})

    async def stop() -> None:
        readiness.drain()
        await graph.socket.close_all()  # clients reconnect to another replica
        await stop_all(started)
        release_startup_objects()

    fixed: dict[str, Handler] = {
        "/healthz": healthz,
        "/readyz": readyz,
        "/status": status,
        "/openapi.json": openapi,
        "/docs": docs,
    }
    if settings.graphiql_assets_dir is not None:
        fixed.update(graphiql_handlers(settings.graphiql_assets_dir))
    dispatch = Dispatch(
        fixed,
        endpoints={GRAPHQL_PATH: graph},
        # Every other path (any bytes, newlines included) goes to the derived routes.
        default=endpoint,
    )
    cors = CORSMiddleware(
        dispatch,
        allow_origins=settings.cors_allow_origins,
        allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
        allow_headers=_CORS_HEADERS,
        expose_headers=_EXPOSED_HEADERS,
        max_age=settings.cors_max_age_seconds,
    )
    asgi = GatewayAsgi(
        EdgeMiddleware(
            dispatch,
            cross_origin=cors,
            metrics=HttpMetrics(registry),
            hsts=settings.tls_cert_file is not None,
            draining=draining,
        ),
        on_startup=start,
        on_shutdown=stop,
    )
    return GatewayApp(
        settings=settings,
        routes=routes,
        router=router,
        upstreams=upstreams,
        verifier=token_verifier,
        limiter=limiter,
        openapi=document,
        readiness=readiness,
        upstream_status=upstream_status,
        asgi=asgi,
        registry=registry,
        live=graph.live,
        parts=parts,
    )
