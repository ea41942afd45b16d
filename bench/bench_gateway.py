"""The gateway's cost: `GET /v1/products/{sku}` through it vs GetProduct directly over gRPC.

Run after `make stack-up` (or let it start the local stack): `python bench/bench_gateway.py`. Writes
bench/results/gateway.json and prints a table. In one run, at the same concurrency and against the
same product: a real catalog server (gRPC on a free port, Redis cache, FerretDB) called (1) directly
through a gRPC stub with a bearer token, and (2) over HTTP/1.1 keep-alive through a real gateway
process (`python -m mercato_gateway`: uvicorn, uvloop, httptools, one worker) that verifies the same
token (JWKS over gRPC from a stand-in auth server that only serves GetJwks), checks the scope,
applies the Redis rate limit (one Lua call per lease), transcodes and calls the catalog; (3) the
same with rate limiting off. The HTTP client is a minimal raw HTTP/1.1 client (one keep-alive
connection per worker) so that client overhead stays comparable to the gRPC stub's. The catalog and
the load generator share this process; the gateway has its own. Two cores: the figures are
end-to-end costs on one machine, not capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from mercato.auth.v1 import auth_pb2, auth_pb2_grpc
from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato.type.v1 import money_pb2
from mercato_catalog.app import build_app
from mercato_catalog.settings import CatalogSettings
from mercato_common.identity import JwksTokenVerifier
from mercato_common.runtime import start_all, stop_all
from mercato_devstack.testing import (
    open_backends,
    temporary_mongo_database,
    temporary_redis_prefix,
    temporary_topics,
)

RESULTS = Path(__file__).resolve().parent / "results" / "gateway.json"
ISSUER, AUDIENCE, SKU = "http://127.0.0.1:8080", "mercato", "BENCH-GW-0001"


class Keys:
    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()

    async def jwks(self) -> dict[str, Any]:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": "bench", "use": "sig", "alg": "EdDSA"}]}

    def token(self, scope: str) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "bench",
            "iat": now,
            "exp": now + 3600,
            "jti": uuid.uuid4().hex,
            "scope": scope,
        }
        return jwt.encode(
            claims, self.private, algorithm="EdDSA", headers={"kid": "bench", "typ": "at+jwt"}
        )


class JwksOnlyAuth(auth_pb2_grpc.AuthServiceServicer):
    """Stands in for auth: the gateway only needs GetJwks to verify tokens."""

    def __init__(self, keys: Keys) -> None:
        self._keys = keys

    async def GetJwks(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC name
        document = await self._keys.jwks()
        return auth_pb2.GetJwksResponse(
            keys=[auth_pb2.JsonWebKey(**key) for key in document["keys"]]
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RawHttp:
    """One keep-alive HTTP/1.1 connection; GET and JSON POST; reads Content-Length bodies."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self._host, self._port = host, port
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        request = f"GET {path} HTTP/1.1\r\nHost: {self._host}\r\n{self._headers}\r\n"
        return await self._exchange(request.encode())

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\n{self._headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return await self._exchange(request.encode() + body)

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        body = await self._reader.readexactly(length)
        return status, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()


async def _measure(
    make_call: Callable[[int], Callable[[], Awaitable[None]]], requests: int, concurrency: int
) -> dict[str, float]:
    """``requests`` calls from ``concurrency`` workers; latency of each, throughput of all."""
    calls = [make_call(i) for i in range(concurrency)]
    for call in calls:  # warm-up: connections, caches, JIT-ish paths
        for _ in range(max(20, requests // (concurrency * 10))):
            await call()
    latencies: list[float] = []
    remaining = requests

    async def worker(call: Callable[[], Awaitable[None]]) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(call) for call in calls))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3),
    }


async def _start_gateway(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mercato_gateway",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client = RawHttp("127.0.0.1", port, {})
            status, _ = await client.get("/healthz")
            await client.close()
            if status == 200:
                return process
        except OSError:
            await asyncio.sleep(0.1)
    process.kill()
    raise RuntimeError("the gateway did not start")


async def _stop(process: asyncio.subprocess.Process) -> None:
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 15)
    except TimeoutError:
        process.kill()
        await process.wait()


async def run(requests: int, concurrency: int) -> dict[str, Any]:
    keys = Keys()
    token = keys.token("catalog:read catalog:write")
    with open_backends() as backends:
        async with (
            temporary_mongo_database(backends.mongo_uri, prefix="bench") as db_name,
            temporary_redis_prefix(backends.redis_url, prefix="bench") as redis_prefix,
            temporary_topics(backends.kafka_bootstrap) as topics,
        ):
            topic = await topics.create("mercato.catalog.events.v1")
            verifier = JwksTokenVerifier(keys.jwks, issuer=ISSUER, audience=AUDIENCE)
            catalog = build_app(
                CatalogSettings(
                    grpc_port=0,
                    mongo_uri=backends.mongo_uri,
                    mongo_database=db_name,
                    redis_url=backends.redis_url,
                    redis_prefix=redis_prefix + "catalog:",
                    kafka_bootstrap_servers=backends.kafka_bootstrap,
                    events_topic=topic,
                    shutdown_drain_seconds=0,
                    shutdown_grace_seconds=1,
                ),
                token_verifier=verifier,
                registry=CollectorRegistry(),
            )
            await start_all(catalog.parts)
            auth_server = grpc.aio.server()
            auth_pb2_grpc.add_AuthServiceServicer_to_server(JwksOnlyAuth(keys), auth_server)
            auth_port = auth_server.add_insecure_port("127.0.0.1:0")
            await auth_server.start()
            processes: list[asyncio.subprocess.Process] = []
            channels: list[grpc.aio.Channel] = []
            clients: list[RawHttp] = []
            try:
                catalog_target = f"127.0.0.1:{catalog.server.port}"
                metadata = [("authorization", f"Bearer {token}")]
                channel = grpc.aio.insecure_channel(catalog_target)
                channels.append(channel)
                stub = catalog_pb2_grpc.CatalogServiceStub(channel)
                await stub.CreateProduct(
                    catalog_pb2.CreateProductRequest(
                        product=catalog_pb2.Product(
                            sku=SKU,
                            name="Bench product",
                            price=money_pb2.Money(currency_code="EUR", amount_minor=1999),
                            attributes={"colour": "red", "size": "m"},
                        )
                    ),
                    metadata=metadata,
                )
                base_env = {
                    **os.environ,
                    "MERCATO_GATEWAY_AUTH_TARGET": f"127.0.0.1:{auth_port}",
                    "MERCATO_GATEWAY_CATALOG_TARGET": catalog_target,
                    "MERCATO_GATEWAY_REDIS_URL": backends.redis_url,
                    "MERCATO_GATEWAY_REDIS_PREFIX": redis_prefix + "gateway:",
                    "MERCATO_GATEWAY_KAFKA_BOOTSTRAP_SERVERS": backends.kafka_bootstrap,
                    "MERCATO_GATEWAY_RATE_LIMIT_DEFAULT": '{"rate": 1000000, "burst": 1000000}',
                    "MERCATO_GATEWAY_METRICS_PORT": "0",
                    "MERCATO_GATEWAY_LOG_LEVEL": "INFO",
                }
                ports = {"gateway": _free_port(), "gateway_no_rate_limit": _free_port()}
                processes.append(
                    await _start_gateway(
                        {**base_env, "MERCATO_GATEWAY_PORT": str(ports["gateway"])},
                        ports["gateway"],
                    )
                )
                processes.append(
                    await _start_gateway(
                        {
                            **base_env,
                            "MERCATO_GATEWAY_PORT": str(ports["gateway_no_rate_limit"]),
                            "MERCATO_GATEWAY_RATE_LIMIT_ENABLED": "false",
                        },
                        ports["gateway_no_rate_limit"],
                    )
                )

                def grpc_call(_: int) -> Callable[[], Awaitable[None]]:
                    async def call() -> None:
                        await stub.GetProduct(
                            catalog_pb2.GetProductRequest(sku=SKU), metadata=metadata
                        )

                    return call

                def http_call(port: int) -> Callable[[int], Callable[[], Awaitable[None]]]:
                    def make(_: int) -> Callable[[], Awaitable[None]]:
                        client = RawHttp("127.0.0.1", port, {"Authorization": f"Bearer {token}"})
                        clients.append(client)

                        async def call() -> None:
                            status, body = await client.get(f"/v1/products/{SKU}")
                            if status != 200:
                                raise RuntimeError(f"gateway answered {status}: {body[:200]!r}")

                        return call

                    return make

                results = {
                    "grpc_direct_get_product": await _measure(grpc_call, requests, concurrency),
                    "gateway_get_product": await _measure(
                        http_call(ports["gateway"]), requests, concurrency
                    ),
                    "gateway_get_product_no_rate_limit": await _measure(
                        http_call(ports["gateway_no_rate_limit"]), requests, concurrency
                    ),
                }
            finally:
                for client in clients:
                    await client.close()
                for process in processes:
                    await _stop(process)
                for channel in channels:
                    await channel.close()
                await auth_server.stop(1)
                await stop_all(catalog.parts)
    direct = results["grpc_direct_get_product"]
    ratios = {}
    for name in ("gateway_get_product", "gateway_get_product_no_rate_limit"):
        case = results[name]
        ratios[name] = {
            "throughput_ratio": round(direct["throughput_rps"] / case["throughput_rps"], 2),
            "p50_ratio": round(case["p50_ms"] / direct["p50_ms"], 2),
            "p99_ratio": round(case["p99_ms"] / direct["p99_ms"], 2),
        }
    return {
        "benchmark": "gateway GET /v1/products/{sku} vs gRPC GetProduct",
        "time": datetime.now(UTC).isoformat(),
        "requests_per_case": requests,
        "concurrency": concurrency,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "backends": dict(backends.sources),
        "results": results,
        "gateway_cost": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.requests, args.concurrency))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['benchmark']} ({args.requests} requests, concurrency {args.concurrency})")
    print(f"{'case':<36} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
    for name, figures in report["results"].items():
        print(
            f"{name:<36} {figures['throughput_rps']:>10.1f} "
            f"{figures['p50_ms']:>9.3f} {figures['p99_ms']:>9.3f}"
        )
    for name, ratio in report["gateway_cost"].items():
        print(
            f"{name}: throughput {ratio['throughput_ratio']}x lower, "
            f"p50 {ratio['p50_ratio']}x, p99 {ratio['p99_ratio']}x of direct gRPC"
        )
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
