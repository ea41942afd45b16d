"""The suite in real pods: the chart installed on a real node (containerd, runc, CNI, kubelet,
kube-proxy, CoreDNS), its hooks run as real Jobs, its probes real gRPC and HTTP checks, and the
users' journeys through the cluster's gateway Service."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import asyncpg
import httpx
import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from kubernetes import client
from pods_support import ADMIN_EMAIL, NAMESPACE, RELEASE, ROOT, TIMINGS, Release, helm

pytestmark = pytest.mark.pods

#: Seconds for a killed pod's work to settle (the saga's repairs, analytics catching up).
SETTLE_TIMEOUT = 120.0


def wait_for(check, timeout: float, what: str, interval: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s (last: {result!r})")
        time.sleep(interval)


class Gateway:
    """A client of the gateway Service as one user."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        self.token = token

    def call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return self.http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]

    def ok(self, method: str, path: str, **kwargs: object) -> dict[str, object]:
        response = self.call(method, path, **kwargs)
        assert response.status_code == 200, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return dict(response.json())

    def login(self, email: str, password: str) -> Gateway:
        body = self.ok("POST", "/v1/auth/login", json={"email": email, "password": password})
        return Gateway(str(self.http.base_url), str(body["access_token"]))


@pytest.fixture(scope="module")
def admin(release: Release) -> Gateway:
    gateway = Gateway(release.gateway_url)
    return wait_for(
        lambda: _try_login(gateway, release.admin_password), 60, "the bootstrap admin logs in"
    )


def _try_login(gateway: Gateway, password: str) -> Gateway | None:
    try:
        return gateway.login(ADMIN_EMAIL, password)
    except (AssertionError, httpx.HTTPError):
        return None


def test_every_pod_runs_a_real_container_and_is_ready(release: Release) -> None:
    pods = release.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}"
    ).items
    services = [p for p in pods if p.metadata.labels.get("mercato.io/test") != "true"]
    components = {p.metadata.labels["app.kubernetes.io/component"] for p in services}
    assert {"auth", "catalog", "orders", "analytics", "gateway"} <= components
    for pod in services:
        if pod.status.phase == "Succeeded":  # a hook Job's pod kept by its policy
            continue
        assert pod.spec.node_name == "mercato-node", pod.metadata.name
        assert pod.status.pod_ip.startswith("10.85."), (pod.metadata.name, pod.status.pod_ip)
        component = pod.metadata.labels["app.kubernetes.io/component"]
        for status in pod.status.container_statuses:
            assert status.ready, (pod.metadata.name, status.state)
            # A containerd container of the image built from this checkout, by digest.
            assert status.container_id.startswith("containerd://"), status.container_id
            assert status.image_id.endswith(release.digests[component]), (
                pod.metadata.name,
                status.image_id,
            )


def test_migration_hooks_ran_as_real_jobs(release: Release) -> None:
    """The pre-install Jobs migrated the pods' databases (their tables exist), and the topics
    Job created every topic of files/topics.yaml."""
    for database in ("auth", "orders"):
        rows = _query(
            release, database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
        tables = {row[0] for row in rows}
        assert "outbox" in tables, (database, tables)

    async def topics() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=release.stack.kafka_bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    declared = yaml.safe_load((ROOT / "deploy/helm/mercato/files/topics.yaml").read_text())
    names = {topic["name"] for topic in declared["topics"]}
    assert names <= asyncio.run(topics())


def test_helm_test_passes_on_real_pods(release: Release) -> None:
    started = time.monotonic()
    result = helm("test", RELEASE, "--namespace", NAMESPACE, "--timeout", "5m")
    TIMINGS["helm test"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Phase:          Succeeded") >= 5, result.stdout


def test_journeys_through_the_gateway_service(release: Release, admin: Gateway) -> None:
    """The e2e journeys (register, browse, order, pay, fulfil, analytics), unchanged, against the
    cluster's gateway Service instead of a local suite."""
    response = admin.call("POST", "/v1/categories", json={"id": "books", "displayName": "Books"})
    assert response.status_code in (200, 409), response.text
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "e2e" / "test_journeys.py"),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "MERCATO_E2E_GATEWAY_URL": release.gateway_url,
            "MERCATO_BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
            "MERCATO_BOOTSTRAP_ADMIN_PASSWORD": release.admin_password,
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    TIMINGS["e2e journeys through the gateway Service"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    print(f"\ne2e journeys through {release.gateway_url}: {result.stdout.strip().splitlines()[-1]}")
    assert " passed" in result.stdout, result.stdout[-2000:]
    assert "skipped" not in result.stdout, result.stdout[-2000:]


def _funnel_placed(admin: Gateway) -> int:
    now = dt.datetime.now(dt.UTC)
    funnel = admin.ok(
        "GET",
        "/v1/analytics/funnel",
        params={
            "startTime": "2000-01-01T00:00:00Z",
            "endTime": (now + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    return int(funnel.get("placed", 0))  # type: ignore[call-overload]


def _query(release: Release, database: str, sql: str) -> list[asyncpg.Record]:
    """Rows of ``sql`` in one of the pods' databases, read directly as an operator would."""

    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(release.stack.postgres_dsn(database), timeout=5)
        try:
            return list(await connection.fetch(sql))
        finally:
            await connection.close()

    return asyncio.run(fetch())


def _orders_in_store(release: Release) -> int:
    return int(_query(release, "orders", "SELECT count(*) FROM orders")[0][0])


def test_an_orders_pod_killed_during_load_loses_nothing(release: Release, admin: Gateway) -> None:
    """Orders placed through the gateway Service while one of the two orders pods is killed
    (deleted with no grace): every accepted order holds its stock once and is counted once by
    analytics; nothing is accepted and then lost."""
    response = admin.call("POST", "/v1/categories", json={"id": "books", "displayName": "Books"})
    assert response.status_code in (200, 409), response.text
    sku = f"PODS-{uuid.uuid4().hex[:10].upper()}"
    admin.ok(
        "POST",
        "/v1/products",
        json={
            "sku": sku,
            "name": f"Pods drill {sku}",
            "categoryId": "books",
            "price": {"currencyCode": "EUR", "amountMinor": "1000"},
        },
    )
    stock = 200
    admin.ok("POST", f"/v1/products/{sku}:adjustStock", json={"delta": stock, "reason": "drill"})
    anonymous = Gateway(release.gateway_url)
    email = f"pods-{uuid.uuid4().hex[:12]}@example.com"
    password = "pods-correct-horse-battery"
    anonymous.ok(
        "POST",
        "/v1/users",
        json={
            "email": email,
            "displayName": "Pods drill",
            "password": password,
        },
    )
    customer = anonymous.login(email, password)

    # Quiet first: analytics has counted every order so far.
    baseline = (
        wait_for(
            lambda: (n := _orders_in_store(release)) == _funnel_placed(admin) and n + 1,
            SETTLE_TIMEOUT,
            "analytics caught up before the drill",
        )
        - 1
    )
    victims = release.pods("orders")
    assert len(victims) == 2, [p.metadata.name for p in victims]

    statuses: Counter[int] = Counter()
    accepted: list[str] = []
    count, interval = 40, 0.5

    def load() -> None:
        for _ in range(count):
            began = time.monotonic()
            try:
                reply = customer.call(
                    "POST",
                    "/v1/orders",
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                    json={"lines": [{"sku": sku, "quantity": 1}]},
                )
            except httpx.HTTPError:
                statuses[0] += 1
            else:
                statuses[reply.status_code] += 1
                if reply.status_code == 200:
                    accepted.append(reply.json()["order"]["id"])
            time.sleep(max(0.0, interval - (time.monotonic() - began)))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(5)
    # Kill the pod that is serving the orders at that moment (the gateway's channel may still
    # hold only the pod it resolved first: gRPC re-resolves DNS when a connection breaks).
    served_by = {pod.metadata.name: _create_orders_served(pod) for pod in victims}
    victim = max(victims, key=lambda pod: served_by[pod.metadata.name])
    served = served_by[victim.metadata.name]
    assert served > 0, f"no orders pod served a CreateOrder before the kill: {served_by}"
    release.core.delete_namespaced_pod(
        victim.metadata.name, NAMESPACE, body=client.V1DeleteOptions(grace_period_seconds=0)
    )
    thread.join(180)
    assert not thread.is_alive(), "the load did not finish"
    assert sum(statuses.values()) == count
    # Never a server error: the gateway fails a request to a dead pod cleanly, or retries it.
    assert set(statuses) <= {200, 502, 503, 504, 0}, statuses
    assert statuses[200] >= count // 2, statuses

    # Accepted = stored = counted; reserved = the units of the live accepted orders.
    def settled() -> bool:
        stored = _orders_in_store(release) - baseline
        return stored == _funnel_placed(admin) - baseline and stored >= len(accepted)

    wait_for(settled, SETTLE_TIMEOUT, "analytics counts every stored order")
    time.sleep(2)  # a late duplicate would show now
    stored = _orders_in_store(release) - baseline
    assert _funnel_placed(admin) - baseline == stored
    mine = customer.ok("GET", "/v1/orders", params={"pageSize": "100"})["orders"]
    ids = {order["id"] for order in mine}  # type: ignore[attr-defined]
    assert set(accepted) <= ids, "an accepted order was lost"
    live = [o for o in mine if o["state"] in {"ORDER_STATE_CONFIRMED", "ORDER_STATE_PAID"}]  # type: ignore[attr-defined]
    assert {o["id"] for o in live} >= set(accepted), "an accepted order lost its reservation"
    wait_for(
        lambda: (
            admin.ok("GET", f"/v1/products/{sku}")["product"]["stockAvailable"]  # type: ignore[index]
            == stock - len(live)
        ),
        SETTLE_TIMEOUT,
        f"{sku}: stock reserved exactly once per live order",
    )
    print(
        f"\npods drill: {count} orders, CreateOrder per pod before the kill {served_by}, "
        f"killed {victim.metadata.name}, "
        f"answers {dict(statuses)}, {len(accepted)} accepted, "
        f"{stored} stored, {len(live)} holding stock, {_funnel_placed(admin) - baseline} counted"
    )
    # The Deployment replaced the killed pod.
    wait_for(
        lambda: len([p for p in release.pods("orders") if _ready(p)]) == 2,
        120,
        "orders back to two Ready pods",
    )


def _create_orders_served(pod: client.V1Pod) -> float:
    """CreateOrder calls the pod started so far, from its own metrics endpoint (pod IPs are
    reachable from the node)."""
    port = next(
        p.container_port for c in pod.spec.containers for p in c.ports or [] if p.name == "metrics"
    )
    text = httpx.get(f"http://{pod.status.pod_ip}:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_started_total{") and 'grpc_method="CreateOrder"' in line
    )


def _ready(pod: client.V1Pod) -> bool:
    return bool(pod.status.container_statuses) and all(
        s.ready for s in pod.status.container_statuses
    )


def test_no_pod_left_on_fake_nodes(release: Release) -> None:
    """The fake nodes are tainted while the real node is up: nothing of the release landed there
    (where no container would run)."""
    pods = release.core.list_namespaced_pod(NAMESPACE).items
    assert all(p.spec.node_name in (None, "mercato-node") for p in pods), [
        (p.metadata.name, p.spec.node_name) for p in pods
    ]
