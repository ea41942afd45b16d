"""The gateway's settings, from ``MERCATO_GATEWAY_*`` environment variables.

Read once in ``__main__`` with ``load_settings(GatewaySettings, os.environ)``. The gateway is an
HTTP server, not a gRPC one, so it extends :class:`ServiceTlsSettings` (the TLS files shared
with every service) with its own listener, upstream, token, rate-limit and edge settings, and
the kit's Kafka group (GraphQL subscriptions read the events topics).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mercato_common.settings import KafkaSettings, ServiceTlsSettings, TokenSettings

__all__ = ["GatewaySettings", "RateLimitPolicy"]


class RateLimitPolicy(BaseModel):
    """A token bucket: ``burst`` requests at once, refilled at ``rate`` per second."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float = Field(gt=0)
    burst: int = Field(ge=1)


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            raise ValueError("must be JSON") from None
    return value


class GatewaySettings(ServiceTlsSettings, TokenSettings, KafkaSettings):
    env_prefix: ClassVar[str] = "MERCATO_GATEWAY_"

    service_name: str = Field(default="gateway", min_length=1)
    service_version: str = "0.1.0"
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    otlp_endpoint: str | None = Field(default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    # "otlp": log records are also exported over OTLP to that endpoint (redacted like stdout).
    logs_exporter: Literal["none", "otlp"] = Field(
        default="none", validation_alias="OTEL_LOGS_EXPORTER"
    )

    # HTTP listener (uvicorn with uvloop and httptools).
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    metrics_port: int = Field(default=9460, ge=0, le=65535)
    # Metrics are served on their own port only, never on the public one; loopback unless told
    # (the chart binds all interfaces so that Prometheus can scrape the pods).
    metrics_host: str = "127.0.0.1"
    # Worker processes; above 1, metrics use prometheus_client's multiprocess mode.
    workers: int = Field(default=1, ge=1, le=64)
    # After SIGTERM: /readyz answers 503 and every answer says `Connection: close` for this
    # long while requests are still served (load balancers and clients move away), then the
    # listener closes and in-flight requests get SHUTDOWN_GRACE_SECONDS to finish.
    shutdown_drain_seconds: float = Field(default=2.0, ge=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # TLS (inherited): TLS_CERT_FILE/TLS_KEY_FILE terminate HTTPS (deployments without an
    # ingress) and are the client certificate towards upstreams; TLS_CA_FILE turns TLS on for
    # the upstream gRPC channels.

    # Upstream gRPC services, by the service part of their proto package (mercato.<name>.v1).
    auth_target: str = "127.0.0.1:50061"
    catalog_target: str = "127.0.0.1:50062"
    orders_target: str = "127.0.0.1:50063"
    analytics_target: str = "127.0.0.1:50064"
    max_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0)

    # Per-request deadlines passed to gRPC: reads (NO_SIDE_EFFECTS), everything else, and
    # overrides by full method ("mercato.orders.v1.OrdersService/CreateOrder": 20), JSON.
    read_deadline_seconds: float = Field(default=5.0, gt=0)
    write_deadline_seconds: float = Field(default=15.0, gt=0)
    deadline_overrides: dict[str, float] = Field(default_factory=dict)

    # Access tokens, verified against auth's JWKS (GetJwks over gRPC).
    jwks_min_refresh_seconds: float = Field(default=30.0, ge=0)
    auth_realm: str = Field(default="mercato", pattern=r'^[^"\\]+$')

    # Rate limiting: token buckets in Redis (REDIS_URL; one Lua script, shared by every replica).
    redis_prefix: str = "mercato:gateway:"
    rate_limit_enabled: bool = True
    # "default": every route; "strict": public writes (register, login, token, revoke).
    rate_limit_default: RateLimitPolicy = RateLimitPolicy(rate=50, burst=100)
    rate_limit_strict: RateLimitPolicy = RateLimitPolicy(rate=2, burst=10)
    # When Redis fails: "local" = per-process buckets (default), "open" = no limit,
    # "closed" = refuse (503). Redis is skipped for `redis_breaker_seconds` after a failure.
    rate_limit_on_redis_error: Literal["local", "open", "closed"] = "local"
    redis_breaker_seconds: float = Field(default=2.0, ge=0)

    # Edge behaviour.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    cors_allow_origins: tuple[str, ...] = ()
    cors_max_age_seconds: int = Field(default=600, ge=0)
    # Proxies in front of the gateway that append to X-Forwarded-For (0: the peer is the client).
    trusted_proxy_hops: int = Field(default=0, ge=0, le=10)
    # Public URL of the gateway, used as the OpenAPI server URL (empty: relative).
    public_url: str = ""
    # Seconds a /readyz result is reused (each check calls every upstream's health service).
    readiness_cache_seconds: float = Field(default=1.0, ge=0)
    # How often every upstream's health is read for gateway_upstream_up (GET /status reads it
    # on demand too, cached readiness_cache_seconds).
    upstream_check_interval_seconds: float = Field(default=10.0, gt=0)
    readiness_timeout_seconds: float = Field(default=1.0, gt=0)

    # GraphQL (POST /graphql): what one request may ask for, refused before anything runs
    # (docs/gateway.md, "GraphQL"). Introspection off hides the schema from clients (the SDL is
    # published in the repository instead).
    graphql_introspection: bool = True
    graphql_max_depth: int = Field(default=10, ge=1)
    graphql_max_aliases: int = Field(default=30, ge=0)
    graphql_max_root_fields: int = Field(default=10, ge=1)
    graphql_max_cost: int = Field(default=5000, ge=1)
    graphql_max_batch: int = Field(default=10, ge=1)
    graphql_max_tokens: int = Field(default=5000, ge=100)
    # Automatic persisted queries kept per process (0: not supported).
    graphql_persisted_queries: int = Field(default=1000, ge=0)
    # GraphQL subscriptions (WebSocket, graphql-transport-ws on /graphql): connections per user
    # (per client address without a token) and process, subscriptions per connection, seconds
    # for connection_init, seconds a connection may stay without a subscription or a message,
    # and seconds between re-reads of a watched resource when no event came (a safety net for
    # events the process missed, e.g. while Kafka was unreachable).
    graphql_ws_max_connections_per_user: int = Field(default=5, ge=1)
    graphql_ws_max_subscriptions: int = Field(default=10, ge=1)
    graphql_ws_init_timeout_seconds: float = Field(default=10.0, gt=0)
    graphql_ws_idle_timeout_seconds: float = Field(default=300.0, gt=0)
    # An open connection's token is verified again this often (a revoked one closes it).
    graphql_ws_token_check_seconds: float = Field(default=5.0, gt=0)
    graphql_live_refresh_seconds: float = Field(default=60.0, gt=0)
    # Development only: the node_modules of services/gateway/graphiql; when set, GraphiQL is
    # served at GET /graphiql (make run sets it; deployments leave it unset).
    graphiql_assets_dir: Path | None = None
    # Prefix of the events topics' names (the chart's kafka.prefix): the topic read is the
    # prefix and the name the contract gives ((mercato.api.v1.live).topic).
    kafka_topic_prefix: str = ""

    @field_validator("deadline_overrides", "rate_limit_default", "rate_limit_strict", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        return _json(value)

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def upstreams(self) -> dict[str, str]:
        """gRPC target of each service, keyed by the ``<name>`` of ``mercato.<name>.v1``."""
        return {
            "auth": self.auth_target,
            "catalog": self.catalog_target,
            "orders": self.orders_target,
            "analytics": self.analytics_target,
        }
