"""The gRPC server every service runs: one bootstrap, same behaviour everywhere.

Health (``grpc.health.v1``, the real servicer, status per service), reflection when enabled,
the standard interceptor chain, keepalive and message size limits, optional
TLS or mutual TLS from certificate files, and graceful shutdown on SIGTERM:
health turns NOT_SERVING, a short drain lets load balancers notice, then the
server stops accepting calls and gives in-flight ones a grace period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY, CollectorRegistry

from mercato_common.identity import TokenVerifier
from mercato_common.interceptors import GrpcServerMetrics, default_interceptors
from mercato_common.settings import BaseServiceSettings
from mercato_common.tls import ServerCertificates

__all__ = ["GrpcServer"]

_log = logging.getLogger("mercato.server")


class GrpcServer:
    """A ``grpc.aio`` server with mercato's standard services and interceptors.

    ``add_service(add_fn, servicer, "mercato.catalog.v1.CatalogService")``
    registers a servicer; the name is what health and reflection report.
    """

    def __init__(
        self,
        settings: BaseServiceSettings,
        *,
        error_domain: str,
        token_verifier: TokenVerifier | None = None,
        registry: CollectorRegistry = REGISTRY,
        extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self._settings = settings
        self._service_names: list[str] = []
        self.health = HealthServicer()
        self.metrics = GrpcServerMetrics(registry)
        self._server = grpc.aio.server(
            interceptors=[
                *default_interceptors(
                    domain=error_domain, verifier=token_verifier, metrics=self.metrics
                ),
                *extra_interceptors,
            ],
            options=_server_options(settings),
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port: int | None = None
        self._stopped = asyncio.Event()

    def add_service(
        self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any, name: str
    ) -> None:
        add_to_server(servicer, self._server)
        self._service_names.append(name)

    async def start(self) -> int:
        """Bind, start and report SERVING; returns the bound port."""
        if self._settings.grpc_reflection:
            reflection.enable_server_reflection(
                [
                    *self._service_names,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ],
                self._server,
            )
        address = f"{self._settings.grpc_host}:{self._settings.grpc_port}"
        credentials = _server_credentials(self._settings)
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        if self.port == 0:
            raise RuntimeError(f"cannot bind gRPC server to {address}")
        await self._server.start()
        await self.set_serving(True)
        _log.info("gRPC server listening", extra={"address": address, "port": self.port})
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Report every service (and the server as a whole, ``""``) SERVING or NOT_SERVING.

        Ignored once the graceful stop began: the servicer keeps NOT_SERVING from then on.
        """
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in (*self._service_names, ""):
            await self.health.set(name, status)

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, drain pause, stop with grace. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(self._settings.shutdown_drain_seconds)
        await self._server.stop(self._settings.shutdown_grace_seconds)
        _log.info("gRPC server stopped")


def _server_options(settings: BaseServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Ping idle connections so dead peers are noticed behind NAT/LBs.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Recycle connections so clients re-resolve and spread over new replicas.
        ("grpc.max_connection_age_ms", 300_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
        ("grpc.so_reuseport", 0),
    ]


def _server_credentials(settings: BaseServiceSettings) -> grpc.ServerCredentials | None:
    tls = settings.tls
    if tls is None:
        return None
    # Read again when cert-manager renews the files (mercato_common.tls).
    return ServerCertificates(tls.cert_file, tls.key_file, tls.client_ca_file).credentials()
