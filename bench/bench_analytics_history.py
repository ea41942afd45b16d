"""Analytics queries over a long history: p50/p99 of the sales summary, top products and funnel
at 1,000 orders of history and again at 100,000, through the real event path.

Run after `make stack-up` (or let it start the local stack):
`python bench/bench_analytics_history.py [--orders 100000]`. Writes
bench/results/analytics-history.json and prints a table. In one run, on fresh topics and a fresh
database:

1. the analytics service (``build_app``: its consumers and its roll-up job) consumes 1,000
   simulated orders (auth and orders events, about 2.6 events an order) published to Kafka;
   when the group has caught up and the roll-up job has no settled minute left, each query is
   called ``--query-calls`` times through gRPC;
2. the rest of the history is published and consumed the same way, and the queries measured
   again;
3. for comparison, the same figures folded from every fact of the range in this process (what
   the queries did before roll-ups: one read of all the range's facts), a few calls.

The orders lie in the last few days (a few seconds apart, ending an hour ago), so each query
covers the whole history: the default range of the API (the last 7 days), sales by day and by
hour, top products and the funnel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from aiokafka import AIOKafkaProducer
from bench_analytics import (
    AUDIENCE,
    ISSUER,
    Keys,
    _caught_up,
    _query_latency,
    _send,
    bench_environment,
)
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from mercato.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from mercato_analytics import samples
from mercato_analytics.app import build_app
from mercato_analytics.domain import BucketSize, fold_funnel, fold_sales
from mercato_analytics.positions import KafkaPositions
from mercato_common.identity import JwksTokenVerifier
from mercato_common.kafka import KafkaConnection
from mercato_common.runtime import start_all, stop_all
from mercato_devstack.config import FERRETDB_DATABASE

RESULTS = Path(__file__).resolve().parent / "results" / "analytics-history.json"
SECONDS_APART = 3  # samples.simulate places orders about this far apart


async def _publish(producer: AIOKafkaProducer, names: dict[str, str], published: list[Any]) -> None:
    pending = [await _send(producer, names[item.source], item.envelope) for item in published]
    await asyncio.gather(*pending)


async def _rolled_up(app: Any, *, within: float) -> float:
    """Seconds until the roll-up job has no dirty minute older than its settle time left."""
    started = time.perf_counter()
    settle = timedelta(seconds=app.settings.rollup_settle_seconds)
    while time.perf_counter() - started < within:
        old = datetime.now(UTC) - settle - timedelta(minutes=1)
        if await app.store.rollups.dirty.count_documents({"minute": {"$lt": old}}) == 0:
            return time.perf_counter() - started
        await asyncio.sleep(0.5)
    raise TimeoutError(f"roll-ups not done within {within} s")


async def _quiet_stores(postgres_dsn: str, schema: str, *, within: float) -> dict[str, Any]:
    """Wait until PostgreSQL has run no autovacuum for 3 s in a row (at most ``within`` s), then
    tell the seconds waited and the dead rows left in ``schema`` (the local FerretDB's tables of
    the bench database, in its storage database). Right after a load, autovacuum cleans and
    analyses the tables it wrote (the facts, the dirty marks inserted and deleted by the
    thousand): the queries are measured at the steady state a long history settles into, not
    during that clean-up."""
    connection = await asyncpg.connect(postgres_dsn, database=FERRETDB_DATABASE)
    try:
        started = time.perf_counter()
        quiet_since = started
        while time.perf_counter() - started < within:
            busy = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            )
            now = time.perf_counter()
            if busy:
                quiet_since = now
            elif now - quiet_since >= 3:
                break
            await asyncio.sleep(0.5)
        dead, live = await connection.fetchrow(
            "SELECT coalesce(sum(n_dead_tup), 0), coalesce(sum(n_live_tup), 0)"
            " FROM pg_stat_user_tables WHERE schemaname = $1",
            schema,
        )
        return {
            "waited_seconds": round(time.perf_counter() - started, 1),
            "dead_rows": int(dead),
            "live_rows": int(live),
        }
    finally:
        await connection.close()


async def _queries(stub: Any, metadata: Any, calls: int) -> dict[str, dict[str, float]]:
    now = datetime.now(UTC)
    week = (now - timedelta(days=7), now)

    def ranged(message: Any, start: datetime, end: datetime, **fields: Any) -> Any:
        request = message(**fields)
        request.start_time.FromDatetime(start)
        request.end_time.FromDatetime(end)
        return request

    requests = {
        "GetSalesSummary default (7 days by day)": (
            stub.GetSalesSummary,
            analytics_pb2.GetSalesSummaryRequest(),
        ),
        "GetSalesSummary 7 days by hour": (
            stub.GetSalesSummary,
            ranged(analytics_pb2.GetSalesSummaryRequest, *week, bucket=analytics_pb2.BUCKET_HOUR),
        ),
        "ListTopProducts 7 days": (
            stub.ListTopProducts,
            ranged(analytics_pb2.ListTopProductsRequest, *week, rank_by=1),
        ),
        "GetFunnel 7 days": (stub.GetFunnel, ranged(analytics_pb2.GetFunnelRequest, *week)),
    }
    results = {}
    for name, (method, request) in requests.items():
        results[name] = await _query_latency(
            lambda method=method, request=request: method(request, metadata=metadata), calls
        )
    return results


async def _fold_from_facts(mongo_uri: str, db_name: str) -> dict[str, float]:
    """What a 7-day funnel plus sales summary cost when folded from every fact (the old path):
    one call, on a client of its own whose socket timeout allows it."""
    now = datetime.now(UTC)
    start, end = now - timedelta(days=7), now
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_uri, tz_aware=True, socketTimeoutMS=900_000
    )
    try:
        facts = client[db_name]["facts"]
        began = time.perf_counter()
        timed = await facts.find({"t": {"$gte": start, "$lt": end}}).to_list()
        placed = await facts.find({"place_time": {"$gte": start, "$lt": end}}).to_list()
        fold_sales(timed, size=BucketSize.DAY, start=start, end=end)
        fold_funnel(placed)
        return {
            "seconds": round(time.perf_counter() - began, 2),
            "facts_read": len(timed) + len(placed),
        }
    finally:
        await client.close()


async def run(orders: int, first: int, calls: int) -> dict[str, Any]:
    keys = Keys()
    async with bench_environment() as (backends, settings, names):
        end = datetime.now(UTC) - timedelta(hours=1)
        begin = (end - timedelta(seconds=SECONDS_APART * orders)).replace(second=0, microsecond=0)
        # One history, published in two parts: the first `first` orders, then the rest.
        published, _ = samples.simulate(
            orders, users=orders // 10, seed=3, start=begin, catalog_events=False
        )
        # Each order's events are contiguous: cut before the placement of order `first`+1.
        placements = [
            index
            for index, item in enumerate(published)
            if item.envelope.type.endswith(".OrderPlaced")
        ]
        cut = placements[first] if first < len(placements) else len(published)
        producer = AIOKafkaProducer(
            bootstrap_servers=backends.kafka_bootstrap, acks="all", linger_ms=20
        )
        positions = KafkaPositions(
            KafkaConnection(bootstrap_servers=backends.kafka_bootstrap),
            group_id=settings.consumer_group,
            topics=list(names.values()),
            cache_seconds=0,
        )
        verifier = JwksTokenVerifier(keys.jwks, issuer=ISSUER, audience=AUDIENCE)
        app = build_app(settings, token_verifier=verifier, registry=CollectorRegistry())
        await producer.start()
        channel: grpc.aio.Channel | None = None
        steps: dict[str, Any] = {}
        try:
            await start_all(app.parts)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}")
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            metadata = [("authorization", f"Bearer {keys.token('analytics:read')}")]
            for label, part in (("small", published[:cut]), ("large", published[cut:])):
                began = time.perf_counter()
                await _publish(producer, names, part)
                await _caught_up(positions, poll=0.5)
                consumed = time.perf_counter() - began
                rollup_wait = await _rolled_up(app, within=600)
                quiet = (
                    await _quiet_stores(backends.postgres_dsn, settings.mongo_database, within=300)
                    if backends.stack is not None  # the local stack: FerretDB on its PostgreSQL
                    else {"waited_seconds": 0.0}
                )
                # Every published event feeds a fact (no catalog events): counting them in
                # FerretDB would scan the collection.
                facts = cut if label == "small" else len(published)
                steps[label] = {
                    "events_published": len(part),
                    "facts": facts,
                    "consume_seconds": round(consumed, 1),
                    "rollup_wait_seconds": round(rollup_wait, 1),
                    "stores_quiet": quiet,
                    "rollup_documents": sum(
                        [await c.count_documents({}) for c in app.store.rollups.rollups.values()]
                    ),
                    "queries": await _queries(stub, metadata, calls),
                    "fold_from_facts": await _fold_from_facts(
                        settings.mongo_uri, settings.mongo_database
                    ),
                }
                print(
                    f"{label}: {facts} facts, consumed in {consumed:.0f} s, rolled up"
                    f" {rollup_wait:.0f} s later, stores quiet {quiet['waited_seconds']:.0f} s"
                    f" after that; {json.dumps(steps[label]['queries'])}",
                    flush=True,
                )
        finally:
            if channel is not None:
                await channel.close()
            await positions.stop()
            await producer.stop()
            await stop_all(app.parts)
    return {
        "benchmark": "analytics queries over history",
        "time": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "backends": dict(backends.sources),
        "orders": {"small": first, "large": orders},
        "calls": calls,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--first", type=int, default=1_000)
    parser.add_argument("--query-calls", type=int, default=50)
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.orders, args.first, args.query_calls))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    small, large = report["steps"]["small"], report["steps"]["large"]
    print(f"\n| query | p99 at {args.first} orders | p99 at {args.orders} orders | ratio |")
    print("|---|---|---|---|")
    for name, figures in small["queries"].items():
        after = large["queries"][name]["p99_ms"]
        ratio = after / figures["p99_ms"] if figures["p99_ms"] else float("nan")
        print(f"| {name} | {figures['p99_ms']:.1f} ms | {after:.1f} ms | {ratio:.2f} |")
    print(
        "| 7-day sales + funnel folded from every fact (before roll-ups), one call | "
        f"{small['fold_from_facts']['seconds'] * 1000:.0f} ms | "
        f"{large['fold_from_facts']['seconds'] * 1000:.0f} ms | |"
    )
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
