"""Typed settings of the catalog, from ``MERCATO_CATALOG_*`` environment variables."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from mercato_common.settings import BaseServiceSettings, MongoSettings, OutboxSettings

__all__ = ["CatalogSettings"]


class CatalogSettings(BaseServiceSettings, MongoSettings, OutboxSettings):
    env_prefix: ClassVar[str] = "MERCATO_CATALOG_"

    service_name: str = Field(default="catalog", min_length=1)
    grpc_port: int = Field(default=50062, ge=0, le=65535)
    metrics_port: int = Field(default=9462, ge=0, le=65535)

    mongo_database: str = Field(default="catalog", min_length=1)
    # Per-document write serialization for servers whose single-document updates are not
    # atomic (FerretDB 1.x): "auto" turns it on when the server is FerretDB.
    write_locks: Literal["auto", "on", "off"] = "auto"

    # Redis read cache (REDIS_URL of the common Redis group; an empty URL disables it).
    redis_prefix: str = "mercato:catalog:"
    cache_ttl_seconds: float = Field(default=60.0, gt=0)
    cache_breaker_seconds: float = Field(default=2.0, ge=0)

    events_topic: str = Field(default="mercato.catalog.events.v1", min_length=1)

    # Reservations.
    reservation_ttl_seconds: float = Field(default=900.0, gt=0)
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    # A step (commit, release, expiry) unchanged this long is finished by the sweeper.
    stuck_after_seconds: float = Field(default=30.0, gt=0)
    # Holds not owned by their order's saga are given back when older than this.
    orphan_grace_seconds: float = Field(default=60.0, ge=0)
    return_marker_retention_seconds: float = Field(default=3600.0, gt=0)

    # StockLow fires when available stock falls below this (0 disables it).
    low_stock_threshold: int = Field(default=5, ge=0)

    # Access tokens: verified here against auth's JWKS.
    auth_target: str = "127.0.0.1:50061"
