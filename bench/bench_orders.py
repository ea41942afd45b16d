"""Orders placed per second and CreateOrder latency, next to PostgreSQL's single-row commit rate.

Run after `make stack-up` (or let it start the local stack): `python bench/bench_orders.py`.
Writes bench/results/orders.json and prints a table. In one run, against the same PostgreSQL:

* ``create_order``: CreateOrder with 2 lines (a random pair of ``--products`` products, 1 and 2
  units) through the real orders gRPC server, a new idempotency key each, at a fixed
  concurrency. Each create is the whole saga: key claim (PostgreSQL),
  ReserveStock on a real catalog (FerretDB), and the commit of key + order + history +
  OrderPlaced outbox row (PostgreSQL); the outbox relay publishes to Kafka meanwhile. A real
  auth server signs the customer's token and the service's client-credentials token (cached).
* ``catalog_reserve_stock``: the saga's dominant step alone: ReserveStock of 2 lines under a
  fresh order id, straight to the catalog with the service token, same concurrency. The catalog
  serializes writes per product document (FerretDB 1.x needs it, see docs/catalog.md) and keeps
  every hold in the product document, so hot products and many open reservations slow it down.
* ``catalog_batch_get_products``: the saga's pricing step alone, BatchGetProducts of 2 SKUs.
* ``postgres_single_row_commit``: one-row INSERT ... autocommit (one WAL flush each) from the
  same number of concurrent connections, into the orders database: the ceiling of any design
  that commits once per request.

Client and servers (auth, catalog, orders) share one process and one event loop on the 2-core
development machine, so the figures are end-to-end costs on this machine, not capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from prometheus_client import CollectorRegistry

from mercato.auth.v1 import auth_pb2, auth_pb2_grpc
from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato.orders.v1 import orders_pb2, orders_pb2_grpc
from mercato.type.v1 import money_pb2
from mercato_auth.app import build_app as build_auth
from mercato_auth.settings import AuthSettings
from mercato_catalog.app import build_app as build_catalog
from mercato_catalog.settings import CatalogSettings
from mercato_common.runtime import start_all, stop_all
from mercato_devstack.testing import (
    open_backends,
    temporary_database,
    temporary_mongo_database,
    temporary_redis_prefix,
    temporary_topics,
)
from mercato_orders.app import build_app as build_orders
from mercato_orders.settings import OrdersSettings

RESULTS = Path(__file__).resolve().parent / "results" / "orders.json"
ISSUER, AUDIENCE = "http://127.0.0.1:8080", "mercato"
ADMIN_EMAIL, ADMIN_PASSWORD = "bench-admin@mercato.test", "bench admin password"
SECRET = "bench-orders-client-secret"  # noqa: S105 - a throwaway bench client


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


async def _measure(
    call: Callable[[], Awaitable[Any]], requests: int, concurrency: int, warmup: int
) -> dict[str, float]:
    """``requests`` calls from ``concurrency`` workers; throughput and latency under that load."""
    for _ in range(warmup):
        await call()
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "per_second": round(requests / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2),
        "requests": requests,
        "seconds": round(elapsed, 2),
    }


async def _postgres_commits(dsn: str, requests: int, concurrency: int) -> dict[str, float]:
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS bench_commits (id bigserial PRIMARY KEY, "
                "payload text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )

        async def commit() -> None:
            async with pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO bench_commits (payload) VALUES ($1)", uuid.uuid4().hex
                )

        return await _measure(commit, requests, concurrency, warmup=min(200, requests))
    finally:
        await pool.close()


def _pairs(skus: list[str], count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` pairs of distinct SKUs, reproducible."""
    rng = random.Random(seed)
    return [tuple(rng.sample(skus, 2)) for _ in range(count)]  # type: ignore[misc]


async def run(requests: int, concurrency: int, products: int) -> dict[str, Any]:
    skus = [f"BENCH-{i:04d}" for i in range(products)]
    with open_backends() as backends:
        async with (
            temporary_database(backends.postgres_dsn, prefix="bench_auth") as auth_dsn,
            temporary_database(backends.postgres_dsn, prefix="bench_orders") as orders_dsn,
            temporary_mongo_database(backends.mongo_uri, prefix="bench") as mongo_db,
            temporary_redis_prefix(backends.redis_url, prefix="bench") as redis_prefix,
            temporary_topics(backends.kafka_bootstrap) as topics,
        ):
            catalog_topic = await topics.create("mercato.catalog.events.v1")
            orders_topic = await topics.create("mercato.orders.events.v1")
            auth = build_auth(
                AuthSettings.model_validate(
                    {
                        "database_url": auth_dsn,
                        "kafka_bootstrap_servers": backends.kafka_bootstrap,
                        "outbox_relay_enabled": False,
                        "signing_key_kek": base64.b64encode(os.urandom(32)).decode(),
                        "grpc_port": 0,
                        "shutdown_drain_seconds": 0,
                        "token_issuer": ISSUER,
                        "token_audience": AUDIENCE,
                        "argon2_time_cost": 1,
                        "argon2_memory_cost_kib": 1024,
                        "argon2_parallelism": 1,
                        "bootstrap_admin_email": ADMIN_EMAIL,
                        "bootstrap_admin_password": ADMIN_PASSWORD,
                        "service_clients": [
                            {"client_id": "orders", "secret": SECRET, "scopes": ["catalog:reserve"]}
                        ],
                    }
                ),
                registry=CollectorRegistry(),
            )
            await start_all(auth.parts)
            auth_target = f"127.0.0.1:{auth.server.port}"
            catalog = build_catalog(
                CatalogSettings(
                    grpc_port=0,
                    mongo_uri=backends.mongo_uri,
                    mongo_database=mongo_db,
                    redis_url=backends.redis_url,
                    redis_prefix=redis_prefix,
                    kafka_bootstrap_servers=backends.kafka_bootstrap,
                    events_topic=catalog_topic,
                    shutdown_drain_seconds=0,
                    auth_target=auth_target,
                    token_issuer=ISSUER,
                    token_audience=AUDIENCE,
                ),
                registry=CollectorRegistry(),
            )
            await start_all(catalog.parts)
            orders = build_orders(
                OrdersSettings.model_validate(
                    {
                        "database_url": orders_dsn,
                        "database_pool_max_size": max(10, concurrency),
                        "kafka_bootstrap_servers": backends.kafka_bootstrap,
                        "events_topic": orders_topic,
                        "grpc_port": 0,
                        "shutdown_drain_seconds": 0,
                        "auth_target": auth_target,
                        "catalog_target": f"127.0.0.1:{catalog.server.port}",
                        "token_issuer": ISSUER,
                        "token_audience": AUDIENCE,
                        "service_client_secret": SECRET,
                        "payment_provider": "dev",
                    }
                ),
                registry=CollectorRegistry(),
            )
            await start_all(orders.parts)
            channels = [
                grpc.aio.insecure_channel(f"127.0.0.1:{port}")
                for port in (auth.server.port, catalog.server.port, orders.server.port)
            ]
            try:
                auth_stub = auth_pb2_grpc.AuthServiceStub(channels[0])
                catalog_stub = catalog_pb2_grpc.CatalogServiceStub(channels[1])
                orders_stub = orders_pb2_grpc.OrdersServiceStub(channels[2])
                admin = (
                    await auth_stub.Login(
                        auth_pb2.LoginRequest(email=ADMIN_EMAIL, password=ADMIN_PASSWORD)
                    )
                ).access_token
                admin_md = [("authorization", f"Bearer {admin}")]
                for i, sku in enumerate(skus):
                    price = 100 + 37 * i
                    await catalog_stub.CreateProduct(
                        catalog_pb2.CreateProductRequest(
                            product=catalog_pb2.Product(
                                sku=sku,
                                name=sku.title(),
                                price=money_pb2.Money(currency_code="EUR", amount_minor=price),
                            )
                        ),
                        metadata=admin_md,
                    )
                    await catalog_stub.AdjustStock(
                        catalog_pb2.AdjustStockRequest(sku=sku, delta=100_000, reason="bench"),
                        metadata=admin_md,
                    )
                await auth_stub.RegisterUser(
                    auth_pb2.RegisterUserRequest(
                        email="bench-customer@mercato.test",
                        display_name="Bench",
                        password="bench customer password",  # noqa: S106
                    )
                )
                customer = (
                    await auth_stub.Login(
                        auth_pb2.LoginRequest(
                            email="bench-customer@mercato.test",
                            password="bench customer password",  # noqa: S106
                        )
                    )
                ).access_token
                customer_md = [("authorization", f"Bearer {customer}")]
                create_pairs = iter(_pairs(skus, requests + 100, seed=1))

                async def create() -> None:
                    first, second = next(create_pairs)
                    body = orders_pb2.Order(
                        lines=[
                            orders_pb2.OrderLine(sku=first, quantity=1),
                            orders_pb2.OrderLine(sku=second, quantity=2),
                        ]
                    )
                    await orders_stub.CreateOrder(
                        orders_pb2.CreateOrderRequest(
                            order=body, idempotency_key=str(uuid.uuid4())
                        ),
                        metadata=customer_md,
                    )

                service_md = [
                    (
                        "authorization",
                        "Bearer "
                        + (
                            await auth_stub.IssueToken(
                                auth_pb2.IssueTokenRequest(
                                    grant_type="client_credentials",
                                    client_id="orders",
                                    client_secret=SECRET,
                                    scope="catalog:reserve",
                                )
                            )
                        ).access_token,
                    )
                ]
                reserve_pairs = iter(_pairs(skus, requests + 100, seed=2))

                async def reserve() -> None:
                    first, second = next(reserve_pairs)
                    lines = [
                        catalog_pb2.ReservationLine(sku=first, quantity=1),
                        catalog_pb2.ReservationLine(sku=second, quantity=2),
                    ]
                    await catalog_stub.ReserveStock(
                        catalog_pb2.ReserveStockRequest(order_id=str(uuid.uuid4()), lines=lines),
                        metadata=service_md,
                    )

                get_pairs = iter(_pairs(skus, requests + 100, seed=3))

                async def batch_get() -> None:
                    await catalog_stub.BatchGetProducts(
                        catalog_pb2.BatchGetProductsRequest(skus=list(next(get_pairs))),
                        metadata=service_md,
                    )

                results = {
                    "create_order": await _measure(create, requests, concurrency, warmup=50),
                    "catalog_reserve_stock": await _measure(
                        reserve, requests, concurrency, warmup=50
                    ),
                    "catalog_batch_get_products": await _measure(
                        batch_get, requests, concurrency, warmup=50
                    ),
                    "postgres_single_row_commit": await _postgres_commits(
                        orders_dsn, requests * 4, concurrency
                    ),
                }
                async with orders.store.read() as tx:
                    placed = await tx.conn.fetchval("SELECT count(*) FROM orders")
                results["create_order"]["orders_in_database"] = placed
            finally:
                for channel in channels:
                    await channel.close()
                await stop_all(orders.parts)
                await stop_all(catalog.parts)
                await stop_all(auth.parts)
    return {
        "benchmark": "orders CreateOrder (2 lines) vs PostgreSQL single-row commits",
        "time": datetime.now(UTC).isoformat(),
        "concurrency": concurrency,
        "products": products,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "backends": dict(backends.sources),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="creates to measure")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--products", type=int, default=100, help="each order takes 2 of these (random pair)"
    )
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.requests, args.concurrency, args.products))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    header = f"{'case':30} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'n':>7}"
    print(header)
    print("-" * len(header))
    for case, r in report["results"].items():
        print(
            f"{case:30} {r['per_second']:9.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
            f"{r['max_ms']:8.2f} {r['requests']:7d}"
        )
    create = report["results"]["create_order"]
    reserve = report["results"]["catalog_reserve_stock"]
    commit = report["results"]["postgres_single_row_commit"]
    print(
        f"\nconcurrency {args.concurrency}; orders placed/s = "
        f"{create['per_second'] / commit['per_second']:.1%} of the PostgreSQL single-row commit "
        f"rate and {create['per_second'] / reserve['per_second']:.0%} of the catalog's "
        f"ReserveStock rate; -> {RESULTS}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
