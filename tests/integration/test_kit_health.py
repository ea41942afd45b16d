"""The kit's health tells the truth: NOT_SERVING while the service's database is down.

A service built from the kit with a PostgreSQL store; the local stack's PostgreSQL is stopped
and started again (this test runs with the other fault tests, last).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from mercato_common.kit import Service
from mercato_common.runtime import start_all, stop_all
from mercato_common.settings import BaseServiceSettings, PostgresSettings
from mercato_devstack import Stack

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ProbeSettings(BaseServiceSettings, PostgresSettings):
    env_prefix = "MERCATO_PROBE_"


async def wait_for_status(stub: health_pb2_grpc.HealthStub, wanted: int, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    status = None
    while asyncio.get_running_loop().time() < deadline:
        status = (await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)).status
        if status == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health stayed {status}, expected {wanted} within {within}s")


async def test_health_follows_the_database_down_and_up(
    stack_faults: Stack, postgres_dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);\n")
    settings = ProbeSettings(
        service_name="probe",
        grpc_port=0,
        database_url=postgres_dsn,
        database_command_timeout_seconds=1,
        health_check_interval_seconds=0.2,
        health_grace_seconds=0.6,
        shutdown_drain_seconds=0,
        shutdown_grace_seconds=0,
    )
    registry = CollectorRegistry()
    kit = Service(settings, registry=registry)
    kit.postgres(settings, package="probe.store", migrations=tmp_path)
    started = await start_all(kit.parts)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{kit.server.port}")
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        await wait_for_status(stub, SERVING, within=5)
        stack_faults.stop("postgres")
        await wait_for_status(stub, NOT_SERVING, within=10)
        assert registry.get_sample_value("mercato_dependency_up", {"dependency": "postgres"}) == 0
        stack_faults.start("postgres")
        await wait_for_status(stub, SERVING, within=20)
        assert registry.get_sample_value("mercato_dependency_up", {"dependency": "postgres"}) == 1
    finally:
        await channel.close()
        await stop_all(started)
