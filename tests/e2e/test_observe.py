"""`make observe` on real data: every dashboard panel, the rules, alerts and a trace in Jaeger.

A second private suite runs with Prometheus and Jaeger as `make observe` starts them
(``observe_env`` in suite_env.py: its own ports, Prometheus scraping every second, alerts waiting
5 s instead of their minutes in the loaded copy of the chart's rules). A short mixed load
(browse, order, pay, fulfil, cancel, refresh, analytics, a few errors and a 429) runs through the
gateway; then every query of every panel of every dashboard the chart ships and every recording
rule is evaluated through Prometheus' HTTP API with the template variables expanded to real
values, and must return series with sane values. Last, faults are induced on the real suite and
the intended alerts must go pending, firing, then resolve.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, READY_TIMEOUT, STOP_TIMEOUT, Api, wait_until
from suite_env import REPO_ROOT, observe_env

from mercato_devstack.manifest import load_manifest, manifest_path
from mercato_devstack.observe import (
    LOCAL_NAMESPACE,
    ROUTES_SELECTOR,
    PanelQuery,
    dashboard_variables,
    expand,
    local_rules,
    panel_queries,
)
from mercato_devstack.private_suite import PrivateSuite, start_private_suite, stop_private_suite

pytestmark = pytest.mark.e2e

ORDER_EVENTS = "mercato.orders.events.v1"
ALERT_TIMEOUT = 120.0
#: How long the availability burn may take to resolve under steady answered requests.
RESOLVE_TIMEOUT = 200.0
#: The longest a background request loop of an alert test runs.
HAMMER_SECONDS = 240.0
TRACE_TIMEOUT = 60.0


class Prometheus:
    """Prometheus' HTTP API (the one Grafana queries)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def _data(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {response.text[:500]}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self._data("/api/v1/query", query=expr)
        return list(data["result"]) if data["resultType"] == "vector" else [data["result"]]

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self._data(f"/api/v1/label/{label}/values", **{"match[]": match}))

    def targets(self) -> list[dict[str, Any]]:
        return list(self._data("/api/v1/targets", state="active")["activeTargets"])

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [
            a for a in self._data("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name
        ]

    def exemplars(self, expr: str, seconds: float) -> list[dict[str, Any]]:
        now = time.time()
        return list(self._data("/api/v1/query_exemplars", query=expr, start=now - seconds, end=now))


@dataclass
class ObservedSuite:
    suite: PrivateSuite
    prometheus: Prometheus
    jaeger: httpx.Client
    api: Api
    admin: Api

    def signal(self, service: str, signum: int) -> None:
        os.killpg(self.suite.pid(service), signum)


@pytest.fixture(scope="module")
def observed() -> Iterator[ObservedSuite]:
    env = observe_env()
    suite = start_private_suite(env, ready_timeout=READY_TIMEOUT)
    try:
        with (
            httpx.Client(base_url=suite.url, timeout=30) as gateway,
            httpx.Client(
                base_url=f"http://127.0.0.1:{env['MERCATO_JAEGER_PORT']}", timeout=30
            ) as jaeger,
        ):
            anonymous = Api(gateway)
            yield ObservedSuite(
                suite,
                Prometheus(f"http://127.0.0.1:{env['MERCATO_PROMETHEUS_PORT']}"),
                jaeger,
                anonymous,
                anonymous.login(ADMIN_EMAIL, ADMIN_PASSWORD),
            )
    finally:
        stop_private_suite(suite, stop_timeout=STOP_TIMEOUT)


@dataclass(frozen=True)
class Load:
    """What the mixed load left to look for."""

    order_trace_id: str
    statuses: dict[int, int]
    #: Customers registered by the load (later registrations may meet its login burst's 429).
    customers: list[Api]


def _pay(customer: Api, order: dict[str, Any], token: str = "tok_test_ok") -> httpx.Response:
    body = {"paymentToken": token, "amount": order["total"]}
    return customer.post(f"/v1/orders/{order['id']}:pay", json=body)


def _analytics_window() -> dict[str, str]:
    now = time.gmtime()
    return {
        "startTime": time.strftime("%Y-%m-%dT00:00:00Z", now),
        "endTime": time.strftime("%Y-%m-%dT23:59:59Z", now),
    }


@pytest.fixture(scope="module")
def load(observed: ObservedSuite) -> Load:
    """Browse, order, pay, fulfil, cancel, refresh, read analytics; a few errors and a 429."""
    admin, anonymous = observed.admin, observed.api
    statuses: dict[int, int] = {}

    def seen(response: httpx.Response) -> httpx.Response:
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        return response

    skus = [admin.create_product(stock=500, price_minor=900 + 100 * i) for i in range(3)]
    customers = [anonymous.register() for _ in range(3)]
    trace_id = ""
    deadline = time.monotonic() + 90
    for round_number in range(12):
        assert time.monotonic() < deadline, "the mixed load took over 90 s"
        for number, customer in enumerate(customers):
            sku = skus[(round_number + number) % len(skus)]
            seen(customer.get("/v1/products"))
            seen(customer.get(f"/v1/products/{sku}"))
            placed = seen(customer.create_order([(sku, 1 + number)]))
            order = customer.ok(placed)["order"]
            trace_id = placed.headers["traceresponse"].split("-")[1]
            if number == 0:
                seen(customer.post(f"/v1/orders/{order['id']}:cancel", json={}))
                continue
            seen(
                _pay(
                    customer, order, "tok_test_declined" if round_number % 4 == 3 else "tok_test_ok"
                )
            )
            if number == 2:
                seen(admin.post(f"/v1/orders/{order['id']}:fulfill", json={}))
            seen(customer.get("/v1/orders"))
            seen(customer.get(f"/v1/products/NOPE-{uuid.uuid4().hex[:8].upper()}"))  # 404
            # The same over GraphQL: a product found and one not (a field error).
            lookup = "query P($a: String!, $b: String!) { found: getProduct(sku: $a) {"
            lookup += " product { sku } } gone: getProduct(sku: $b) { product { sku } } }"
            missing = f"NOPE-{uuid.uuid4().hex[:8].upper()}"
            graphql = {"query": lookup, "variables": {"a": sku, "b": missing}}
            seen(customer.post("/graphql", json=graphql))
            seen(customer.post("/v1/orders", json={"lines": []}))  # 400
        seen(admin.get("/v1/analytics/funnel", params=_analytics_window()))
        seen(
            admin.get("/v1/analytics/sales", params={**_analytics_window(), "bucket": "BUCKET_DAY"})
        )
        seen(admin.get("/v1/analytics/freshness"))
    # A refresh token used twice: the second use is a reuse, and the family is revoked.
    customer = customers[0]
    form = {"grant_type": "refresh_token", "client_id": "mercato-web"}
    seen(anonymous.post("/oauth2/token", data={**form, "refresh_token": customer.refresh_token}))
    seen(anonymous.post("/oauth2/token", data={**form, "refresh_token": customer.refresh_token}))
    # Logins faster than the public-write limit (10/s, burst 30): the last ones get 429.
    wrong = {"email": "nobody@example.com", "password": "not-the-password-1"}
    for _ in range(40):
        seen(anonymous.post("/v1/auth/login", json=wrong))
    assert statuses.get(429), f"no request was rate limited: {statuses}"
    assert statuses.get(404), statuses
    assert statuses.get(400), statuses
    return Load(trace_id, statuses, customers)


def test_every_target_is_up(observed: ObservedSuite) -> None:
    services = {service.name for service in load_manifest(manifest_path(REPO_ROOT)).services}

    def all_up() -> list[dict[str, Any]] | None:
        targets = observed.prometheus.targets()
        ok = {t["labels"]["component"] for t in targets if t["health"] == "up"}
        return targets if ok == services and len(targets) == len(services) else None

    targets = wait_until(all_up, 30, what="every service's metrics target UP")
    for target in targets:
        labels = target["labels"]
        assert labels["namespace"] == LOCAL_NAMESPACE
        assert labels["job"] == f"mercato-{labels['component']}"


def test_the_targets_page_is_served_by_prometheus_web_ui(observed: ObservedSuite) -> None:
    """The page a browser opens to see the targets UP: the web UI's index and its script."""
    page = observed.prometheus.http.get("/targets")
    assert page.status_code == 200, page.text[:500]
    assert "text/html" in page.headers["content-type"]
    assert "<title>Prometheus Time Series Collection and Processing Server</title>" in page.text
    scripts = re.findall(r'src="\./(assets/index-[\w-]+\.js)"', page.text)
    assert scripts, f"no ./assets/index-*.js bundle in {page.text[:1000]}"
    for script in scripts:
        bundle = observed.prometheus.http.get(f"/{script}")
        assert bundle.status_code == 200, f"/{script}: {bundle.status_code}"
        assert "javascript" in bundle.headers["content-type"], bundle.headers
        assert len(bundle.content) > 100_000, f"/{script}: {len(bundle.content)} bytes"


# Panels ----------------------------------------------------------------------------------------


def _values(result: list[dict[str, Any]]) -> list[float]:
    values = []
    for series in result:
        value = series["value"] if isinstance(series, dict) and "value" in series else series
        values.append(float(value[1]))
    return values


def insane(query: PanelQuery, values: list[float]) -> str | None:
    """Why these values cannot be right for the panel, or None."""
    unit = query.unit
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return f"no finite value in {values}"
    if unit in ("reqps", "ops", "bytes", "s") and min(finite) < 0:
        return f"a negative {unit}: {min(finite)}"
    # The error budget left goes below 0 once it is overspent; every other ratio is in [0, 1].
    low = -math.inf if "slo:error_budget:ratio" in query.expr else 0.0
    if unit == "percentunit" and not all(low <= v <= 1.0 for v in finite):
        return f"a ratio outside [{low}, 1]: {finite}"
    if unit == "s" and max(finite) > 86400:
        return f"over a day: {max(finite)} s"
    return None


def test_every_panel_shows_sane_data(observed: ObservedSuite, load: Load) -> None:
    prometheus = observed.prometheus
    # Every process scraped the load's outcome (a scrape each second, rates over a minute), and
    # analytics' lag monitor has read its group's positions once (it retries while the group
    # coordinator of a fresh broker is not available yet).
    time.sleep(5)
    wait_until(
        lambda: prometheus.query("mercato_analytics_consumer_lag"),
        60,
        what="analytics' first lag reading",
    )
    routes = prometheus.label_values("route", ROUTES_SELECTOR)
    assert routes, "the gateway reported no route"
    variables = dashboard_variables(routes)
    queries = list(panel_queries(REPO_ROOT))
    assert len(queries) > 100, "the dashboards hold the suite's panels"
    failures = []
    for query in queries:
        expr = expand(query.expr, variables)
        assert "$" not in expr.replace('"$1"', ""), f"a variable is left in {expr}"
        result = prometheus.query(expr)
        problem = "no series" if not result else insane(query, _values(result))
        if problem:
            failures.append(f"{query}\n    -> {problem}")
    assert not failures, f"{len(failures)} of {len(queries)} panel queries:\n" + "\n".join(failures)


def test_every_recording_rule_has_series(observed: ObservedSuite, load: Load) -> None:
    rules = local_rules(REPO_ROOT)
    records = sorted(
        {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}
    )
    assert records
    missing = [record for record in records if not observed.prometheus.query(record)]
    assert not missing, f"recording rules without series: {missing}"


# Traces and exemplars ------------------------------------------------------------------------


def _jaeger_trace(jaeger: httpx.Client, trace_id: str) -> list[dict[str, Any]]:
    response = jaeger.get(f"/api/traces/{trace_id}")
    if response.status_code != 200:
        return []
    data = response.json().get("data") or []
    if not data:
        return []
    trace = data[0]
    processes = trace["processes"]
    spans = []
    for span in trace["spans"]:
        tags = {tag["key"]: tag["value"] for tag in span.get("tags", [])}
        parent = next(
            (ref["spanID"] for ref in span.get("references", []) if ref["refType"] == "CHILD_OF"),
            None,
        )
        spans.append(
            {
                "id": span["spanID"],
                "parent": parent,
                "name": span["operationName"],
                "service": processes[span["processID"]]["serviceName"],
                "kind": tags.get("span.kind", ""),
                "tags": tags,
            }
        )
    return spans


#: Each hop of an order's trace in Jaeger: (service, span kind, name, attributes it must carry).
TRACE_HOPS: tuple[tuple[str, str, Callable[[str], bool], tuple[str, ...]], ...] = (
    (
        "gateway",
        "server",
        lambda name: name == "POST /v1/orders",
        ("http.request.method", "http.route", "http.response.status_code"),
    ),
    (
        "orders",
        "server",
        lambda name: name.endswith("OrdersService/CreateOrder"),
        ("rpc.system", "rpc.service", "rpc.method"),
    ),
    (
        "catalog",
        "server",
        lambda name: name.endswith("CatalogService/ReserveStock"),
        ("rpc.system", "rpc.method"),
    ),
    # Client spans of the stores from OpenTelemetry's instrumentations (asyncpg, PyMongo).
    ("orders", "client", lambda name: True, ("db.system.name", "db.query.text")),
    ("catalog", "client", lambda name: True, ("db.system.name", "db.collection.name")),
    (
        "orders",
        "producer",
        # The aiokafka instrumentation's name for a send.
        lambda name: name == f"{ORDER_EVENTS} send",
        ("messaging.system", "messaging.destination.name"),
    ),
    (
        "analytics",
        "consumer",
        lambda name: name == f"process {ORDER_EVENTS}",
        ("messaging.system", "messaging.destination.name"),
    ),
)


def test_an_order_is_one_trace_in_jaeger(observed: ObservedSuite, load: Load) -> None:
    def complete() -> list[dict[str, Any]] | None:
        spans = _jaeger_trace(observed.jaeger, load.order_trace_id)
        found = all(
            any(
                s["service"] == service
                and s["kind"] == kind
                and matches(s["name"])
                and all(key in s["tags"] for key in keys)
                for s in spans
            )
            for service, kind, matches, keys in TRACE_HOPS
        )
        ids = {s["id"] for s in spans}
        orphans = [s for s in spans if s["parent"] and s["parent"] not in ids]
        return spans if found and not orphans else None

    spans = wait_until(
        complete, TRACE_TIMEOUT, what=f"trace {load.order_trace_id} complete in Jaeger"
    )
    roots = [s for s in spans if not s["parent"]]
    assert [r["service"] for r in roots] == ["gateway"], f"one root, the gateway: {roots}"


def test_latency_histograms_carry_trace_exemplars(observed: ObservedSuite, load: Load) -> None:
    for metric in (
        "http_server_request_duration_seconds_bucket",
        "grpc_server_handling_seconds_bucket",
    ):
        series = observed.prometheus.exemplars(f'{metric}{{namespace="{LOCAL_NAMESPACE}"}}', 600)
        trace_ids = {e["labels"].get("trace_id") for s in series for e in s["exemplars"]}
        trace_ids.discard(None)
        assert trace_ids, f"no exemplar with a trace id on {metric}"
        assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in trace_ids), trace_ids


# Alerts --------------------------------------------------------------------------------------


def wait_alert(
    prometheus: Prometheus,
    name: str,
    state: str | None,
    timeout: float = ALERT_TIMEOUT,
    **labels: str,
) -> list[dict[str, Any]]:
    """The alert's instances matching ``labels`` once one is in ``state``; with None, once none
    is left (resolved)."""

    def reached() -> list[dict[str, Any]] | bool | None:
        alerts = [
            a
            for a in prometheus.alerts(name)
            if all(a["labels"].get(k) == v for k, v in labels.items())
        ]
        if state is None:
            return not alerts
        matching = [a for a in alerts if a["state"] == state]
        return matching or None

    result = wait_until(
        reached, timeout, interval=0.5, what=f"{name} {labels} {state or 'resolved'}"
    )
    return result if isinstance(result, list) else []


def assert_runbook(alerts: list[dict[str, Any]]) -> None:
    for alert in alerts:
        url = alert["annotations"].get("runbook_url", "")
        assert re.fullmatch(r"https://\S+/docs/runbooks/[a-z0-9-]+\.md", url), url
        assert (REPO_ROOT / "docs" / "runbooks" / url.rsplit("/", 1)[1]).is_file(), url


@contextlib.contextmanager
def _requests_meanwhile(api: Api, path: str, threads: int = 4) -> Iterator[dict[int, int]]:
    """GET ``path`` from ``threads`` threads, again and again, until the block ends (at most
    HAMMER_SECONDS); the statuses seen so far, by status."""
    statuses: dict[int, int] = {}
    stop = threading.Event()
    deadline = time.monotonic() + HAMMER_SECONDS

    def loop() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status = api.get(path).status_code
            except httpx.TransportError:
                status = 0
            statuses[status] = statuses.get(status, 0) + 1

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield statuses
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)


@pytest.mark.timeout(HAMMER_SECONDS + RESOLVE_TIMEOUT + 60)
def test_catalog_stopped_fires_target_down_and_the_availability_burn(
    observed: ObservedSuite, load: Load
) -> None:
    prometheus, admin = observed.prometheus, observed.admin
    sku = admin.create_product(stock=10)
    observed.signal("catalog", signal.SIGSTOP)
    try:
        # Product reads through the gateway wait for catalog until their deadline: 504s.
        with _requests_meanwhile(admin, f"/v1/products/{sku}") as failing:
            wait_alert(prometheus, "MercatoTargetDown", "pending", component="catalog")
            assert_runbook(
                wait_alert(prometheus, "MercatoTargetDown", "firing", component="catalog")
            )
            wait_alert(prometheus, "MercatoGatewayAvailabilityBurnRateFast", "pending")
            burn = wait_alert(prometheus, "MercatoGatewayAvailabilityBurnRateFast", "firing")
            assert_runbook(burn)
        assert sum(n for status, n in failing.items() if status >= 500) > 0, failing
        assert not failing.get(200), failing
    finally:
        observed.signal("catalog", signal.SIGCONT)
    wait_alert(prometheus, "MercatoTargetDown", None, component="catalog")
    # The alert resolves once answered requests outnumber the failures enough in its short
    # windows (the 30-minute one needs about 170 answered requests per failure): requests run
    # until it does, however many failures the stop left in them.
    with _requests_meanwhile(admin, f"/v1/products/{sku}", threads=8) as served:
        wait_alert(prometheus, "MercatoGatewayAvailabilityBurnRateFast", None, RESOLVE_TIMEOUT)
    assert served.get(200, 0) >= 0.99 * sum(served.values()) > 0, served


def test_kafka_down_holds_the_outbox_and_fires_backlog_growing(
    observed: ObservedSuite, load: Load
) -> None:
    prometheus, admin = observed.prometheus, observed.admin
    sku = admin.create_product(stock=100)
    customer = load.customers[2]
    stack = observed.suite.stack
    stack.stop("kafka")
    try:
        for _ in range(5):
            customer.ok(customer.create_order([(sku, 1)]))
            time.sleep(1)
        pending = wait_alert(
            prometheus, "MercatoOutboxBacklogGrowing", "pending", component="orders"
        )
        for _ in range(5):
            customer.ok(customer.create_order([(sku, 1)]))
        assert_runbook(
            wait_alert(prometheus, "MercatoOutboxBacklogGrowing", "firing", component="orders")
        )
        assert pending
    finally:
        stack.start("kafka")
    wait_alert(prometheus, "MercatoOutboxBacklogGrowing", None, component="orders")


def test_analytics_behind_fires_consumer_lag_high(observed: ObservedSuite, load: Load) -> None:
    """Analytics frozen while 1,100 orders are placed, then back but unable to apply their
    events (its database down): its lag monitor reports the group's lag, read from Kafka."""
    prometheus, admin = observed.prometheus, observed.admin
    stack = observed.suite.stack
    customer = load.customers[1]
    skus = [admin.create_product(stock=400) for _ in range(4)]
    lag = f'namespace_component_topic:mercato_analytics_consumer_lag:sum{{topic="{ORDER_EVENTS}"}}'
    observed.signal("analytics", signal.SIGSTOP)
    try:
        # One product per thread: 4 x 275 orders, an event each at least on the orders topic.
        def place(sku: str) -> list[int]:
            return [customer.create_order([(sku, 1)]).status_code for _ in range(275)]

        with ThreadPoolExecutor(len(skus)) as pool:
            placed = [status for statuses in pool.map(place, skus) for status in statuses]
        assert placed == [200] * 1100, {s: placed.count(s) for s in set(placed)}
        stack.stop("ferretdb")
    finally:
        observed.signal("analytics", signal.SIGCONT)
    try:
        try:
            wait_alert(prometheus, "MercatoAnalyticsConsumerLagHigh", "pending", topic=ORDER_EVENTS)
        except AssertionError as error:
            raise AssertionError(f"{error}; lag now: {prometheus.query(lag)}") from None
        assert_runbook(
            wait_alert(prometheus, "MercatoAnalyticsConsumerLagHigh", "firing", topic=ORDER_EVENTS)
        )
    finally:
        stack.start("ferretdb")
    wait_alert(prometheus, "MercatoAnalyticsConsumerLagHigh", None, timeout=180, topic=ORDER_EVENTS)


def test_snapshot_page_draws_every_panel(observed: ObservedSuite, load: Load) -> None:
    """`make observe-snapshot` against this Prometheus: every panel drawn with data (after the
    alert tests, so the page shows their faults too). The page is kept in the suite's state
    folder (docs/observe-snapshot.html is one such page)."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import observe_snapshot  # tools/observe_snapshot.py

    output = observed.suite.state_dir / "observe-snapshot.html"
    assert (
        observe_snapshot.main(["--prometheus", observed.prometheus.url, "--output", str(output)])
        == 0
    )
    page = output.read_text()
    panels = len({(q.dashboard, q.panel) for q in panel_queries(REPO_ROOT)})
    assert f"{panels} panels, 0 without data" in page
    assert page.count("<svg") + page.count('class="stat"') == panels
