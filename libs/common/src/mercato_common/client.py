"""Client channels to mercato services.

Every call gets a deadline: the caller's ``timeout`` if given, else the
channel's default, and never more than what is left of the call being served
(deadline propagation). Retries are gRPC's own service-config retry policy,
applied only to methods whose contract marks them ``NO_SIDE_EFFECTS`` or
``IDEMPOTENT`` (a retried non-idempotent call could act twice). Load is spread
round-robin over the resolved addresses (use ``dns:///host:port`` targets with
headless Services). The client span's context travels in W3C headers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from mercato_common.identity import JwksTokenVerifier, auth_jwks_fetcher
from mercato_common.interceptors import incoming_deadline
from mercato_common.tls import ClientTls

if TYPE_CHECKING:
    from mercato_common.settings import TokenSettings

__all__ = ["ClientTls", "create_channel", "retry_service_config", "verifier_from_auth"]

_RETRYABLE = (
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
)


def retry_service_config(
    services: Sequence[str], *, max_attempts: int = 4, initial_backoff: float = 0.1
) -> dict[str, Any]:
    """A gRPC service config: round robin, and retries for idempotent methods of ``services``."""
    retryable = []
    pool = descriptor_pool.Default()
    for service_name in services:
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            if method.GetOptions().idempotency_level in _RETRYABLE:
                retryable.append({"service": service_name, "method": method.name})
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": []}
    if retryable:
        config["methodConfig"].append(
            {
                "name": retryable,
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": f"{initial_backoff}s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
                },
            }
        )
    return config


def create_channel(
    target: str,
    *,
    services: Sequence[str],
    default_timeout: float = 5.0,
    tls: ClientTls | None = None,
    metadata: Callable[[], Awaitable[Sequence[tuple[str, str]]]] | None = None,
    max_message_bytes: int = 4 * 1024 * 1024,
) -> grpc.aio.Channel:
    """A channel to ``target`` for ``services`` (full names: ``mercato.catalog.v1.CatalogService``).

    ``metadata`` supplies per-call metadata such as a client-credentials
    bearer token; it is awaited before every call.
    """
    options = [
        ("grpc.service_config", json.dumps(retry_service_config(services))),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    interceptors = [_CallInterceptor(default_timeout, metadata)]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, tls.credentials(), options=options, interceptors=interceptors
    )


class _CallInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Deadline, trace context, extra metadata and a CLIENT span for each call."""

    def __init__(
        self,
        default_timeout: float,
        metadata: Callable[[], Awaitable[Sequence[tuple[str, str]]]] | None,
    ) -> None:
        self._default_timeout = default_timeout
        self._metadata = metadata
        self._tracer = trace.get_tracer("mercato_common.grpc")

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        service, _, name = method.lstrip("/").partition("/")
        timeout = client_call_details.timeout or self._default_timeout
        deadline = incoming_deadline()
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        with self._tracer.start_as_current_span(
            f"{service}/{name}",
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            metadata = list(client_call_details.metadata or ())
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            metadata.extend(carrier.items())
            if self._metadata is not None:
                metadata.extend(await self._metadata())
            details = grpc.aio.ClientCallDetails(
                method=client_call_details.method,
                timeout=timeout,
                metadata=grpc.aio.Metadata(*metadata),
                credentials=client_call_details.credentials,
                wait_for_ready=client_call_details.wait_for_ready,
            )
            call = await continuation(details, request)
            try:
                await call
            except grpc.aio.AioRpcError as error:
                span.set_attribute("rpc.grpc.status_code", error.code().value[0])
                span.set_status(Status(StatusCode.ERROR, error.code().name))
                raise
            span.set_attribute("rpc.grpc.status_code", 0)
            return call


def verifier_from_auth(
    settings: TokenSettings, *, auth_target: str, tls: ClientTls | None
) -> tuple[JwksTokenVerifier, grpc.aio.Channel]:
    """A verifier fetching auth's JWKS over a channel of its own (the caller closes it on stop)."""
    channel = create_channel(auth_target, services=["mercato.auth.v1.AuthService"], tls=tls)
    return JwksTokenVerifier.from_settings(auth_jwks_fetcher(channel), settings), channel
