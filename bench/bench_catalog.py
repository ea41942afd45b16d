"""GetProduct latency and throughput: cache hit, cache miss, and a bare PyMongo find_one.

Run after `make stack-up` (or let it start the local stack): `python bench/bench_catalog.py`.
Writes bench/results/catalog.json and prints a table. The three are measured in the same run
against the same document: a real catalog server (gRPC on a free port, Redis cache, FerretDB),
called through a gRPC stub with a verified access token, and a bare `find_one` by `_id` on the
same collection. "miss" is a second catalog instance whose cache entries expire after 1 ms, so
every call does a Redis GET (miss), the MongoDB read and the cache fill. Client and server share
one process and event loop (2-core machine), so the figures are end-to-end costs, not capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
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
from pymongo import AsyncMongoClient

from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato.type.v1 import money_pb2
from mercato_catalog.app import CatalogApp, build_app
from mercato_catalog.settings import CatalogSettings
from mercato_common.identity import JwksTokenVerifier
from mercato_common.runtime import start_all, stop_all
from mercato_devstack.testing import (
    open_backends,
    temporary_mongo_database,
    temporary_redis_prefix,
    temporary_topics,
)

RESULTS = Path(__file__).resolve().parent / "results" / "catalog.json"
ISSUER, AUDIENCE, SKU = "http://127.0.0.1:8080", "mercato", "BENCH-0001"


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


async def _start(settings: CatalogSettings, keys: Keys) -> CatalogApp:
    verifier = JwksTokenVerifier(keys.jwks, issuer=ISSUER, audience=AUDIENCE)
    app = build_app(settings, token_verifier=verifier, registry=CollectorRegistry())
    await start_all(app.parts)
    return app


async def _measure(
    call: Callable[[], Awaitable[Any]], requests: int, concurrency: int
) -> dict[str, float]:
    for _ in range(min(200, requests)):
        await call()
    latencies: list[float] = []
    for _ in range(requests):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        "sequential_rps": round(requests / sum(latencies), 1),
        "concurrent_rps": round(requests / elapsed, 1),
    }


async def run(requests: int, concurrency: int) -> dict[str, Any]:
    keys = Keys()
    with open_backends() as backends:
        async with (
            temporary_mongo_database(backends.mongo_uri, prefix="bench") as db_name,
            temporary_redis_prefix(backends.redis_url, prefix="bench") as redis_prefix,
            temporary_topics(backends.kafka_bootstrap) as topics,
        ):
            topic = await topics.create("mercato.catalog.events.v1")
            base: dict[str, Any] = {
                "grpc_port": 0,
                "mongo_uri": backends.mongo_uri,
                "mongo_database": db_name,
                "redis_url": backends.redis_url,
                "redis_prefix": redis_prefix,
                "kafka_bootstrap_servers": backends.kafka_bootstrap,
                "events_topic": topic,
                "shutdown_drain_seconds": 0,
                "shutdown_grace_seconds": 1,
            }
            cached = await _start(CatalogSettings(**base), keys)
            uncached = await _start(
                CatalogSettings(
                    **{**base, "redis_prefix": redis_prefix + "miss:", "cache_ttl_seconds": 0.001}
                ),
                keys,
            )
            mongo: AsyncMongoClient[Any] = AsyncMongoClient(backends.mongo_uri)
            channels: list[grpc.aio.Channel] = []
            try:
                metadata = [("authorization", f"Bearer {keys.token('catalog:read catalog:write')}")]
                stubs = []
                for app in (cached, uncached):
                    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}")
                    channels.append(channel)
                    stubs.append(catalog_pb2_grpc.CatalogServiceStub(channel))
                await stubs[0].CreateProduct(
                    catalog_pb2.CreateProductRequest(
                        product=catalog_pb2.Product(
                            sku=SKU,
                            name="Benchmark mug",
                            description="x" * 200,
                            price=money_pb2.Money(currency_code="EUR", amount_minor=1299),
                            attributes={"colour": "red", "size": "m"},
                        )
                    ),
                    metadata=metadata,
                )
                request = catalog_pb2.GetProductRequest(sku=SKU)
                collection = mongo[db_name]["products"]
                results = {
                    "grpc_get_product_cache_hit": await _measure(
                        lambda: stubs[0].GetProduct(request, metadata=metadata),
                        requests,
                        concurrency,
                    ),
                    "grpc_get_product_cache_miss": await _measure(
                        lambda: stubs[1].GetProduct(request, metadata=metadata),
                        requests,
                        concurrency,
                    ),
                    "pymongo_find_one": await _measure(
                        lambda: collection.find_one({"_id": SKU}), requests, concurrency
                    ),
                }
            finally:
                for channel in channels:
                    await channel.close()
                await mongo.close()
                await stop_all(uncached.parts)
                await stop_all(cached.parts)
    return {
        "benchmark": "catalog GetProduct",
        "time": datetime.now(UTC).isoformat(),
        "requests_per_case": requests,
        "concurrency": concurrency,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "backends": dict(backends.sources),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.requests, args.concurrency))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    header = (
        f"{'case':32} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'seq rps':>9} {'conc rps':>9}"
    )
    print(header)
    print("-" * len(header))
    for case, r in report["results"].items():
        print(
            f"{case:32} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['mean_ms']:8.3f} "
            f"{r['sequential_rps']:9.1f} {r['concurrent_rps']:9.1f}"
        )
    print(f"\n{args.requests} requests per case, concurrency {args.concurrency}; -> {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
