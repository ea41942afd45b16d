"""Analytics consumers: events applied per second and event-to-applied latency, next to a bare
aiokafka consume of the same topics, plus query latency over the facts they produced.

Run after `make stack-up` (or let it start the local stack): `python bench/bench_analytics.py`.
Writes bench/results/analytics.json and prints a table. Everything is measured in one run on
the same freshly created topics (6 partitions each) and a fresh database:

1. backlog: ``--orders`` simulated orders (auth, catalog and orders events) are published first;
   a bare ``AIOKafkaConsumer`` (no group, no decoding) reads them all, then the analytics
   service (``build_app``: ``--consumers`` runners of one group, the FerretDB/MongoDB store,
   dead-letter producer, gRPC server) drains the same backlog until the group's committed
   offsets reach the end (effects done and committed);
2. live: the same running service gets ``--rate`` events per second for ``--seconds`` seconds,
   each stamped with its publish time; latency = fact ``applied_at`` - envelope time, from the
   stored facts (the histogram ``mercato_analytics_event_apply_latency_seconds`` measures the
   same thing);
3. queries: GetSalesSummary, ListTopProducts and GetFunnel through gRPC with a verified token,
   over the two days holding every fact.

Client, broker, FerretDB, PostgreSQL and the service share one machine (2 cores), so the figures
are end-to-end costs, not capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from mercato.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from mercato_analytics import samples
from mercato_analytics.app import build_app
from mercato_analytics.positions import KafkaPositions
from mercato_analytics.settings import AnalyticsSettings
from mercato_common.identity import JwksTokenVerifier
from mercato_common.kafka import Envelope, KafkaConnection, envelope_header_map, map_to_headers
from mercato_common.runtime import start_all, stop_all
from mercato_devstack.testing import open_backends, temporary_mongo_database, temporary_topics

RESULTS = Path(__file__).resolve().parent / "results" / "analytics.json"
ISSUER, AUDIENCE = "http://127.0.0.1:8080", "mercato"


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


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def _send(producer: AIOKafkaProducer, topic: str, envelope: Envelope) -> Any:
    return await producer.send(
        topic,
        envelope.SerializeToString(),
        key=envelope.subject.encode(),
        headers=map_to_headers(envelope_header_map(envelope)),
    )


async def _bare_consume(bootstrap: str, partitions: list[TopicPartition], total: int) -> float:
    """Seconds a group-less aiokafka consumer takes to read ``total`` records (no decoding)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        started = time.perf_counter()
        seen = 0
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            seen += sum(len(records) for records in batch.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def bench_settings(
    backends: Any, db_name: str, topics: Any, names: dict[str, str], **overrides: Any
) -> AnalyticsSettings:
    """The service's settings on the bench's fresh database and topics."""
    return AnalyticsSettings(
        grpc_port=0,
        mongo_uri=backends.mongo_uri,
        mongo_database=db_name,
        kafka_bootstrap_servers=backends.kafka_bootstrap,
        auth_events_topic=names["auth"],
        catalog_events_topic=names["catalog"],
        orders_events_topic=names["orders"],
        dead_letter_topic=topics.name("mercato.analytics.dlq.v1"),
        consumer_group=topics.name("mercato.analytics"),
        lag_refresh_seconds=0,
        lag_cache_seconds=0,
        shutdown_drain_seconds=0,
        shutdown_grace_seconds=1,
        **overrides,
    )


@contextlib.asynccontextmanager
async def bench_environment(
    **overrides: Any,
) -> AsyncIterator[tuple[Any, AnalyticsSettings, dict[str, str]]]:
    """The local stack, a fresh database and fresh topics, and the service's settings on them:
    (backends, settings, the event topics by source)."""
    with open_backends() as backends:
        async with (
            temporary_mongo_database(backends.mongo_uri, prefix="bench") as db_name,
            temporary_topics(backends.kafka_bootstrap) as topics,
        ):
            await topics.create_declared()
            names = {
                source: topics.name(f"mercato.{source}.events.v1")
                for source in ("auth", "catalog", "orders")
            }
            yield backends, bench_settings(backends, db_name, topics, names, **overrides), names


async def _caught_up(positions: KafkaPositions, poll: float = 0.02) -> None:
    while True:
        if sum(end - committed for _, _, committed, end in await positions.read()) == 0:
            return
        await asyncio.sleep(poll)


async def _query_latency(call: Any, calls: int) -> dict[str, float]:
    await call()
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    return {
        "p50_ms": round(_percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
    }


async def run(
    orders: int, consumers: int, rate: float, seconds: float, query_calls: int
) -> dict[str, Any]:
    keys = Keys()
    async with bench_environment(consumers=consumers) as (backends, settings, names):
        partitions = [TopicPartition(name, p) for name in names.values() for p in range(6)]
        # Orders 3 s apart, all in the past (live events come after them).
        history = timedelta(seconds=3 * orders) + timedelta(hours=2)
        begin = (datetime.now(UTC) - history).replace(second=0, microsecond=0)
        published, expected = samples.simulate(orders, users=orders // 10, seed=1, start=begin)
        facts_expected = sum(1 for item in published if item.source != "catalog")
        producer = AIOKafkaProducer(
            bootstrap_servers=backends.kafka_bootstrap, acks="all", linger_ms=5
        )
        await producer.start()
        app = None
        positions = KafkaPositions(
            KafkaConnection(bootstrap_servers=backends.kafka_bootstrap),
            group_id=settings.consumer_group,
            topics=list(names.values()),
            cache_seconds=0,
        )
        channel: grpc.aio.Channel | None = None
        try:
            futures = [
                await _send(producer, names[item.source], item.envelope) for item in published
            ]
            await asyncio.gather(*futures)
            records = len(published)

            bare_seconds = await _bare_consume(backends.kafka_bootstrap, partitions, records)

            verifier = JwksTokenVerifier(keys.jwks, issuer=ISSUER, audience=AUDIENCE)
            app = build_app(settings, token_verifier=verifier, registry=CollectorRegistry())
            started = time.perf_counter()
            await start_all(app.parts)
            await _caught_up(positions)
            drain_seconds = time.perf_counter() - started
            facts_after_backlog = await app.store.count_facts()
            assert facts_after_backlog == facts_expected, (facts_after_backlog, facts_expected)

            # Live: events stamped now, published at `rate` per second.
            live_start = datetime.now(UTC)
            interval = 1.0 / rate
            sent = 0
            deadline = time.perf_counter() + seconds
            next_at = time.perf_counter()
            pending = []
            while time.perf_counter() < deadline:
                now = datetime.now(UTC)
                order = str(uuid.uuid4())
                line = [samples.Line(f"SKU-{sent % 20:03d}", 1, 999)]
                envelope = (
                    samples.order_placed(
                        order, user_id="u", lines=line, currency="EUR", place_time=now
                    )
                    if sent % 2 == 0
                    else samples.order_paid(
                        order,
                        user_id="u",
                        lines=line,
                        currency="EUR",
                        place_time=now - timedelta(seconds=30),
                        pay_time=now,
                    )
                )
                pending.append(await _send(producer, names["orders"], envelope))
                sent += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await asyncio.gather(*pending)
            await _caught_up(positions)
            live = await app.store.facts.find(
                {"applied_at": {"$gte": live_start}}, {"event_time": 1, "applied_at": 1}
            ).to_list()
            assert len(live) == sent, (len(live), sent)
            latencies = [(doc["applied_at"] - doc["event_time"]).total_seconds() for doc in live]

            channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}")
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            metadata = [("authorization", f"Bearer {keys.token('analytics:read')}")]
            assert expected.first_time is not None
            day = expected.first_time.replace(hour=0, minute=0, second=0, microsecond=0)

            def window(message: Any, **fields: Any) -> Any:
                request = message(**fields)
                request.start_time.FromDatetime(day)
                request.end_time.FromDatetime(day + timedelta(days=2))
                return request

            summary = window(analytics_pb2.GetSalesSummaryRequest, bucket=analytics_pb2.BUCKET_HOUR)
            minute_request = analytics_pb2.GetSalesSummaryRequest(
                bucket=analytics_pb2.BUCKET_MINUTE
            )
            minute_request.start_time.FromDatetime(expected.first_time)
            minute_request.end_time.FromDatetime(expected.first_time + timedelta(hours=24))
            top = window(analytics_pb2.ListTopProductsRequest, rank_by=1)
            funnel = window(analytics_pb2.GetFunnelRequest)
            facts_total = await app.store.count_facts()
            queries = {
                "GetSalesSummary hour x 48": await _query_latency(
                    lambda: stub.GetSalesSummary(summary, metadata=metadata), query_calls
                ),
                "GetSalesSummary minute x 1440": await _query_latency(
                    lambda: stub.GetSalesSummary(minute_request, metadata=metadata),
                    query_calls,
                ),
                "ListTopProducts 2 days": await _query_latency(
                    lambda: stub.ListTopProducts(top, metadata=metadata), query_calls
                ),
                "GetFunnel 2 days": await _query_latency(
                    lambda: stub.GetFunnel(funnel, metadata=metadata), query_calls
                ),
            }
        finally:
            if channel is not None:
                await channel.close()
            await positions.stop()
            await producer.stop()
            if app is not None:
                await stop_all(app.parts)
    return {
        "benchmark": "analytics consumers",
        "time": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "backends": dict(backends.sources),
        "partitions": len(partitions),
        "consumers": consumers,
        "backlog": {
            "records": records,
            "facts": facts_expected,
            "bare_aiokafka_records_per_s": round(records / bare_seconds, 1),
            "analytics_records_per_s": round(records / drain_seconds, 1),
            "analytics_facts_per_s": round(facts_expected / drain_seconds, 1),
            "analytics_drain_seconds": round(drain_seconds, 2),
            "note": "drain time includes joining the consumer group",
        },
        "live": {
            "target_rate_per_s": rate,
            "events": len(latencies),
            "latency_p50_ms": round(_percentile(latencies, 0.5) * 1000, 1),
            "latency_p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
            "latency_mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        },
        "queries": {"facts": facts_total, "calls": query_calls, "results": queries},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--query-calls", type=int, default=10)
    args = parser.parse_args(argv)
    report = asyncio.run(
        run(args.orders, args.consumers, args.rate, args.seconds, args.query_calls)
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    backlog, live = report["backlog"], report["live"]
    rows = [
        ("bare aiokafka consume (records/s)", f"{backlog['bare_aiokafka_records_per_s']:.0f}"),
        ("analytics applied (records/s)", f"{backlog['analytics_records_per_s']:.0f}"),
        ("analytics applied (facts/s)", f"{backlog['analytics_facts_per_s']:.0f}"),
        ("event-to-applied p50 (ms)", f"{live['latency_p50_ms']:.1f}"),
        ("event-to-applied p99 (ms)", f"{live['latency_p99_ms']:.1f}"),
    ]
    rows += [
        (f"{name} p50/p99 (ms)", f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}")
        for name, r in report["queries"]["results"].items()
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':{width}}  value")
    print("-" * (width + 16))
    for name, value in rows:
        print(f"{name:{width}}  {value}")
    print(
        f"\n{backlog['records']} records ({backlog['facts']} facts) on {report['partitions']} "
        f"partitions, {report['consumers']} consumers; live {live['events']} events at "
        f"{live['target_rate_per_s']:.0f}/s; queries over {report['queries']['facts']} facts "
        f"-> {RESULTS}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
