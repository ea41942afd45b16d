"""What the dashboards and alert rules read is what the running suite exports.

Scrapes ``/metrics`` of every process of the suite (after an order went through, so the
business and pipeline metrics have moved) and checks each metric name in the Grafana dashboards
(``deploy/helm/mercato/files/dashboards``) and the Prometheus rules
(``deploy/helm/mercato/files/prometheus-rules.yaml``): it must be exported by some process, be a
recording rule of the rules file, or be one of the few platform metrics (``PLATFORM``) that come
from Prometheus itself or kube-state-metrics. Every dashboard query must parse.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import Api, RunningSuite, wait_until
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tools"))
from promql_names import metric_names  # noqa: E402

pytestmark = pytest.mark.e2e

FILES = REPO_ROOT / "deploy" / "helm" / "mercato" / "files"
DASHBOARDS = sorted((FILES / "dashboards").glob("*.json"))
RULES = FILES / "prometheus-rules.yaml"

#: Series that no process of the suite exports, by who does.
PLATFORM = {
    "up": "Prometheus, per scrape target",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "kube_pod_container_status_waiting_reason": "kube-state-metrics",
}

#: The sample names a metric family of each type exposes (text format 0.0.4).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def _panel_targets(panels: list[dict[str, Any]]) -> list[tuple[str, str]]:
    found = []
    for panel in panels:
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((str(panel.get("title")), str(target["expr"])))
        found.extend(_panel_targets(panel.get("panels", [])))  # panels inside collapsed rows
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target of every dashboard."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for title, expr in _panel_targets(dashboard.get("panels", [])):
            queries.append((f"{path.name}: {title}", expr))
    return queries


def rule_expressions() -> tuple[list[tuple[str, str]], set[str]]:
    """(where, PromQL) of every rule, and the names the recording rules define."""
    document = yaml.safe_load(RULES.read_text())
    expressions, recorded = [], set()
    for group in document["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            expressions.append((f"{RULES.name}: {group['name']}/{name}", str(rule["expr"])))
            if "record" in rule:
                recorded.add(rule["record"])
    return expressions, recorded


def exported_names(text: str) -> set[str]:
    """Every sample name the exposition declares, whether or not a series exists yet."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def test_dashboards_and_rules_read_only_exported_metrics(
    suite: RunningSuite, customer: Api, admin: Api
) -> None:
    assert DASHBOARDS, "no dashboards found"
    assert RULES.is_file(), f"{RULES} is missing"

    # Move the business and pipeline metrics: one order placed, paid, seen by analytics.
    paid_before = int(admin.funnel().get("paid", 0))
    sku = admin.create_product(stock=3)
    order = customer.ok(customer.create_order([(sku, 1)]))["order"]
    pay = {"paymentToken": "tok_test_ok", "amount": order["total"]}
    customer.ok(customer.post(f"/v1/orders/{order['id']}:pay", json=pay))
    wait_until(
        lambda: int(admin.funnel().get("paid", 0)) > paid_before,
        30,
        what="the payment in analytics",
    )

    exported: dict[str, set[str]] = {}
    for name, info in suite.status()["services"].items():
        port = info.get("metrics_port")
        assert port, f"{name} has no metrics port"
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert response.status_code == 200, f"{name} /metrics: {response.status_code}"
        exported[name] = exported_names(response.text)
    assert set(exported) == {"auth", "catalog", "orders", "analytics", "gateway"}
    everywhere = set().union(*exported.values())

    rules, recorded = rule_expressions()
    unknown: list[str] = []
    unparsable: list[str] = []
    for where, expr in [*dashboard_queries(), *rules]:
        try:
            names = metric_names(expr)
        except ValueError as exc:
            unparsable.append(f"{where}: {exc}")
            continue
        unknown.extend(
            f"{where}: {name}" for name in sorted(names - everywhere - recorded - PLATFORM.keys())
        )
    assert unparsable == []
    assert unknown == [], "metrics no process exports:\n" + "\n".join(unknown)
