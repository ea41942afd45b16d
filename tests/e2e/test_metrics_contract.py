"""What the dashboards and alert rules read is what the running suite exports.

Scrapes ``/metrics`` of every process of the suite (after an order went through, so the
business and pipeline metrics have moved) and checks each metric name in the Grafana dashboards
(``deploy/helm/mercato/files/dashboards``) and the Prometheus rules
(``deploy/helm/mercato/files/prometheus-rules.yaml``): it must be exported by some process, be a
recording rule of the rules file, or be one of the few platform metrics (``PLATFORM`` of
``tools/promql_names.py``) that come from Prometheus itself or kube-state-metrics. Every dashboard
query must parse.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from conftest import Api, RunningSuite, wait_until
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tools"))
from promql_names import PLATFORM, dashboard_queries, metric_names, rule_expressions  # noqa: E402

pytestmark = pytest.mark.e2e

FILES = REPO_ROOT / "deploy" / "helm" / "mercato" / "files"
DASHBOARDS = FILES / "dashboards"
RULES = FILES / "prometheus-rules.yaml"

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
    assert any(DASHBOARDS.glob("*.json")), "no dashboards found"
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

    rules, recorded = rule_expressions(RULES)
    unknown: list[str] = []
    unparsable: list[str] = []
    for where, expr in [*dashboard_queries(DASHBOARDS), *rules]:
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
