"""A real auth server (GrpcServer on port 0) over a fresh PostgreSQL database per test.

Backends come from ``mercato_devstack.fixtures`` (local stack, testcontainers or env vars).
Tests talk to the server only through the generated stubs, as the gateway would.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry

from mercato.auth.v1 import auth_pb2, auth_pb2_grpc
from mercato_auth.app import AuthApp, build_app
from mercato_auth.settings import AuthSettings
from mercato_common.runtime import start_all, stop_all
from mercato_devstack.fixtures import (
    backends,
    kafka_bootstrap,
    kafka_topics,
    postgres_admin_dsn,
    postgres_dsn,
    redis_prefix,
    redis_url,
    topic_prefix,
)

__all__ = [
    "ADMIN_EMAIL",
    "ADMIN_PASSWORD",
    "Running",
    "backends",
    "kafka_bootstrap",
    "kafka_topics",
    "postgres_admin_dsn",
    "postgres_dsn",
    "redis_prefix",
    "redis_url",
    "topic_prefix",
]

ADMIN_EMAIL = "root@mercato.test"
ADMIN_PASSWORD = "correct horse battery staple"
ORDERS_SECRET = "orders-client-secret-0123456789"
ISSUER = "https://api.mercato.test"
AUDIENCE = "mercato"


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    retry_delay: int | None
    violations: list[str]
    message: str


def failure(error: grpc.aio.AioRpcError) -> RpcFailure:
    """The status details of a failed call."""
    status = status_pb2.Status()
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status.MergeFromString(value)
    reason, metadata, retry, violations = "", {}, None, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
            assert info.domain == "auth.mercato"
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            retry = retry_info.retry_delay.seconds
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [v.field for v in bad.field_violations]
    return RpcFailure(error.code(), reason, metadata, retry, violations, error.details() or "")


@dataclass
class Running:
    ADMIN_EMAIL = ADMIN_EMAIL
    ADMIN_PASSWORD = ADMIN_PASSWORD
    ORDERS_SECRET = ORDERS_SECRET
    ISSUER = ISSUER
    AUDIENCE = AUDIENCE

    app: AuthApp
    stub: auth_pb2_grpc.AuthServiceAsyncStub
    channel: grpc.aio.Channel
    dsn: str

    @staticmethod
    def bearer(token: str, address: str | None = None) -> list[tuple[str, str]]:
        metadata = [("authorization", f"Bearer {token}")] if token else []
        if address:
            metadata.append(("x-forwarded-for", address))
        return metadata

    async def login(
        self, email: str, password: str, *, address: str = "203.0.113.1", scope: str = ""
    ) -> auth_pb2.LoginResponse:
        return await self.stub.Login(
            auth_pb2.LoginRequest(email=email, password=password, scope=scope),
            metadata=[("x-forwarded-for", address)],
        )

    async def admin_token(self) -> str:
        return (await self.login(ADMIN_EMAIL, ADMIN_PASSWORD)).access_token

    async def register(self, email: str, password: str = "a long enough password") -> auth_pb2.User:
        response = await self.stub.RegisterUser(
            auth_pb2.RegisterUserRequest(email=email, display_name="Ann", password=password)
        )
        return response.user

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows: list[Any] = await conn.fetch(query, *args)
            return rows
        finally:
            await conn.close()

    async def expect_failure(self, call: Any) -> RpcFailure:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return failure(caught.value)


def settings_for(dsn: str, kafka: str, kek: str, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "database_url": dsn,
        "database_pool_min_size": 1,
        "database_pool_max_size": 4,
        "kafka_bootstrap_servers": kafka,
        "outbox_relay_enabled": False,
        "signing_key_kek": kek,
        "grpc_port": 0,
        "shutdown_drain_seconds": 0,
        "shutdown_grace_seconds": 1,
        "token_issuer": ISSUER,
        "token_audience": AUDIENCE,
        # Cheap argon2 for speed; the timing test sets realistic costs itself.
        "argon2_time_cost": 1,
        "argon2_memory_cost_kib": 1024,
        "argon2_parallelism": 1,
        "bootstrap_admin_email": ADMIN_EMAIL,
        "bootstrap_admin_password": ADMIN_PASSWORD,
        "service_clients": [
            {"client_id": "orders", "secret": ORDERS_SECRET, "scopes": ["catalog:reserve"]}
        ],
    }
    values.update(overrides)
    return AuthSettings.model_validate(values)


@asynccontextmanager
async def running_auth(settings: AuthSettings) -> AsyncIterator[Running]:
    app = build_app(settings, registry=CollectorRegistry())
    await start_all(app.parts)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}")
    try:
        yield Running(
            app=app,
            stub=auth_pb2_grpc.AuthServiceStub(channel),
            channel=channel,
            dsn=settings.database_url.get_secret_value(),
        )
    finally:
        await channel.close()
        await stop_all(app.parts)


@pytest.fixture
def make_settings(
    postgres_dsn: str, kafka_bootstrap: str, redis_url: str, redis_prefix: str
) -> Callable[..., AuthSettings]:
    kek = base64.b64encode(os.urandom(32)).decode()  # one per test: restarts keep their keys
    # The revocation list in the stack's Redis, under this test's own prefix.
    redis = {"redis_url": redis_url, "token_revocation_prefix": redis_prefix}

    def make(**overrides: Any) -> AuthSettings:
        return settings_for(postgres_dsn, kafka_bootstrap, kek, **{**redis, **overrides})

    return make


@pytest_asyncio.fixture(loop_scope="session")
async def auth(make_settings: Callable[..., AuthSettings]) -> AsyncIterator[Running]:
    async with running_auth(make_settings()) as running:
        yield running


@pytest.fixture
def start_auth() -> Callable[[AuthSettings], Any]:
    """``async with start_auth(settings) as running``: another server (e.g. other settings)."""
    return running_auth
