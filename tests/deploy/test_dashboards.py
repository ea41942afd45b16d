"""The Grafana dashboards: generated files up to date, well-formed, every query valid PromQL (for
promql_parser and for Prometheus's own parser) reading only metrics the suite exports or records,
and shipped by the chart as one sidecar ConfigMap each."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from .conftest import MANIFEST

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
CHART = ROOT / "deploy" / "helm" / "mercato"
OUTPUT = CHART / "files" / "dashboards"
RULES = CHART / "files" / "prometheus-rules.yaml"
FILES = sorted(OUTPUT.glob("*.json"))
#: The suite-wide dashboards, and one per service of services/services.toml.
SUITE_UIDS = ("mercato-overview", "mercato-events", "mercato-business", "mercato-slos")
UIDS = (*SUITE_UIDS, *(f"mercato-{name}" for name in MANIFEST.names))
CONFIGMAP_LIMIT_BYTES = 1024 * 1024

_HISTOGRAMS = (
    "grpc_server_handling_seconds", "http_server_request_duration_seconds",
    "mercato_analytics_event_apply_latency_seconds", "mercato_event_loop_lag_seconds",
    "gateway_graphql_field_duration_seconds",
)  # fmt: skip
#: What the suite's processes export (docs/observability.md), histograms with their series.
EXPORTED = {
    "grpc_server_started_total", "grpc_server_handled_total",
    "http_server_requests_total", "http_server_requests_in_flight",
    "gateway_rate_limit_decisions_total", "gateway_rate_limit_redis_errors_total",
    "gateway_rate_limit_degraded",
    "gateway_graphql_field_requests_total", "gateway_graphql_ws_connections",
    "gateway_graphql_ws_operations",
    "mercato_outbox_backlog", "mercato_outbox_oldest_unsent_age_seconds",
    "mercato_outbox_published_total", "mercato_outbox_publish_errors_total",
    "mercato_kafka_consumer_messages_total", "mercato_kafka_consumer_lag",
    "mercato_analytics_events_total", "mercato_analytics_dead_letters_total",
    "mercato_analytics_store_retries_total", "mercato_analytics_consumer_lag",
    "mercato_analytics_newest_event_timestamp_seconds",
    "mercato_catalog_cache_lookups_total", "mercato_catalog_cache_errors_total",
    "mercato_orders_placed_total", "mercato_orders_revenue_minor_total",
    "mercato_orders_transitions_total", "mercato_orders_idempotent_replays_total",
    "mercato_orders_saga_compensations_total", "mercato_orders_reconciled_total",
    "mercato_orders_payment_events_total",
    "mercato_auth_logins_total", "mercato_auth_tokens_issued_total",
    "mercato_auth_refresh_token_reuse_detected_total", "mercato_auth_users_registered_total",
    "mercato_db_pool_connections", "mercato_db_pool_max_connections",
    "mercato_kafka_producer_pending_messages",
    "process_resident_memory_bytes", "process_cpu_seconds_total", "process_start_time_seconds",
    "process_open_fds",
}  # fmt: skip
EXPORTED |= {f"{name}_{suffix}" for name in _HISTOGRAMS for suffix in ("bucket", "sum", "count")}


@pytest.fixture(scope="module")
def generator(helpers: Any) -> ModuleType:
    return helpers.load_module(TOOLS / "dashboards.py", "mercato_tools_dashboards")


@pytest.fixture(scope="module")
def promql(helpers: Any) -> ModuleType:
    return helpers.load_module(TOOLS / "promql_names.py", "mercato_tools_promql_names")


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in FILES}


def variable_selectors(dashboards: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(where, series selector) of the `label_values(selector, label)` variable queries."""
    found = []
    for name, dashboard in sorted(dashboards.items()):
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"])
            assert match, f"{name}: variable {variable['name']}: {variable['query']}"
            found.append((f"{name}: variable {variable['name']}", match.group(1)))
    return found


# Generation -----------------------------------------------------------------------------------


def test_files_are_up_to_date(generator: ModuleType) -> None:
    """The committed JSON is what tools/dashboards.py builds (as its --check tells)."""
    problems = generator.stale(generator.render_all())
    assert not problems, "run `python tools/dashboards.py`:\n" + "\n".join(problems)


def test_check_reports_edited_missing_and_leftover_files(
    generator: ModuleType, tmp_path: Path
) -> None:
    files = generator.render_all()
    generator.write(files, tmp_path)
    assert generator.stale(files, tmp_path) == []
    first, second = sorted(files)[:2]
    (tmp_path / first).write_text(files[first].replace('"title"', '"Title"', 1))
    (tmp_path / second).unlink()
    (tmp_path / "mercato-old.json").write_text("{}\n")
    problems = generator.stale(files, tmp_path)
    assert len(problems) == 3
    assert any(first in problem and "differs" in problem for problem in problems)
    assert any(second in problem and "missing" in problem for problem in problems)
    assert any("mercato-old.json" in problem for problem in problems)


def test_files_are_tidy() -> None:
    for path in FILES:
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n", path.name


# The dashboards -------------------------------------------------------------------------------


def test_every_dashboard_is_there_once(dashboards: dict[str, dict[str, Any]]) -> None:
    assert sorted(dashboards) == sorted(f"{uid}.json" for uid in UIDS)
    titles = [dashboard["title"] for dashboard in dashboards.values()]
    assert len(set(titles)) == len(titles), titles
    for name, dashboard in dashboards.items():
        assert dashboard["uid"] == name.removesuffix(".json")
        assert len(dashboard["uid"]) <= 40  # Grafana's limit
        assert dashboard["description"]


@pytest.mark.parametrize("name", [path.name for path in FILES])
def test_dashboard_is_well_formed(
    dashboards: dict[str, dict[str, Any]], promql: ModuleType, name: str
) -> None:
    dashboard = dashboards[name]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["type"] == "query"
    assert variables["namespace"]["datasource"]["uid"] == "${datasource}"

    panels = list(promql.all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        where = f"{name}: {panel['type']} {panel.get('title')!r}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0, where
        assert grid["w"] > 0, where
        assert grid["x"] + grid["w"] <= 24, where
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{where} overlaps {cells[(x, y)]}"
                cells[(x, y)] = where
        if panel["type"] == "row":
            assert panel["title"], where
            assert not panel["panels"], f"{where}: collapsed rows hide their panels"
            continue
        assert panel["title"], where
        if panel["type"] == "text":  # explanations: no query, but something to read
            assert panel["options"]["content"].strip(), where
            continue
        assert panel["description"], where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        targets = panel.get("targets", [])
        assert any(target.get("expr", "").strip() for target in targets), f"{where}: no query"
        ref_ids = [target["refId"] for target in targets]
        assert all(ref_ids), where
        assert len(set(ref_ids)) == len(ref_ids), where
        for target in targets:
            assert target["expr"].strip(), where
            assert target["datasource"]["uid"] == "${datasource}", where


def test_every_query_parses_and_follows_the_conventions(promql: ModuleType) -> None:
    """promql_parser accepts every query; rates use $__rate_interval; every selector is limited
    to the selected namespaces."""
    namespace = promql.DEFAULT_VARIABLES["namespace"]
    problems = []
    for where, expr in promql.dashboard_queries(OUTPUT):
        for window in re.findall(r"\brate\([^\[]*\[([^\]]*)\]", expr):
            if window != "$__rate_interval":
                problems.append(f"{where}: rate over {window}, not $__rate_interval")
        try:
            tree = promql.parse(expr)
        except ValueError as error:
            problems.append(f"{where}: {error}")
            continue
        for selector in promql.vector_selectors(tree):
            namespaced = any(
                matcher.name == "namespace" and matcher.value == namespace
                for matcher in selector.matchers.matchers
            )
            if not namespaced:
                problems.append(f"{where}: {selector} ignores $namespace")
    assert not problems, "\n".join(problems)


def test_queries_read_only_exported_or_recorded_metrics(
    dashboards: dict[str, dict[str, Any]], promql: ModuleType
) -> None:
    names: dict[str, list[str]] = {}
    for where, expr in [*promql.dashboard_queries(OUTPUT), *variable_selectors(dashboards)]:
        for name in promql.metric_names(expr):
            names.setdefault(name, []).append(where)
    _, recorded = promql.rule_expressions(RULES)
    unknown = set(names) - EXPORTED - promql.PLATFORM.keys() - recorded
    assert not unknown, "\n".join(f"{name}: read by {names[name]}" for name in sorted(unknown))


def test_every_query_passes_promtool(promql: ModuleType, helpers: Any, tmp_path: Path) -> None:
    """Prometheus's own parser (and type checks) accepts every query: each becomes a recording
    rule of a throw-away rule file that `promtool check rules` reads."""
    promtool = helpers.load_module(TOOLS / "promtool.py", "mercato_tools_promtool")
    binary = promtool.ensure_promtool()
    found = promql.dashboard_queries(OUTPUT)
    rules = [
        {"record": f"dashboard_query_{index}", "expr": promql.substitute_variables(expr)}
        for index, (_, expr) in enumerate(found)
    ]
    rule_file = tmp_path / "dashboard-queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [str(binary), "check", "rules", str(rule_file)], capture_output=True, text=True
    )
    if result.returncode != 0:
        # promtool names the rules; say which panels they came from.
        failing = sorted(
            {int(n) for n in re.findall(r"dashboard_query_(\d+)", result.stdout + result.stderr)}
        )
        legend = "\n".join(f"dashboard_query_{index}: {found[index][0]}" for index in failing)
        pytest.fail(f"promtool check rules:\n{result.stdout}\n{result.stderr}\n{legend}")
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# The chart ------------------------------------------------------------------------------------


def dashboard_configmaps(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["name"]: doc
        for doc in documents
        if doc["kind"] == "ConfigMap"
        and doc["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboards"
    }


def test_chart_ships_one_configmap_per_dashboard(
    render: Any, dashboards: dict[str, dict[str, Any]], helpers: Any
) -> None:
    shipped = dashboard_configmaps(render("default"))
    expected = {
        f"{helpers.RELEASE}-mercato-dashboard-{uid.removeprefix('mercato-')}": uid for uid in UIDS
    }
    assert sorted(shipped) == sorted(expected)
    # Their schema: test_validate.py validates every built-in kind the default values render
    # against both supported Kubernetes versions.
    for name, configmap in shipped.items():
        uid = expected[name]
        metadata = configmap["metadata"]
        assert metadata["namespace"] == helpers.NAMESPACE
        assert metadata["labels"]["grafana_dashboard"] == "1"
        assert metadata["labels"]["app.kubernetes.io/instance"] == helpers.RELEASE
        assert metadata["annotations"]["grafana_folder"] == "Mercato"
        assert list(configmap["data"]) == [f"{uid}.json"]
        assert json.loads(configmap["data"][f"{uid}.json"]) == dashboards[f"{uid}.json"]
        size = len(json.dumps(configmap).encode())
        assert size < CONFIGMAP_LIMIT_BYTES, f"{name}: {size} bytes"


def test_chart_ships_no_dashboards_when_disabled(render: Any) -> None:
    documents = render("default", "--set", "grafanaDashboards.enabled=false")
    assert dashboard_configmaps(documents) == {}
    assert documents, "the rest of the chart still renders"


def test_chart_dashboards_follow_the_values(render: Any) -> None:
    values = (
        "--set", "grafanaDashboards.namespace=monitoring",
        "--set", "grafanaDashboards.label=example.com/dashboard",
        "--set", "grafanaDashboards.labelValue=mercato",
        "--set", "grafanaDashboards.folder=",
    )  # fmt: skip
    shipped = dashboard_configmaps(render("default", *values))
    assert len(shipped) == len(UIDS)
    for configmap in shipped.values():
        metadata = configmap["metadata"]
        assert metadata["namespace"] == "monitoring"
        assert metadata["labels"]["example.com/dashboard"] == "mercato"
        assert "grafana_dashboard" not in metadata["labels"]
        assert "grafana_folder" not in metadata.get("annotations", {})
