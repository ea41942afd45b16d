"""The suite in real pods: the chart installed on a real node (containerd, runc, CNI, kubelet,
kube-proxy, CoreDNS), its hooks run as real Jobs, its probes real gRPC and HTTP checks, and the
users' journeys through the cluster's gateway Service."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from kubernetes import client
from pods_support import (
    ADMIN_EMAIL,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    ROOT,
    TIMINGS,
    Release,
    helm,
)

pytestmark = pytest.mark.pods

#: Seconds for a killed pod's work to settle (the saga's repairs, analytics catching up).
SETTLE_TIMEOUT = 120.0
#: The annotation `kubectl rollout restart` sets on a Deployment's pod template.
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


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


def _drill_product(admin: Gateway, stock: int, name: str) -> str:
    """A product of its own with ``stock`` units (so that stock can be checked exactly)."""
    response = admin.call("POST", "/v1/categories", json={"id": "books", "displayName": "Books"})
    assert response.status_code in (200, 409), response.text
    sku = f"PODS-{uuid.uuid4().hex[:10].upper()}"
    admin.ok(
        "POST",
        "/v1/products",
        json={
            "sku": sku,
            "name": f"{name} {sku}",
            "categoryId": "books",
            "price": {"currencyCode": "EUR", "amountMinor": "1000"},
        },
    )
    admin.ok("POST", f"/v1/products/{sku}:adjustStock", json={"delta": stock, "reason": "drill"})
    return sku


def _drill_customer(release: Release, name: str) -> Gateway:
    """A newly registered customer, logged in."""
    anonymous = Gateway(release.gateway_url)
    email = f"pods-{uuid.uuid4().hex[:12]}@example.com"
    password = "pods-correct-horse-battery"
    anonymous.ok(
        "POST", "/v1/users", json={"email": email, "displayName": name, "password": password}
    )
    return anonymous.login(email, password)


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


def _quiet_baseline(release: Release, admin: Gateway) -> int:
    """The orders stored so far, once analytics has counted every one of them."""
    return (
        wait_for(
            lambda: (n := _orders_in_store(release)) == _funnel_placed(admin) and n + 1,
            SETTLE_TIMEOUT,
            "analytics caught up before the drill",
        )
        - 1
    )


def test_an_orders_pod_killed_during_load_loses_nothing(release: Release, admin: Gateway) -> None:
    """Orders placed through the gateway Service while one of the two orders pods is killed
    (deleted with no grace): every accepted order holds its stock once and is counted once by
    analytics; nothing is accepted and then lost."""
    stock = 200
    sku = _drill_product(admin, stock, "Pods drill")
    customer = _drill_customer(release, "Pods drill")

    baseline = _quiet_baseline(release, admin)
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


#: What a rolling restart goes through, one Deployment after another, the gateway last.
ROLLED = ("auth", "catalog", "orders", "analytics", "gateway")
#: Seconds a rollout may take: a surge pod starts (Python on two cores) and the old one goes
#: through its preStop pause, drain and grace.
ROLLOUT_TIMEOUT = 300.0


@dataclass
class Journeys:
    """One customer browsing, ordering and paying in a loop through the gateway Service until
    stopped (bounded in count and time): every answer is counted, every failure kept."""

    customer: Gateway
    sku: str
    interval: float = 0.5
    limit: int = 2000
    seconds: float = 1800.0
    answers: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    paid: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _call(self, what: str, method: str, path: str, **kwargs: object) -> dict[str, Any] | None:
        try:
            reply = self.customer.call(method, path, **kwargs)
        except httpx.HTTPError as error:
            self.answers[f"{what} {type(error).__name__}"] += 1
            self.failures.append(f"{what}: {error!r}")
            return None
        self.answers[f"{what} {reply.status_code}"] += 1
        if reply.status_code != 200:
            self.failures.append(f"{what}: {reply.status_code} {reply.text[:300]}")
            return None
        return dict(reply.json())

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        for _ in range(self.limit):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            began = time.monotonic()
            self._call("browse", "GET", f"/v1/products/{self.sku}")
            placed = self._call(
                "order",
                "POST",
                "/v1/orders",
                headers={"Idempotency-Key": str(uuid.uuid4())},
                json={"lines": [{"sku": self.sku, "quantity": 1}]},
            )
            if placed is not None:
                order_id = placed["order"]["id"]
                pay = {
                    "paymentToken": "tok_test_ok",
                    "amount": {"currencyCode": "EUR", "amountMinor": "1000"},
                }
                if self._call("pay", "POST", f"/v1/orders/{order_id}:pay", json=pay) is not None:
                    self.paid.append(order_id)
            time.sleep(max(0.0, self.interval - (time.monotonic() - began)))


class PodLogs:
    """The lines the release's service pods write during a drill, kept per pod, the replaced
    pods' included (their logs are gone once they are), to show next to a failure."""

    #: Lines worth showing: a warning or worse (the JSON log's level), or a traceback.
    NOTABLE = re.compile(r'"log\.level":\s*"(WARNING|ERROR|CRITICAL)"|Traceback')

    def __init__(self, release: Release) -> None:
        self._core = release.core
        self.lines: dict[str, list[str]] = {}
        self._responses: list[Any] = []

    def follow_running(self) -> None:
        """Start following every running service pod not followed yet."""
        for component in ROLLED:
            for pod in self._core.list_namespaced_pod(
                NAMESPACE, label_selector=f"app.kubernetes.io/component={component}"
            ).items:
                name = pod.metadata.name
                if name in self.lines or pod.status.phase != "Running":
                    continue
                self.lines[name] = []
                threading.Thread(target=self._follow, args=(name, component), daemon=True).start()

    def _follow(self, name: str, container: str) -> None:
        lines = self.lines[name]
        try:
            response = self._core.read_namespaced_pod_log(
                name, NAMESPACE, container=container, follow=True, _preload_content=False
            )
            self._responses.append(response)
            pending = b""
            # Ends when the container exits, or when `close` shuts the stream.
            for chunk in response.stream(4096):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                lines.extend(line.decode(errors="replace") for line in complete)
        except Exception as error:  # a diagnostic aid: the drill's assertions decide
            lines.append(f"(log stream ended: {error!r})")

    def close(self) -> None:
        for response in self._responses:
            response.close()

    def notable(self, limit: int = 40) -> str:
        """The warnings, errors and tracebacks seen, per pod, at most ``limit`` of them (a
        traceback's last lines, where the cause is)."""
        found = []
        for pod, lines in self.lines.items():
            for line in lines:
                if not self.NOTABLE.search(line):
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    found.append(f"{pod}: {line[:600]}")
                    continue
                trace = entry.get("error.stack_trace", "").strip().splitlines()[-12:]
                found.append(
                    f"{pod}: {entry.get('@timestamp')} {entry.get('log.level')} "
                    f"{entry.get('message')}" + "".join(f"\n    {t}" for t in trace)
                )
        return "\n".join(found[:limit]) or "(no warning or error logged)"


def _restart(release: Release, component: str) -> float:
    """`kubectl rollout restart` of a component's Deployment, waited for until the new pods
    are Ready and the old ones are gone (their drain included); the seconds it took."""
    apps = client.AppsV1Api(release.core.api_client)
    name = f"{FULLNAME}-{component}"
    selector = f"app.kubernetes.io/component={component},app.kubernetes.io/instance={RELEASE}"
    old = {pod.metadata.name for pod in release.pods(component)}
    began = time.monotonic()
    stamp = dt.datetime.now(dt.UTC).isoformat()
    apps.patch_namespaced_deployment(
        name,
        NAMESPACE,
        {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}},
    )

    def rolled() -> bool:
        deployment = apps.read_namespaced_deployment(name, NAMESPACE)
        status, wanted = deployment.status, deployment.spec.replicas
        if (status.observed_generation or 0) < deployment.metadata.generation:
            return False
        if (status.updated_replicas, status.ready_replicas, status.replicas) != (wanted,) * 3:
            return False
        # Terminating pods are listed until their process has exited.
        pods = release.core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
        return not old & {pod.metadata.name for pod in pods}

    wait_for(rolled, ROLLOUT_TIMEOUT, f"{name} rolled out", interval=0.5)
    return time.monotonic() - began


def test_rolling_restarts_drop_no_request(release: Release, admin: Gateway) -> None:
    """Each Deployment restarted in turn, the gateway's last (a surge pod first, then the old
    pod through its preStop pause, drain and grace), while a customer browses, orders and pays
    through the gateway Service: not one request fails, and every accepted order is stored,
    paid, holds its unit and is counted once by analytics."""
    stock = 2000
    sku = _drill_product(admin, stock, "Pods rollout")
    journeys = Journeys(_drill_customer(release, "Pods rollout"), sku)
    baseline = _quiet_baseline(release, admin)

    logs = PodLogs(release)
    logs.follow_running()
    thread = threading.Thread(target=journeys.run, daemon=True)
    thread.start()
    took: dict[str, float] = {}
    try:
        time.sleep(3)
        for component in ROLLED:
            took[component] = _restart(release, component)
            logs.follow_running()
        time.sleep(3)
    finally:
        journeys.stop.set()
        thread.join(120)
        logs.close()
    assert not thread.is_alive(), "the journeys did not stop"
    print(
        f"\nrolling restarts ({', '.join(f'{c} {s:.0f} s' for c, s in took.items())}): "
        f"answers {dict(journeys.answers)}, {len(journeys.failures)} failed"
    )
    assert not journeys.failures, (
        "\n".join(journeys.failures[:20])
        + "\n--- the pods' warnings and errors:\n"
        + logs.notable()
    )
    assert len(journeys.paid) >= 20, journeys.answers

    # Stored = paid = counted once; each holds its unit.
    wait_for(
        lambda: _funnel_placed(admin) - baseline == _orders_in_store(release) - baseline,
        SETTLE_TIMEOUT,
        "analytics counts every stored order",
    )
    time.sleep(2)  # a late duplicate would show now
    stored = _orders_in_store(release) - baseline
    assert stored == len(journeys.paid) == _funnel_placed(admin) - baseline
    assert (
        admin.ok("GET", f"/v1/products/{sku}")["product"]["stockAvailable"]  # type: ignore[index]
        == stock - len(journeys.paid)
    )


def test_no_pod_left_on_fake_nodes(release: Release) -> None:
    """The fake nodes are tainted while the real node is up: nothing of the release landed there
    (where no container would run)."""
    pods = release.core.list_namespaced_pod(NAMESPACE).items
    assert all(p.spec.node_name in (None, "mercato-node") for p in pods), [
        (p.metadata.name, p.spec.node_name) for p in pods
    ]
