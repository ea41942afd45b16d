"""The whole suite, benchmarked in one run: ``python bench/suite_bench.py`` (``make bench``).

Starts a private copy of the suite (``python -m mercato_devstack run``) the way the e2e tests do
(``tests/e2e/suite_env.py``: its own state folder and stack, build cache linked), on its own
state folder (``.state/bench``) and ports so it never meets a developer's `make run` or a running
e2e session, with the services' default timings (the e2e short repair timings are dropped) and
the gateway's rate limits raised out of the way. Then, against that suite and its stack:

1. the machine's limits: bare ``grpc.aio`` unary calls/s (in-process health-check echo),
   PostgreSQL single-row commits/s, aiokafka produce and consume messages/s;
2. ``GET /v1/products/{sku}`` through the gateway vs GetProduct directly over gRPC, the same
   lookup as a GraphQL query (``POST /graphql`` getProduct, every field REST answers) against
   the REST figure, and through the gateway's peer, grpc-gateway (Go;
   tools/grpc_gateway_peer.py builds it, ``--no-peer`` skips it), and the latency the gateway
   adds over direct gRPC at one offered rate (open loop, the two alternated in rounds);
3. ``POST /v1/orders`` (2 lines) at a fixed concurrency, after ``--warmup-seconds`` of the same
   load reported apart (the broker's JVM is fresh: in the first 30 s of order load its JIT
   compilers were half of Kafka's CPU per order), and the highest offered rate (open loop,
   latency from the scheduled send time) held with p99 under 100 ms, by a bounded bisection;
4. order-to-analytics freshness at that rate: analytics' own apply-latency histogram (event time
   to effect applied, read from its /metrics before and after), and from each create response to
   analytics' ``placed`` count (GetFunnel, polled) reaching that order (bounds, as tight as a
   poll is quick);
5. resident memory of every process (services from ``<state>/run/suite.json``, stack components
   from the stack's status; whole process trees) idle and at peak under load, and start-to-ready.

The suite starts from an empty state folder (its databases, topics and logs; the build cache
stays), so every run measures the same amount of data (``--keep-state`` keeps the last run's).
Writes ``bench/results/<UTC date>.json`` and ``.md`` (a Markdown table; every figure with its ratio
to its limit or peer where one exists). Bounded: about 3-5 minutes including start and stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mercato.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato_devstack import Stack, StackConfig
from mercato_devstack.private_suite import (
    PrivateSuite,
    isolated_env,
    port_block,
    running_status,
    start_private_suite,
    stop_private_suite,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
PROFILES = BENCH_DIR / "profiles"  # git-ignored: collapsed stacks, for speedscope or flamegraph
# The gateway bench's raw HTTP/1.1 client, reused as it is.
sys.path.insert(0, str(BENCH_DIR))
from bench_gateway import RawHttp  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "tools"))
import grpc_gateway_peer  # noqa: E402 - tools/grpc_gateway_peer.py builds the Go peer

#: The bench suite's state folder and ports: 22xxx, clear of `make run`, e2e and the kernel's
#: ephemeral range (32768-60999), where a connect probe can meet a client's own port. Each can be
#: overridden with MERCATO_BENCH_<name without MERCATO_>. Nothing else is set: the services run
#: with their defaults, except rate limits and the per-user order caps (each bench client is one
#: user placing thousands of unpaid orders) out of the measurement's way.
BENCH_DEFAULTS = {
    **port_block(REPO_ROOT, "bench", 22),
    "MERCATO_GATEWAY_RATE_LIMIT_STRICT": json.dumps({"rate": 100000, "burst": 100000}),
    "MERCATO_GATEWAY_RATE_LIMIT_DEFAULT": json.dumps({"rate": 100000, "burst": 100000}),
    "MERCATO_ORDERS_MAX_OPEN_ORDERS_PER_USER": "0",
    "MERCATO_ORDERS_MAX_UNITS_PER_PRODUCT_PER_USER": "0",
}
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 90.0
ADMIN_EMAIL = os.environ.get("MERCATO_BOOTSTRAP_ADMIN_EMAIL", "admin@mercato.local")
ADMIN_PASSWORD = os.environ.get("MERCATO_BOOTSTRAP_ADMIN_PASSWORD", "mercato-admin-password")
P99_TARGET_MS = 100.0


def bench_env() -> dict[str, str]:
    base = {**os.environ, "MERCATO_REPO_ROOT": str(REPO_ROOT)}
    return isolated_env(BENCH_DEFAULTS, override_prefix="MERCATO_BENCH_", base=base)


# --- measurement ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    p50, p99 = pct(latencies, 0.50), pct(latencies, 0.99)
    return {
        "ok": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "per_second": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
    }


async def closed_loop(
    make_call: Callable[[int], Callable[[], Awaitable[bool]]],
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
) -> dict[str, Any]:
    """``concurrency`` workers calling back to back: warm-up, then ``seconds`` measured."""
    calls = [make_call(i) for i in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def worker(call: Callable[[], Awaitable[bool]]) -> None:
        nonlocal errors
        while (t0 := time.perf_counter()) < stop_at:
            try:
                ok = await call()
            except Exception:
                ok = False
            if t0 >= measure_from:
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

    await asyncio.gather(*(worker(call) for call in calls))
    return summary(latencies, errors, max(time.perf_counter(), stop_at) - measure_from)


async def open_loop(
    call: Callable[[], Awaitable[bool]],
    rate: float,
    seconds: float,
    max_in_flight: int = 256,
    on_success: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Calls at ``rate``/s for ``seconds``; latency from each call's scheduled time (no
    coordinated omission). Calls beyond ``max_in_flight`` are dropped and counted as errors."""
    total = max(1, int(rate * seconds))
    latencies: list[float] = []
    errors = 0
    in_flight = 0
    start = time.perf_counter() + 0.05

    async def one(scheduled: float) -> None:
        nonlocal errors, in_flight
        try:
            ok = await asyncio.wait_for(call(), 10)
        except Exception:
            ok = False
        in_flight -= 1
        if ok:
            latencies.append(time.perf_counter() - scheduled)
            if on_success is not None:
                on_success(time.time())
        else:
            errors += 1

    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= max_in_flight:
            errors += 1
            continue
        in_flight += 1
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    result = summary(latencies, errors, time.perf_counter() - start)
    result["offered_per_second"] = round(rate, 1)
    return result


# --- memory -----------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree(pid: int, tree: dict[int, list[int]]) -> list[int]:
    members, todo = [], [pid]
    while todo:
        current = todo.pop()
        members.append(current)
        todo.extend(tree.get(current, []))
    return members


def _field_kib(path: str, prefix: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return int(line.split()[1])
    return 0


def memory_mib(pid: int, tree: dict[int, list[int]]) -> dict[str, float]:
    """Resident memory of ``pid`` and its descendants, MiB: RSS (shared pages counted in each
    process: PostgreSQL's shared buffers once per backend) and PSS (shared pages split)."""
    members = _tree(pid, tree)
    rss = sum(_field_kib(f"/proc/{m}/status", "VmRSS:") for m in members)
    pss = sum(_field_kib(f"/proc/{m}/smaps_rollup", "Pss:") for m in members)
    return {"rss": round(rss / 1024, 1), "pss": round(pss / 1024, 1)}


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) of each process tree so far, s: each member's own and that of
    its children it has reaped (cutime, cstime), so a PostgreSQL backend that exits between two
    samples stays counted (in the postmaster's)."""
    tree, tick = _children(), os.sysconf("SC_CLK_TCK")
    result = {}
    for name, pid in pids.items():
        total = 0
        for member in _tree(pid, tree):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
                total += sum(int(fields[i]) for i in (11, 12, 13, 14))
        result[name] = total / tick
    return result


def scrape(url: str) -> dict[str, float]:
    """The ``_sum``/``_count``/``_total`` series of a Prometheus endpoint, by full series name."""
    series: dict[str, float] = {}
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(url, timeout=5).text.splitlines():
            name, _, value = line.rpartition(" ")
            if line.startswith("#") or not any(
                name.endswith(suffix) or f"{suffix}{{" in name
                for suffix in ("_sum", "_count", "_total")
            ):
                continue
            with contextlib.suppress(ValueError):
                series[name] = float(value)
    return series


ORDER_EVENTS_TOPIC = "mercato.orders.events.v1"
APPLY_LATENCY = "mercato_analytics_event_apply_latency_seconds_bucket"


def scrape_buckets(url: str, name: str, label: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram ``name`` on the series holding ``label``."""
    buckets: dict[float, float] = {}
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(url, timeout=5).text.splitlines():
            if not line.startswith(name + "{") or label not in line:
                continue
            series, _, value = line.rpartition(" ")
            bound = series.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(bound)] = buckets.get(float(bound), 0.0) + float(value)
    return buckets


def bucket_quantile(
    q: float, before: dict[float, float], after: dict[float, float]
) -> float | None:
    """The q-quantile of the observations between two scrapes, interpolated linearly inside
    a bucket as Prometheus's histogram_quantile does (the highest finite bound if it falls in
    +Inf)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def server_means(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Mean of every histogram that moved between two scrapes: {series: [count, mean ms]}."""
    means = {}
    for name, total in after.items():
        if "_sum" not in name:
            continue
        count_name = name.replace("_sum", "_count", 1)
        count = after.get(count_name, 0.0) - before.get(count_name, 0.0)
        if count > 0:
            mean = (total - before.get(name, 0.0)) / count
            means[name.replace("_sum", "", 1)] = [int(count), round(mean * 1000, 2)]
    return means


_LABEL = re.compile(r'(\w+)="([^"]*)"')

# What one order costs each service in round trips, from the series that count them: the store
# operations it made (client side), the gRPC calls it answered, the events its relay published.
ROUND_TRIP_SERIES = {
    "db_client_operation_duration_seconds_count": lambda labels: (
        f"{labels['db_system_name']} {labels['db_operation_name']}"
    ),
    "grpc_server_handling_seconds_count": lambda labels: f"gRPC {labels['grpc_method']} answered",
    "mercato_outbox_published_total": lambda labels: f"Kafka send {labels['topic']}",
}


def round_trips(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Round trips per order placed (CreateOrder calls answered by orders between the scrapes),
    per service and kind: ``{"orders_placed": n, "per_order": {service: {kind: count}}}``."""
    placed = sum(
        value - before.get("orders", {}).get(name, 0.0)
        for name, value in after.get("orders", {}).items()
        if name.startswith("grpc_server_handling_seconds_count{")
        and 'grpc_method="CreateOrder"' in name
    )
    per_order: dict[str, dict[str, float]] = {}
    if placed <= 0:
        return {"orders_placed": 0, "per_order": per_order}
    for service, series in after.items():
        counts: dict[str, float] = {}
        for name, value in series.items():
            metric, _, labels = name.partition("{")
            kind = ROUND_TRIP_SERIES.get(metric)
            delta = value - before.get(service, {}).get(name, 0.0)
            if kind is None or delta <= 0:
                continue
            label = kind(dict(_LABEL.findall(labels)))
            counts[label] = counts.get(label, 0.0) + delta / placed
        if counts:
            per_order[service] = {k: round(v, 2) for k, v in sorted(counts.items())}
    return {"orders_placed": int(placed), "per_order": per_order}


def top_functions(collapsed: Path, most: int = 6) -> dict[str, Any]:
    """The functions with the most own time (leaf samples) in a py-spy ``raw`` profile."""
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # "function (path/module.py:line)": one entry per function, whatever its line.
        leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])
        leaf = re.sub(r"\(.*/", "(", leaf)
        own[leaf] = own.get(leaf, 0) + int(count)
        total += int(count)
    ranked = sorted(own.items(), key=lambda item: -item[1])[:most]
    return {
        "samples": total,
        "top_own_time": [[name, round(100 * n / total, 1)] for name, n in ranked] if total else [],
    }


STORES = ("postgres", "ferretdb", "redis")  # the store work the services cause
BROKER = "kafka"


async def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, Any]:
    """Each process tree's share of one core over ``seconds`` with no traffic, and the sums the
    idle targets speak of: the services with their stores, and the whole suite with Kafka."""
    before = cpu_seconds(pids)
    await asyncio.sleep(seconds)
    after = cpu_seconds(pids)
    share = {name: round(100 * (after[name] - before[name]) / seconds, 2) for name in after}
    services = sum(v for k, v in share.items() if k != BROKER)
    return {
        "seconds": seconds,
        "percent_of_a_core": share,
        "services_and_stores": round(services, 2),
        "whole_suite": round(sum(share.values()), 2),
    }


def python_processes(pids: dict[str, int]) -> dict[str, int]:
    """Those of ``pids`` that run Python (the services, not the stack's servers)."""
    found = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            if b"python" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found[name] = pid
    return found


async def profile_services(
    pids: dict[str, int],
    make_call: Callable[[int], Callable[[], Awaitable[bool]]],
    concurrency: int,
    seconds: float,
    stem: str,
) -> dict[str, Any]:
    """py-spy samples every Python service through one more order loop (not the measured one:
    sampling costs CPU). The collapsed stacks go to bench/profiles/; the report keeps each
    service's functions with the most own time."""
    py_spy = Path(sys.executable).with_name("py-spy")
    PROFILES.mkdir(parents=True, exist_ok=True)
    recorders: dict[str, tuple[asyncio.subprocess.Process, Path]] = {}
    for name, pid in python_processes(pids).items():
        out = PROFILES / f"{stem}-{name}.txt"
        recorders[name] = (
            await asyncio.create_subprocess_exec(
                str(py_spy),
                "record",
                f"--pid={pid}",
                f"--duration={int(seconds) + 2}",
                "--rate=200",
                "--nonblocking",
                "--subprocesses",
                "--format=raw",
                f"--output={out}",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            ),
            out,
        )
    await asyncio.sleep(0.5)
    loop = await closed_loop(make_call, concurrency, seconds, warmup=0.0)
    result: dict[str, Any] = {"orders_per_second_while_sampled": loop["per_second"]}
    for name, (process, out) in recorders.items():
        _, err = await process.communicate()
        if process.returncode == 0 and out.is_file():
            result[name] = top_functions(out) | {"file": str(out.relative_to(BENCH_DIR))}
        else:
            result[name] = {"error": err.decode(errors="replace").strip()[-300:]}
    return result


@dataclass
class Memory:
    pids: dict[str, int]
    idle: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)

    idle_rss: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, float] = field(default_factory=dict)

    def sample(self) -> dict[str, dict[str, float]]:
        tree = _children()
        return {name: memory_mib(pid, tree) for name, pid in self.pids.items()}

    def sample_idle(self) -> None:
        for name, value in self.sample().items():
            self.idle[name], self.idle_rss[name] = value["pss"], value["rss"]

    def sample_peak(self) -> None:
        for name, value in self.sample().items():
            self.peak[name] = max(self.peak.get(name, 0.0), value["pss"])
            self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), value["rss"])

    @contextlib.asynccontextmanager
    async def watching(self, interval: float = 0.5) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.to_thread(self.sample_peak)
                await asyncio.sleep(interval)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- the suite --------------------------------------------------------------------------------


# --- 1. limits --------------------------------------------------------------------------------


async def grpc_echo_limit(concurrency: int, seconds: float) -> dict[str, Any]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()

            def make(_: int) -> Callable[[], Awaitable[bool]]:
                async def call() -> bool:
                    await stub.Check(request)
                    return True

                return call

            return await closed_loop(make, concurrency, seconds)
    finally:
        await server.stop(None)


async def postgres_limit(dsn: str, concurrency: int, seconds: float) -> dict[str, Any]:
    table = f"bench_commits_{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    try:
        await pool.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, body text)")
        insert = f"INSERT INTO {table} (body) VALUES ($1)"  # noqa: S608 - our own table name

        def make(_: int) -> Callable[[], Awaitable[bool]]:
            async def call() -> bool:
                async with pool.acquire() as conn:  # autocommit: one INSERT, one commit
                    await conn.execute(insert, "x" * 64)
                return True

            return call

        return await closed_loop(make, concurrency, seconds)
    finally:
        with contextlib.suppress(Exception):
            await pool.execute(f"DROP TABLE IF EXISTS {table}")
        await pool.close()


async def kafka_limits(bootstrap: str, messages: int, limit_seconds: float) -> dict[str, Any]:
    """Produce ``messages`` x 512 B (acks=all, idempotent, as the services' producer), then
    consume them from the start of the topic (3 partitions)."""
    topic = f"bench.limits.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        payload = b"x" * 512
        try:
            await (await producer.send(topic, payload))  # metadata, connection
            started = time.perf_counter()
            futures = [await producer.send(topic, payload) for _ in range(messages)]
            await asyncio.wait_for(asyncio.gather(*futures), limit_seconds)
            produce_seconds = time.perf_counter() - started
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        try:
            seen = 0
            started = time.perf_counter()
            deadline = started + limit_seconds
            while seen < messages + 1 and time.perf_counter() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                seen += sum(len(records) for records in batches.values())
            consume_seconds = time.perf_counter() - started
        finally:
            await consumer.stop()
        return {
            "messages": messages,
            "message_bytes": len(payload),
            "produce_per_second": round(messages / produce_seconds, 1),
            "consumed": seen,
            "consume_per_second": round(seen / consume_seconds, 1),
        }
    finally:
        with contextlib.suppress(Exception):
            await admin.delete_topics([topic])
        await admin.close()


# --- the suite's workload ---------------------------------------------------------------------


@dataclass
class Fixture:
    admin_token: str
    customer_tokens: list[str]
    skus: list[str]


async def prepare(client: httpx.AsyncClient, products: int, customers: int) -> Fixture:
    async def ok(response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise RuntimeError(
                f"{response.request.url.path}: {response.status_code} {response.text}"
            )
        return dict(response.json())

    async def login(email: str, password: str) -> str:
        body = {"email": email, "password": password}
        return str((await ok(await client.post("/v1/auth/login", json=body)))["access_token"])

    admin = await login(ADMIN_EMAIL, ADMIN_PASSWORD)
    headers = {"Authorization": f"Bearer {admin}"}
    skus = []
    for _ in range(products):
        sku = f"BENCH-{uuid.uuid4().hex[:10].upper()}"
        product = {
            "sku": sku,
            "name": f"Bench product {sku}",
            "categoryId": "books",
            "price": {"currencyCode": "EUR", "amountMinor": "1000"},
        }
        await ok(await client.post("/v1/products", json=product, headers=headers))
        adjust = {"delta": 1_000_000, "reason": "bench: initial stock"}
        await ok(await client.post(f"/v1/products/{sku}:adjustStock", json=adjust, headers=headers))
        skus.append(sku)
    tokens = []
    for _ in range(customers):
        email, password = f"bench-{uuid.uuid4().hex[:12]}@example.com", "bench-correct-horse-42"
        body = {"email": email, "displayName": "Bench customer", "password": password}
        await ok(await client.post("/v1/users", json=body))
        tokens.append(await login(email, password))
    return Fixture(admin, tokens, skus)


def order_call(
    client: httpx.AsyncClient, fixture: Fixture, worker: int
) -> Callable[[], Awaitable[bool]]:
    token = fixture.customer_tokens[worker % len(fixture.customer_tokens)]

    async def call() -> bool:
        first, second = random.sample(fixture.skus, 2)
        response = await client.post(
            "/v1/orders",
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())},
            json={"lines": [{"sku": first, "quantity": 1}, {"sku": second, "quantity": 1}]},
        )
        return response.status_code == 200

    return call


async def orders_with_cpu(
    client: httpx.AsyncClient,
    fixture: Fixture,
    concurrency: int,
    seconds: float,
    pids: dict[str, int],
) -> dict[str, Any]:
    """The order closed loop, with the CPU cores each process (and the bench client) used."""
    cpu_before, wall = cpu_seconds(pids), time.perf_counter()
    own_cpu = time.process_time()
    result = await closed_loop(lambda w: order_call(client, fixture, w), concurrency, seconds)
    cpu_after, wall = cpu_seconds(pids), time.perf_counter() - wall
    result["cpu_cores_used"] = {
        name: round((cpu_after[name] - cpu_before[name]) / wall, 2) for name in cpu_after
    }
    result["cpu_cores_used"]["bench client"] = round((time.process_time() - own_cpu) / wall, 2)
    return result


def cpu_ms_per_order(result: dict[str, Any]) -> dict[str, float]:
    """Milliseconds of CPU per order of each server process (the bench client excluded)."""
    cores, rate = result.get("cpu_cores_used") or {}, result.get("per_second")
    if not cores or not rate:
        return {}
    return {
        name: 1000 * used / rate
        for name, used in cores.items()
        if used is not None and name != "bench client"
    }


PEER_READY_TIMEOUT = 15.0
PEER_STOP_TIMEOUT = 10.0


def build_grpc_gateway_peer() -> Path:
    """The grpc-gateway peer's binary, built when missing or stale; exits when it cannot be."""
    try:
        return grpc_gateway_peer.build()
    except grpc_gateway_peer.PeerError as exc:
        raise SystemExit(f"grpc-gateway peer: {exc}\n(--no-peer skips it)") from exc


def rss_mib(pid: int) -> float:
    """VmRSS of one process, MiB."""
    return round(_field_kib(f"/proc/{pid}/status", "VmRSS:") / 1024, 1)


async def product_via(port: int, token: str, sku: str) -> dict[str, Any]:
    """``GET /v1/products/{sku}`` on ``port`` once: the decoded answer; non-200 is an error."""
    raw = RawHttp("127.0.0.1", port, {"Authorization": f"Bearer {token}"})
    try:
        status, body = await raw.get(f"/v1/products/{sku}")
    finally:
        await raw.close()
    if status != 200:
        raise RuntimeError(f"GET /v1/products/{sku} on port {port}: {status} {body[:300]!r}")
    return dict(json.loads(body))


Exchange = Callable[[RawHttp], Awaitable[tuple[int, bytes]]]


async def http_loop(
    port: int, token: str, exchange: Exchange, c: int, seconds: float, server_pid: int
) -> dict[str, Any]:
    """A closed loop of ``exchange`` over raw keep-alive HTTP/1.1 connections, one per worker,
    with the CPU the serving process (tree) used meanwhile, warm-up included."""
    clients = [RawHttp("127.0.0.1", port, {"Authorization": f"Bearer {token}"}) for _ in range(c)]
    cpu_before, wall = cpu_seconds({"server": server_pid}), time.perf_counter()

    def make(worker: int) -> Callable[[], Awaitable[bool]]:
        async def call() -> bool:
            status, _ = await exchange(clients[worker])
            return bool(status == 200)

        return call

    try:
        result = await closed_loop(make, c, seconds)
    finally:
        for raw in clients:
            await raw.close()
    used = cpu_seconds({"server": server_pid})["server"] - cpu_before["server"]
    result["cpu_cores_used"] = round(used / (time.perf_counter() - wall), 2)
    return result


async def http_open_loop(
    port: int, token: str, path: str, rate: float, seconds: float, connections: int = 64
) -> dict[str, Any]:
    """``GET path`` at ``rate``/s (:func:`open_loop`) over a pool of keep-alive connections,
    each opened (and used once) before the loop: the pool hands its connections out in turn, so
    opened lazily each of the first ``connections`` calls would pay a TCP connect and the
    server's connection setup, 3 % of the calls of a 6 s loop at 350/s, all in its p99, where
    the direct gRPC loop it is compared with runs on a channel already connected."""
    pool: asyncio.Queue[RawHttp] = asyncio.Queue()
    clients = [
        RawHttp("127.0.0.1", port, {"Authorization": f"Bearer {token}"}) for _ in range(connections)
    ]
    for raw in clients:
        await raw.get(path)
        pool.put_nowait(raw)

    async def call() -> bool:
        raw = await pool.get()
        try:
            status, _ = await raw.get(path)
        finally:
            pool.put_nowait(raw)
        return bool(status == 200)

    try:
        return await open_loop(call, rate, seconds)
    finally:
        for raw in clients:
            await raw.close()


async def http_get_loop(
    port: int, token: str, sku: str, c: int, seconds: float, server_pid: int
) -> dict[str, Any]:
    """``GET /v1/products/{sku}`` in :func:`http_loop`."""
    path = f"/v1/products/{sku}"
    return await http_loop(port, token, lambda raw: raw.get(path), c, seconds, server_pid)


#: The REST lookup's product over GraphQL: every field GET /v1/products/{sku} answers.
GRAPHQL_PRODUCT = json.dumps(
    {
        "query": "query P($sku: String!) { getProduct(sku: $sku) { product { sku name"
        " description categoryId price { currencyCode amountMinor } attributes state"
        " stockOnHand stockReserved stockAvailable etag createTime updateTime archiveTime } } }",
        "variables": {"sku": "%s"},
    }
)


async def graphql_post_loop(
    port: int, token: str, sku: str, c: int, seconds: float, server_pid: int
) -> dict[str, Any]:
    """The same product lookup as a GraphQL query (``POST /graphql``) in :func:`http_loop`."""
    body = (GRAPHQL_PRODUCT % sku).encode()
    probe = RawHttp("127.0.0.1", port, {"Authorization": f"Bearer {token}"})
    try:
        status, answer = await probe.post_json("/graphql", body)
    finally:
        await probe.close()
    product = json.loads(answer).get("data", {}).get("getProduct") if status == 200 else None
    if not product:
        raise RuntimeError(f"POST /graphql getProduct: {status} {answer[:300]!r}")
    return await http_loop(
        port, token, lambda raw: raw.post_json("/graphql", body), c, seconds, server_pid
    )


#: Rounds of the gateway and grpc-gateway loops, alternated: their ratios of CPU per request,
#: throughput, p50 and p99 are the medians of the rounds' ratios. One loop each, minutes apart,
#: gave CPU ratios from 1.7 to 2.8 for the same code on this kind of shared 2-core machine.
PAIRED_ROUNDS = 3

#: Rounds of the open loop at one rate, direct gRPC and the gateway alternated. A p99 moves more
#: between rounds than a throughput: on one make run suite, eight 6 s rounds at 350/s gave the
#: gateway's p99 added over direct gRPC from -3.0 to +14.6 ms, and -24.9 ms in a round whose
#: direct loop met a 38 ms stall.
SAME_RATE_ROUNDS = 5


async def through_grpc_gateway(
    binary: Path, suite: PrivateSuite, fixture: Fixture, concurrency: int, seconds: float
) -> dict[str, Any]:
    """The same loop through grpc-gateway (Go) in front of the same catalog, started for it,
    alternated with the gateway's loop for :data:`PAIRED_ROUNDS` rounds (``paired``)."""
    token, sku = fixture.customer_tokens[0], fixture.skus[0]
    log_path = Path(suite.env["MERCATO_STATE_DIR"]) / "grpc-gateway-peer.log"
    with log_path.open("ab") as log:
        peer = await asyncio.create_subprocess_exec(
            str(binary),
            "-listen=127.0.0.1:0",
            f"-backend={suite.grpc_target('catalog')}",
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            start_new_session=True,  # its own scheduling group (SERVER_SESSION)
        )
    try:
        assert peer.stdout is not None
        try:
            line = await asyncio.wait_for(peer.stdout.readline(), PEER_READY_TIMEOUT)
        except TimeoutError:
            line = b""
        address = line.decode().partition("http://")[2].split(",")[0]
        if not address:
            raise RuntimeError(f"grpc-gateway peer did not start; see {log_path}")
        port = int(address.rpartition(":")[2])
        expected = await product_via(int(suite.env["MERCATO_GATEWAY_PORT"]), token, sku)
        try:
            answer = await product_via(port, token, sku)
        except (RuntimeError, OSError) as exc:
            raise RuntimeError(f"grpc-gateway peer: {exc}; see {log_path}") from exc
        # The same product, field by field where it matters; the whole body should match too,
        # since both render with protobuf's JSON mapping (unset fields omitted).
        for key in ("sku", "name"):
            ours, theirs = expected["product"].get(key), answer.get("product", {}).get(key)
            if ours != theirs:
                raise RuntimeError(f"grpc-gateway peer: product.{key} {theirs!r} != {ours!r}")
        idle_rss = rss_mib(peer.pid)
        gateway_port, gateway_pid = int(suite.env["MERCATO_GATEWAY_PORT"]), suite.pid("gateway")
        rounds = []
        for _ in range(PAIRED_ROUNDS):
            theirs = await http_get_loop(port, token, sku, concurrency, seconds, peer.pid)
            ours = await http_get_loop(gateway_port, token, sku, concurrency, seconds, gateway_pid)
            rounds.append({"grpc_gateway": theirs, "gateway": ours})
        result = rounds[0]["grpc_gateway"]
        result["rss_mib"] = {"idle": idle_rss, "after": rss_mib(peer.pid)}
        result["same_json_as_gateway"] = answer == expected
        result["paired"] = [
            {
                side: {
                    "per_second": loop["per_second"],
                    "cpu_ms_per_request": cpu_ms_per_request(loop),
                    "p50_ms": loop["p50_ms"],
                    "p99_ms": loop["p99_ms"],
                }
                for side, loop in pair.items()
            }
            for pair in rounds
        ]
        return result
    finally:
        if peer.returncode is None:
            peer.terminate()
            try:
                await asyncio.wait_for(peer.wait(), PEER_STOP_TIMEOUT)
            except TimeoutError:
                peer.kill()
                await peer.wait()


# SERVER_SESSION: every server the bench starts runs in a session of its own, as the suite's
# services do (the local runner starts each with start_new_session). With the kernel's
# autogroup scheduling (sched_autogroup_enabled=1) a session is a scheduling group: a server
# left in the bench's own session shares one CPU share with the load generator. That cost the
# WORKERS=2 gateway and the grpc-gateway peer about a third of their throughput before.


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def through_gateway_workers(
    suite: PrivateSuite, fixture: Fixture, concurrency: int, seconds: float, workers: int
) -> dict[str, Any]:
    """The same loop through a second gateway with ``WORKERS=workers`` (uvicorn worker
    processes on one port), started with the suite's gateway's own environment (its upstreams,
    Redis and limits), on ports of its own."""
    token, sku = fixture.customer_tokens[0], fixture.skus[0]
    raw = await asyncio.to_thread(Path(f"/proc/{suite.pid('gateway')}/environ").read_bytes)
    env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    port = _free_port()
    env.update(
        MERCATO_GATEWAY_PORT=str(port),
        MERCATO_GATEWAY_METRICS_PORT=str(_free_port()),
        MERCATO_GATEWAY_WORKERS=str(workers),
    )
    log_path = Path(suite.env["MERCATO_STATE_DIR"]) / f"gateway-workers-{workers}.log"
    with log_path.open("ab") as log:
        gateway = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mercato_gateway",
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own scheduling group (SERVER_SESSION)
        )
    try:
        deadline = time.monotonic() + PEER_READY_TIMEOUT
        while True:
            try:
                await product_via(port, token, sku)
                break
            except (RuntimeError, OSError) as exc:
                if gateway.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"gateway WORKERS={workers} did not start; see {log_path}"
                    ) from exc
                await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # every worker up, not only the first to answer
        idle_rss = memory_mib(gateway.pid, _children())["rss"]
        result = await http_get_loop(port, token, sku, concurrency, seconds, gateway.pid)
        result["workers"] = workers
        result["rss_mib"] = {"idle": idle_rss, "after": memory_mib(gateway.pid, _children())["rss"]}
        return result
    finally:
        if gateway.returncode is None:
            gateway.terminate()
            try:
                await asyncio.wait_for(gateway.wait(), PEER_STOP_TIMEOUT)
            except TimeoutError:
                gateway.kill()
                await gateway.wait()


async def get_product(
    suite: PrivateSuite, fixture: Fixture, concurrency: int, seconds: float, peer: Path | None
) -> dict[str, Any]:
    """Direct gRPC (the limit), the gateway, and grpc-gateway (the peer) unless ``peer`` is None:
    the same token, SKU, concurrency and duration."""
    token = fixture.customer_tokens[0]
    sku = fixture.skus[0]
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(suite.grpc_target("catalog")) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        request = catalog_pb2.GetProductRequest(sku=sku)

        def make_grpc(_: int) -> Callable[[], Awaitable[bool]]:
            async def call() -> bool:
                await stub.GetProduct(request, metadata=metadata, timeout=10)
                return True

            return call

        direct = await closed_loop(make_grpc, concurrency, seconds)
        port = int(suite.env["MERCATO_GATEWAY_PORT"])
        gateway = await http_get_loop(port, token, sku, concurrency, seconds, suite.pid("gateway"))
        # The latency the gateway adds, at a rate both paths serve without queueing: half the
        # gateway's closed-loop throughput, open loop (latency from each scheduled send), the
        # two paths alternated for SAME_RATE_ROUNDS rounds: one stall of the shared machine (an
        # expiry sweep, another process's burst) lands in one round's p99, not in the median.
        rate = round(gateway["per_second"] / 2, -1) or 10.0
        rounds = []
        for _ in range(SAME_RATE_ROUNDS):
            direct_round = await open_loop(make_grpc(0), rate, seconds)
            gateway_round = await http_open_loop(port, token, f"/v1/products/{sku}", rate, seconds)
            rounds.append({"grpc_direct": direct_round, "gateway": gateway_round})
        same_rate = {"rate": rate, "rounds": rounds}
    graphql = await graphql_post_loop(port, token, sku, concurrency, seconds, suite.pid("gateway"))
    results = {
        "grpc_direct": direct,
        "gateway": gateway,
        "gateway_graphql": graphql,
        "same_rate": same_rate,
    }
    results["gateway_workers_2"] = await through_gateway_workers(
        suite, fixture, concurrency, seconds, workers=2
    )
    if peer is not None:
        results["grpc_gateway"] = await through_grpc_gateway(
            peer, suite, fixture, concurrency, seconds
        )
    return results


async def rate_search(
    call: Callable[[], Awaitable[bool]], ceiling: float, steps: int, seconds: float
) -> dict[str, Any]:
    """Bisection over offered rates in (0, ceiling]: a step holds when p99 < 100 ms, no errors
    and at least 95 % of the offered calls completed."""
    low, high = 0.0, ceiling
    tried: list[dict[str, Any]] = []
    for _ in range(steps):
        rate = (low + high) / 2 if tried else ceiling * 0.6
        # At least ~40 orders per step (a p99 of fewer is a maximum), at most 2 x seconds.
        duration = min(max(seconds, 40 / rate), 2 * seconds)
        result = await open_loop(call, rate, duration)
        held = (
            result["errors"] == 0
            and result["p99_ms"] is not None
            and result["p99_ms"] < P99_TARGET_MS
            and result["ok"] >= 0.95 * int(rate * duration)
        )
        result["held"] = held
        tried.append(result)
        if held:
            low = rate
        else:
            high = rate
        await asyncio.sleep(1.0)  # let queues drain between steps
    best = max((r for r in tried if r["held"]), key=lambda r: r["offered_per_second"], default=None)
    return {
        "held_per_second": None if best is None else best["offered_per_second"],
        "held_step": best,
        "steps": tried,
    }


async def freshness(
    suite: PrivateSuite,
    fixture: Fixture,
    call: Callable[[], Awaitable[bool]],
    rate: float,
    seconds: float,
    poll: float,
) -> dict[str, Any]:
    """Orders at ``rate`` for ``seconds``; analytics' ``placed`` count polled every ``poll`` s.
    The k-th order answered counts as seen when ``placed`` first reaches baseline + k."""
    metadata = (("authorization", f"Bearer {fixture.admin_token}"),)
    analytics_metrics = (
        f"http://127.0.0.1:{suite.status()['services']['analytics']['metrics_port']}/metrics"
    )
    topic_label = f'topic="{ORDER_EVENTS_TOPIC}"'
    histogram_before = await asyncio.to_thread(
        scrape_buckets, analytics_metrics, APPLY_LATENCY, topic_label
    )
    # A window from just before this run: the funnel query then reads this run's facts only,
    # which keeps each poll short (the bounds below are as tight as a poll is quick).
    start_time = Timestamp(seconds=int(time.time()) - 60)

    async with grpc.aio.insecure_channel(suite.grpc_target("analytics")) as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)

        async def placed(timeout: float = 5.0) -> int:  # noqa: ASYNC109 - the gRPC deadline
            end = Timestamp()
            end.FromSeconds(int(time.time()) + 86400)
            request = analytics_pb2.GetFunnelRequest(start_time=start_time, end_time=end)
            return int((await stub.GetFunnel(request, metadata=metadata, timeout=timeout)).placed)

        # Right after the rate search analytics may still be applying its backlog, and the
        # funnel query reads every fact of the window: the baseline may take longer.
        baseline = await placed(timeout=60.0)
        counts: list[tuple[float, float, int]] = []  # (query sent, answer received, placed)
        answered: list[float] = []
        done = asyncio.Event()

        async def poller() -> None:
            while True:
                sent = time.time()
                value = await placed()
                counts.append((sent, time.time(), value - baseline))
                if done.is_set() and value - baseline >= len(answered):
                    return
                await asyncio.sleep(poll)

        poll_task = asyncio.create_task(poller())
        load = await open_loop(call, rate, seconds, on_success=answered.append)
        done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(poll_task), 30)
        poll_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await poll_task
        lag = await stub.GetFreshness(
            analytics_pb2.GetFreshnessRequest(), metadata=metadata, timeout=5
        )
    histogram_after = await asyncio.to_thread(
        scrape_buckets, analytics_metrics, APPLY_LATENCY, topic_label
    )
    server = {q: bucket_quantile(q, histogram_before, histogram_after) for q in (0.5, 0.99)}
    answered.sort()
    # Upper bound: the answer of the first poll that saw the order; lower bound: the time that
    # poll was sent (the count is a snapshot taken somewhere in between).
    delays, lower, index = [], [], 0
    for k, at in enumerate(answered, start=1):
        while index < len(counts) and counts[index][2] < k:
            index += 1
        if index == len(counts):
            break
        lower.append(max(0.0, counts[index][0] - at))
        delays.append(max(0.0, counts[index][1] - at))
    p50, p99 = pct(delays, 0.5), pct(delays, 0.99)
    low50, low99 = pct(lower, 0.5), pct(lower, 0.99)
    query_ms = [(answer - sent) * 1000 for sent, answer, _ in counts]
    return {
        "lower_bound_p50_ms": None if low50 is None else round(low50 * 1000, 1),
        "lower_bound_p99_ms": None if low99 is None else round(low99 * 1000, 1),
        "poll_query_mean_ms": round(statistics.fmean(query_ms), 1) if query_ms else None,
        "offered_per_second": round(rate, 1),
        "orders": load,
        "counted": len(delays),
        "answered": len(answered),
        "poll_interval_ms": poll * 1000,
        "p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "mean_ms": round(statistics.fmean(delays) * 1000, 1) if delays else None,
        "total_lag_after": int(lag.total_lag),
        "server_side": {
            "what": "analytics' mercato_analytics_event_apply_latency_seconds for "
            f"{ORDER_EVENTS_TOPIC} (event time to effect applied), this run's observations",
            "events": int(
                histogram_after.get(float("inf"), 0.0) - histogram_before.get(float("inf"), 0.0)
            ),
            "p50_ms": None if server[0.5] is None else round(server[0.5] * 1000, 1),
            "p99_ms": None if server[0.99] is None else round(server[0.99] * 1000, 1),
        },
    }


# --- report -----------------------------------------------------------------------------------


def ratio(value: float | None, reference: float | None) -> str:
    if not value or not reference:
        return "—"
    quotient = value / reference
    return f"{quotient:.2f}" if quotient >= 0.1 else f"{quotient:.4f}"


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    return f"{text}{unit}"


PEER_NOTE = (
    "grpc-gateway (Go, generated from the same protos) passes the bearer token on to catalog, "
    "which verifies it in every case; the gateway also verifies it itself, checks its scope and "
    "applies the shared rate limit (Redis, tokens taken in leases) on each request."
)


def cpu_ms_per_request(result: dict[str, Any]) -> float | None:
    """CPU time of the serving process per request, ms (warm-up: same rate, not counted)."""
    if not result.get("cpu_cores_used") or not result.get("per_second"):
        return None
    return round(1000 * float(result["cpu_cores_used"]) / float(result["per_second"]), 3)


Row = tuple[str, str, str, str]  # a table row: figure, value, reference, ratio


def compared(label: str, result: dict[str, Any], reference: dict[str, Any], name: str) -> list[Row]:
    """A closed loop's throughput row and its p50 / p99 row, each with its ratio to the
    ``reference`` loop (called ``name`` in the table)."""
    return [
        (
            label,
            fmt(result["per_second"], "/s"),
            name,
            ratio(result["per_second"], reference["per_second"]),
        ),
        (
            "  p50 / p99",
            f"{fmt(result['p50_ms'])} / {fmt(result['p99_ms'])} ms",
            name,
            f"{ratio(result['p50_ms'], reference['p50_ms'])} / "
            f"{ratio(result['p99_ms'], reference['p99_ms'])}",
        ),
    ]


def _median_ratio(pairs: list[dict[str, Any]], key: str) -> tuple[float | None, list[float]]:
    """The median over alternated rounds of gateway ÷ grpc-gateway for ``key``, and each
    round's ratio."""
    ratios = [
        round(pair["gateway"][key] / pair["grpc_gateway"][key], 2)
        for pair in pairs
        if pair["gateway"][key] and pair["grpc_gateway"][key]
    ]
    return (statistics.median(ratios) if ratios else None), ratios


def peer_rows(get_product: dict[str, Any], memory: dict[str, Any], c: int) -> list[Row]:
    """The grpc-gateway (Go) rows: against direct gRPC (its limit) and the gateway (its peer),
    the gateway's figures from the rounds alternated with it."""
    peer = get_product.get("grpc_gateway")
    if peer is None:
        return [("via grpc-gateway (Go peer)", "not measured (--no-peer)", "", "")]
    direct = get_product["grpc_direct"]
    pairs: list[dict[str, Any]] = peer.get("paired") or []
    rss, gateway_rss = peer["rss_mib"], memory["idle_rss_mib"].get("gateway")
    rows = [
        *compared(f"via grpc-gateway, the Go peer (c={c})", peer, direct, "direct gRPC"),
        (
            "  grpc-gateway RSS idle / after its run",
            f"{fmt(rss['idle'])} / {fmt(rss['after'])} MiB",
            "idle",
            ratio(rss["after"], rss["idle"]),
        ),
        (
            "  gateway ÷ grpc-gateway: idle RSS",
            f"{fmt(gateway_rss)} / {fmt(rss['idle'])} MiB",
            "grpc-gateway",
            ratio(gateway_rss, rss["idle"]),
        ),
    ]

    def cpu_ms(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    for key, label, unit, shown in (
        ("per_second", "throughput", "/s", fmt),
        ("cpu_ms_per_request", "CPU ms per request", " ms", cpu_ms),
        ("p50_ms", "p50", " ms", fmt),
        ("p99_ms", "p99", " ms", fmt),
    ):
        median, ratios = _median_ratio(pairs, key)
        values = ", ".join(
            f"{shown(pair['gateway'][key])} / {shown(pair['grpc_gateway'][key])}" for pair in pairs
        )
        each = ", ".join(f"{r:.2f}" for r in ratios)
        rows.append(
            (
                f"gateway ÷ grpc-gateway: {label}, {len(pairs)} alternated rounds",
                f"{values}{unit}",
                "grpc-gateway",
                f"median {'—' if median is None else f'{median:.2f}'} ({each})",
            )
        )
    return rows


def same_rate_rows(get_product: dict[str, Any]) -> list[Row]:
    """The gateway's latency over direct gRPC at one offered rate, in alternated rounds: each
    round's figures and the median of the rounds' added latency (goal: p99 added <= 3 ms)."""
    same = get_product.get("same_rate")
    if same is None:
        return []
    rounds: list[dict[str, Any]] = same["rounds"]
    rows: list[Row] = []
    for q, label, goal in (("p50_ms", "p50", ""), ("p99_ms", "p99", " (goal <= 3 ms)")):
        pairs = [(r["grpc_direct"][q], r["gateway"][q]) for r in rounds]
        added = [round(ours - direct, 2) for direct, ours in pairs if None not in (direct, ours)]
        median = statistics.median(added) if added else None
        rows.append(
            (
                f"open loop at {fmt(same['rate'])}/s, {len(rounds)} alternated rounds: "
                f"direct gRPC / gateway {label}",
                ", ".join(f"{fmt(direct)} / {fmt(ours)}" for direct, ours in pairs) + " ms",
                f"added{goal}",
                f"median {fmt(median)} ms ({', '.join(fmt(a) for a in added)})",
            )
        )
    completed = ", ".join(
        f"{r['grpc_direct']['ok']} / {r['grpc_direct']['errors']}, "
        f"{r['gateway']['ok']} / {r['gateway']['errors']}"
        for r in rounds
    )
    rows.append(("  completed / errors, direct and gateway by round", completed, "", ""))
    return rows


def graphql_rows(get_product: dict[str, Any], c: int) -> list[Row]:
    """The same lookup as a GraphQL query, against the REST one of the same run (goal >= 0.8)."""
    graphql, rest = get_product.get("gateway_graphql"), get_product["gateway"]
    if graphql is None:
        return []
    graphql_cpu_ms, rest_cpu_ms = cpu_ms_per_request(graphql), cpu_ms_per_request(rest)
    return [
        *compared(f"via the gateway, GraphQL getProduct (c={c})", graphql, rest, "REST"),
        (
            "  CPU ms per request, GraphQL / REST",
            f"{graphql_cpu_ms or 0:.2f} / {rest_cpu_ms or 0:.2f} ms",
            "REST",
            ratio(graphql_cpu_ms, rest_cpu_ms),
        ),
    ]


def workers_rows(get_product: dict[str, Any], c: int) -> list[Row]:
    """A second gateway with WORKERS=2 against the first (WORKERS=1), same loop."""
    one, two = get_product["gateway"], get_product.get("gateway_workers_2")
    if two is None:
        return []
    return [
        *compared(f"via a gateway with WORKERS=2 (c={c})", two, one, "WORKERS=1"),
        (
            "  CPU cores used / RSS idle (all processes)",
            f"{two['cpu_cores_used']:.2f} / {fmt(two['rss_mib']['idle'])} MiB",
            "WORKERS=1",
            ratio(two["cpu_cores_used"], one["cpu_cores_used"]),
        ),
    ]


def order_cpu_rows(orders: dict[str, Any]) -> list[Row]:
    """CPU per order in the measured loop, and in the warm-up before it (a fresh JVM)."""

    def text(result: dict[str, Any]) -> str:
        per_order = cpu_ms_per_order(result)
        if not per_order:
            return "—"
        each = ", ".join(f"{name} {ms:.1f}" for name, ms in per_order.items())
        return f"{sum(per_order.values()):.1f} ms ({each})"

    fixed, warmup = orders["fixed_concurrency"], orders.get("warmup")
    rows: list[Row] = [("  CPU per order, all server processes", text(fixed), "", "")]
    if warmup and warmup.get("per_second"):
        rows.append(
            (
                f"  the {warmup['seconds']:g} s of orders before the loop (not in its figures)",
                f"{fmt(warmup['per_second'], ' orders/s')}; CPU per order {text(warmup)}",
                "closed loop",
                ratio(warmup["per_second"], fixed["per_second"]),
            )
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    m, lim, r = report["machine"], report["limits"], report["results"]
    echo, pg, kafka = lim["grpc_echo"], lim["postgres_commits"], lim["kafka"]
    direct, gateway = r["get_product"]["grpc_direct"], r["get_product"]["gateway"]
    orders, search, fresh = (
        r["orders"]["fixed_concurrency"],
        r["orders"]["rate_search"],
        r["freshness"],
    )
    c = report["concurrency"]
    rows_peer = peer_rows(r["get_product"], report["memory"], c)
    rows = [
        ("**Limits**", "", "", ""),
        (f"bare grpc.aio unary echo (c={c})", fmt(echo["per_second"], "/s"), "", ""),
        ("  p50 / p99", f"{fmt(echo['p50_ms'])} / {fmt(echo['p99_ms'])} ms", "", ""),
        (f"PostgreSQL single-row commits (c={c})", fmt(pg["per_second"], "/s"), "", ""),
        ("aiokafka produce, 512 B, acks=all", fmt(kafka["produce_per_second"], " msg/s"), "", ""),
        ("aiokafka consume", fmt(kafka["consume_per_second"], " msg/s"), "", ""),
        ("**GET /v1/products/{sku}**", "", "", ""),
        *compared(f"direct gRPC GetProduct (c={c})", direct, echo, "grpc echo"),
        *compared(f"via the gateway (c={c})", gateway, direct, "direct gRPC"),
        *same_rate_rows(r["get_product"]),
        *graphql_rows(r["get_product"], c),
        *workers_rows(r["get_product"], c),
        *rows_peer,
        (f"**POST /v1/orders (2 lines of {report['products']} SKUs)**", "", "", ""),
        (
            f"closed loop (c={c})",
            fmt(orders["per_second"], " orders/s"),
            "PG commits",
            ratio(orders["per_second"], pg["per_second"]),
        ),
        ("  p50 / p99", f"{fmt(orders['p50_ms'])} / {fmt(orders['p99_ms'])} ms", "", ""),
        *order_cpu_rows(r["orders"]),
        (
            "highest rate held, p99 < 100 ms",
            fmt(search["held_per_second"], " orders/s"),
            "closed loop",
            ratio(search["held_per_second"], orders["per_second"]),
        ),
        ("**Order → analytics freshness**", "", "", ""),
        (
            f"at {fmt(fresh['offered_per_second'], ' orders/s')}, analytics' apply latency "
            "(its histogram) p50 / p99",
            f"{fmt(fresh['server_side']['p50_ms'])} / {fmt(fresh['server_side']['p99_ms'])} ms"
            f" ({fresh['server_side']['events']} order events)",
            "",
            "",
        ),
        (
            "  create answered → seen in GetFunnel p50 / p99",
            f"{fmt(fresh['p50_ms'])} / {fmt(fresh['p99_ms'])} ms",
            f"poll {fresh['poll_interval_ms']:.0f} ms",
            f"{ratio(fresh['p50_ms'], fresh['poll_interval_ms'])} / "
            f"{ratio(fresh['p99_ms'], fresh['poll_interval_ms'])}",
        ),
        (
            "  (bounds: poll sent / answered)",
            f"{fmt(fresh.get('lower_bound_p50_ms'))} to {fmt(fresh['p50_ms'])} / "
            f"{fmt(fresh.get('lower_bound_p99_ms'))} to {fmt(fresh['p99_ms'])} ms",
            "",
            "",
        ),
        (
            "  orders during it: p50 / p99",
            f"{fmt(fresh['orders']['p50_ms'])} / {fmt(fresh['orders']['p99_ms'])} ms",
            "100 ms target",
            ratio(fresh["orders"]["p99_ms"], P99_TARGET_MS),
        ),
        ("**Memory, RSS of each process tree** idle / peak under load", "", "", ""),
    ]
    memory = report["memory"]
    for name, idle in memory["idle_rss_mib"].items():
        peak = memory["peak_rss_mib"].get(name)
        pss = f"{fmt(memory['idle_mib'].get(name))} / {fmt(memory['peak_mib'].get(name))}"
        rows.append(
            (f"  {name}", f"{fmt(idle)} / {fmt(peak)} MiB (PSS {pss})", "idle", ratio(peak, idle))
        )
    idle_total, peak_total = sum(memory["idle_mib"].values()), sum(memory["peak_mib"].values())
    rows.append(
        (
            "  total (PSS: shared pages counted once)",
            f"{fmt(idle_total)} / {fmt(peak_total)} MiB",
            "idle",
            ratio(peak_total, idle_total),
        )
    )
    cores = orders.get("cpu_cores_used", {})
    if cores:
        busy = ", ".join(f"{k} {v:.2f}" for k, v in cores.items() if v is not None)
        rows.append((f"CPU cores used during POST /v1/orders (c={c})", busy, "", ""))
    means = []
    for service_means in orders.get("server_side_mean_ms", {}).values():
        for series, (_, mean) in service_means.items():
            if 'grpc_method="' in series:
                means.append((series.split('grpc_method="')[1].split('"')[0], mean))
            elif 'route="' in series:
                means.append(("gateway " + series.split('route="')[1].split('"')[0], mean))
    if means:
        text = ", ".join(f"{name} {mean:.1f}" for name, mean in means)
        rows.append(("server-side mean ms during it", text, "", ""))
    trips = orders.get("round_trips", {})
    if trips.get("per_order"):
        rows.append(
            (
                f"**Round trips per order** ({trips['orders_placed']:,} orders placed)",
                "",
                "",
                "",
            )
        )
        for service, counts in trips["per_order"].items():
            text = ", ".join(f"{kind} {count:g}" for kind, count in counts.items())
            rows.append((f"  {service}", text, "", ""))
    profiles = orders.get("profiles", {})
    if profiles:
        rows.append(
            (
                "**Own time under the order load** (py-spy, top functions)",
                f"{fmt(profiles.get('orders_per_second_while_sampled'))} orders/s while sampled",
                "",
                "",
            )
        )
        for service, profile in profiles.items():
            if not isinstance(profile, dict):
                continue
            text = profile.get("error") or ", ".join(
                f"{name} {share}%" for name, share in profile.get("top_own_time", [])
            )
            rows.append((f"  {service}", text.replace("|", "\\|"), "", ""))
    for when, idle in report.get("idle", {}).items():
        busy = ", ".join(f"{k} {v:.2f}" for k, v in idle["percent_of_a_core"].items())
        rows.append(
            (
                f"**Idle CPU, {when.replace('_', ' ')}** ({idle['seconds']:.0f} s, % of a core)",
                f"services and their stores {idle['services_and_stores']:.2f} %, "
                f"whole suite {idle['whole_suite']:.2f} %",
                "1 % / 4 % targets",
                "",
            )
        )
        rows.append(("  per process", busy, "", ""))
    rows.append(
        (
            "**Start → ready** (stack + services + sample catalog)",
            fmt(report["ready_seconds"], " s"),
            "",
            "",
        )
    )
    lines = [
        f"# mercato bench, {report['time']}",
        "",
        f"Machine: {m['platform']}, {m['cpus']} CPUs, {m['memory_mib']:,} MiB, Python "
        f"{m['python']}; load average before / after the run {m['loadavg_before']} / "
        f"{m.get('loadavg_after', '?')}. "
        "Load generator, suite and stack share the machine."
        + (
            f" gRPC services on the {report['event_loop']} event loop."
            if "event_loop" in report
            else ""
        ),
        "",
        "| Figure | Value | Reference | Ratio |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c_} | {d} |" for a, b, c_, d in rows),
        "",
        *(f"Not measured: {item}." for item in report.get("not_measured", [])),
        *([PEER_NOTE] if r["get_product"].get("grpc_gateway") else []),
        "",
    ]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


async def run(suite: PrivateSuite, args: argparse.Namespace, report: dict[str, Any]) -> None:
    c, seconds = args.concurrency, args.seconds
    memory = Memory(suite.pids())
    await asyncio.sleep(2.0)
    await asyncio.to_thread(memory.sample_idle)
    report["memory"] = {
        "idle_mib": memory.idle,
        "peak_mib": memory.peak,
        "idle_rss_mib": memory.idle_rss,
        "peak_rss_mib": memory.peak_rss,
        "note": "*_mib: PSS of the process tree; *_rss_mib: VmRSS summed over the tree",
    }

    print(f"idle, freshly started: {args.idle_seconds:.0f} s", flush=True)
    report["idle"] = {"fresh": await idle_cpu(memory.pids, args.idle_seconds)}

    print("limits: grpc echo, postgres, kafka", flush=True)
    limits = report["limits"]
    limits["grpc_echo"] = await grpc_echo_limit(c, seconds)
    limits["postgres_commits"] = await postgres_limit(suite.stack.postgres_dsn(), c, seconds)
    limits["kafka"] = await kafka_limits(suite.stack.kafka_bootstrap, args.kafka_messages, 30)

    async with httpx.AsyncClient(
        base_url=suite.url,
        timeout=15,
        limits=httpx.Limits(max_connections=300, max_keepalive_connections=300),
    ) as client:
        fixture = await prepare(client, products=args.products, customers=8)
        results = report["results"]
        async with memory.watching():
            peer = args.peer_binary
            print(
                "GET /v1/products/{sku}: direct gRPC, gateway"
                + ("" if peer is None else ", grpc-gateway peer"),
                flush=True,
            )
            results["get_product"] = await get_product(suite, fixture, c, seconds, peer)

            print("POST /v1/orders: fixed concurrency", flush=True)
            metrics = {
                name: f"http://127.0.0.1:{info['metrics_port']}/metrics"
                for name, info in suite.status()["services"].items()
                if info.get("metrics_port")
            }
            warmup = await orders_with_cpu(client, fixture, c, args.warmup_seconds, memory.pids)
            scraped = {name: await asyncio.to_thread(scrape, url) for name, url in metrics.items()}
            fixed = await orders_with_cpu(client, fixture, c, seconds, memory.pids)
            rescraped = {
                name: await asyncio.to_thread(scrape, url) for name, url in metrics.items()
            }
            fixed["server_side_mean_ms"] = {
                name: server_means(scraped[name], rescraped[name]) for name in metrics
            }
            fixed["round_trips"] = round_trips(scraped, rescraped)
            results["orders"] = {"fixed_concurrency": fixed, "warmup": warmup}
            if args.profile:
                print("POST /v1/orders: py-spy profiles of every Python service", flush=True)
                results["orders"]["profiles"] = await profile_services(
                    memory.pids,
                    lambda w: order_call(client, fixture, w),
                    c,
                    seconds,
                    report["time"][:10],
                )

            print("POST /v1/orders: rate search", flush=True)
            calls = [order_call(client, fixture, w) for w in range(8)]

            async def spread() -> bool:
                return await random.choice(calls)()

            ceiling = max(5.0, fixed["per_second"] * 1.2)
            search = await rate_search(spread, ceiling, args.steps, args.step_seconds)
            results["orders"]["rate_search"] = search

            rate = search["held_per_second"] or max(2.0, fixed["per_second"] * 0.25)
            print(f"freshness at {rate:.0f} orders/s", flush=True)
            results["freshness"] = await freshness(
                suite, fixture, spread, rate, args.seconds * 1.5, args.poll
            )
    print(f"idle, after the load: {args.idle_seconds:.0f} s", flush=True)
    await asyncio.sleep(5.0)  # the relays and consumers drain what the load left
    report["idle"]["after_load"] = await idle_cpu(memory.pids, args.idle_seconds)
    if args.settle_seconds > 0:
        # The same once the work the load left behind (roll-ups of its last minutes, the
        # stores' vacuum and checkpoints) is done: what stays is the idle cost of the data.
        print(f"idle, {args.settle_seconds:.0f} s later: {args.idle_seconds:.0f} s", flush=True)
        await asyncio.sleep(args.settle_seconds)
        report["idle"]["after_load_settled"] = await idle_cpu(memory.pids, args.idle_seconds)


def reset_state(env: dict[str, str]) -> None:
    """Empty the bench's state folder but for the linked build cache (no suite may run on it;
    a stack left over from an interrupted run is stopped first)."""
    state_dir = Path(env["MERCATO_STATE_DIR"])
    if running_status(state_dir) is not None:
        raise SystemExit(f"a suite runs on {state_dir}: stop it first")
    Stack(StackConfig.from_env(env)).down()
    if state_dir.is_dir():
        for entry in state_dir.iterdir():
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            elif entry.name != "cache":
                shutil.rmtree(entry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0, help="per closed-loop case")
    parser.add_argument("--steps", type=int, default=5, help="rate search steps")
    parser.add_argument("--step-seconds", type=float, default=6.0)
    parser.add_argument("--poll", type=float, default=0.05, help="analytics poll interval, s")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=20.0,
        help="orders placed before the measured order loop (reported apart): a fresh broker's "
        "JVM compiles its produce and fetch paths during the first minutes of load",
    )
    parser.add_argument("--kafka-messages", type=int, default=20000)
    parser.add_argument(
        "--products",
        type=int,
        default=64,
        help="SKUs the orders draw their 2 lines from (fewer: hotter product documents)",
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=30.0, help="each idle measurement (no traffic)"
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=60.0,
        help="the wait before idle is measured once more after the load (0: not measured)",
    )
    parser.add_argument(
        "--name", default="", help="results file suffix: bench/results/<date>-<name>.json, .md"
    )
    parser.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default=None,
        help="run the gRPC services on this event loop (default: their EVENT_LOOP default)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy profiles of every Python service under the order load",
    )
    parser.add_argument(
        "--keep-state",
        action="store_true",
        help="start from the last run's state folder instead of an empty one",
    )
    parser.add_argument(
        "--no-peer",
        action="store_true",
        help="skip the grpc-gateway (Go) peer of GET /v1/products/{sku} (e.g. no Go toolchain)",
    )
    args = parser.parse_args()
    # Built (or found up to date) before the suite starts: a first build takes minutes.
    args.peer_binary = None if args.no_peer else build_grpc_gateway_peer()

    now = datetime.now(UTC)
    report: dict[str, Any] = {
        "benchmark": "mercato suite (make bench)",
        "time": now.isoformat(timespec="seconds"),
        "concurrency": args.concurrency,
        "products": args.products,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
            "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        },
        "limits": {},
        "results": {},
        "not_measured": ["grpc-gateway (Go) peer: --no-peer"] if args.no_peer else [],
    }
    env = bench_env()
    if args.event_loop is not None:
        for service in ("AUTH", "CATALOG", "ORDERS", "ANALYTICS"):
            env[f"MERCATO_{service}_EVENT_LOOP"] = args.event_loop
        report["event_loop"] = args.event_loop
    if not args.keep_state:
        reset_state(env)
    print(f"starting a private suite on {env['MERCATO_STATE_DIR']}", flush=True)
    suite = start_private_suite(env, ready_timeout=READY_TIMEOUT)
    report["ready_seconds"] = suite.ready_seconds
    print(f"ready in {suite.ready_seconds} s", flush=True)
    try:
        asyncio.run(asyncio.wait_for(run(suite, args, report), 600))
    finally:
        print("stopping the suite", flush=True)
        stop_private_suite(suite, stop_timeout=STOP_TIMEOUT)
    report["machine"]["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / (now.strftime("%Y-%m-%d") + (f"-{args.name}" if args.name else ""))
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    stem.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
