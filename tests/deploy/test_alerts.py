"""The Prometheus rules (files/prometheus-rules.yaml): promtool accepts them and their unit tests
pass, every alert is documented and tested both ways, and the chart ships them unchanged.

promtool is built once from its Go module (tools/promtool.py, into .state/tools)."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
SEVERITIES = {"page", "ticket"}
SLOS = {"gateway-availability": 0.999, "gateway-latency": 0.99, "order-events-freshness": 0.99}
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d")
NAMESPACE_MATCHER = 'namespace="__NAMESPACE__"'
COMPONENT_RELABELING = {
    "action": "replace",
    "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
    "targetLabel": "component",
}


@pytest.fixture(scope="session")
def promtool_tool(helpers: Any) -> ModuleType:
    return helpers.load_module(ROOT / "tools" / "promtool.py", "mercato_tools_promtool")


@pytest.fixture(scope="session")
def rule_file(promtool_tool: ModuleType) -> dict[str, Any]:
    return yaml.load(promtool_tool.RULES_FILE.read_text(), Loader=yaml.CSafeLoader)


@pytest.fixture(scope="session")
def alerts(rule_file: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for group in rule_file["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["alert"] not in found, f"two alerts named {rule['alert']}"
                found[rule["alert"]] = rule
    assert found
    return found


@pytest.fixture(scope="session")
def unit_tests(promtool_tool: ModuleType) -> list[dict[str, Any]]:
    files = promtool_tool.rule_test_files()
    assert files, "no prometheus-rules*.test.yaml"
    groups = []
    for path in files:
        document = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        assert document["rule_files"] == [promtool_tool.RULES_FILE.name], path
        groups.extend(document["tests"])
    return groups


def test_promtool_checks_the_rules_and_their_unit_tests_pass(promtool_tool: ModuleType) -> None:
    results = promtool_tool.check_rules()
    for result in results:
        output = f"$ {' '.join(map(str, result.args))}\n{result.stdout}{result.stderr}"
        assert result.returncode == 0, output
    assert [result.args[1:3] for result in results] == [["check", "rules"], ["test", "rules"]]


def test_every_alert_says_what_to_do(alerts: dict[str, dict[str, Any]]) -> None:
    problems = []
    for name, rule in alerts.items():
        if not re.fullmatch(r"Mercato[A-Z][A-Za-z]+", name):
            problems.append(f"{name}: not named Mercato<CamelCase>")
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity must be one of {sorted(SEVERITIES)}")
        if not re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))):
            problems.append(f"{name}: no `for` duration")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not str(annotations.get(key, "")).strip():
                problems.append(f"{name}: no {key} annotation")
        runbook = str(annotations.get("runbook_url", ""))
        prefix = "__RUNBOOK_BASE_URL__/"
        if not runbook.startswith(prefix):
            problems.append(f"{name}: runbook_url does not start with {prefix}")
        elif not (RUNBOOKS / runbook.removeprefix(prefix)).is_file():
            problems.append(f"{name}: {runbook} is not a file of docs/runbooks/")
        elif name not in (RUNBOOKS / runbook.removeprefix(prefix)).read_text():
            problems.append(f"{name}: its runbook does not mention it")
    assert not problems, "\n".join(problems)


def test_every_runbook_is_indexed(alerts: dict[str, dict[str, Any]]) -> None:
    index = (RUNBOOKS / "README.md").read_text()
    runbooks = {path.name for path in RUNBOOKS.glob("*.md")} - {"README.md"}
    assert runbooks
    assert not {name for name in runbooks if f"({name})" not in index}, "not linked from README"
    assert not {name for name in alerts if name not in index}, "alerts missing from the index"


def test_every_alert_is_tested_firing_and_quiet(
    alerts: dict[str, dict[str, Any]], unit_tests: list[dict[str, Any]]
) -> None:
    firing, quiet = set(), set()
    for group in unit_tests:
        for case in group.get("alert_rule_test", []):
            assert case["alertname"] in alerts, f"{group['name']}: unknown {case['alertname']}"
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert not set(alerts) - firing, "alerts with no test where they fire"
    assert not set(alerts) - quiet, "alerts with no test where they stay quiet"


def test_firing_tests_expect_every_label_and_annotation(
    alerts: dict[str, dict[str, Any]], unit_tests: list[dict[str, Any]], promtool_tool: ModuleType
) -> None:
    """promtool compares exactly, but only what a test lists: an expectation without the
    annotations would pass whatever they say."""
    base = promtool_tool.TEST_PLACEHOLDERS["__RUNBOOK_BASE_URL__"]
    for group in unit_tests:
        for case in group.get("alert_rule_test", []):
            rule = alerts[case["alertname"]]
            for expected in case.get("exp_alerts") or []:
                assert set(rule["labels"]) <= set(expected["exp_labels"]), group["name"]
                assert set(expected["exp_annotations"]) == set(rule["annotations"]), group["name"]
                runbook = rule["annotations"]["runbook_url"]
                assert expected["exp_annotations"]["runbook_url"] == runbook.replace(
                    "__RUNBOOK_BASE_URL__", base
                )


def test_slo_recording_rules(rule_file: dict[str, Any]) -> None:
    recorded: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for group in rule_file["groups"]:
        for rule in group["rules"]:
            if "record" in rule and rule["record"].startswith("slo:"):
                key = (rule["record"], rule.get("labels", {}).get("slo", ""))
                recorded.setdefault(key, []).append(rule)
    expected = {
        (record, slo)
        for slo in SLOS
        for record in [
            "slo:objective:ratio",
            "slo:error_budget:ratio",
            *(f"slo:sli_error:ratio_rate{window}" for window in SLO_WINDOWS),
        ]
    }
    assert set(recorded) == expected
    assert all(len(rules) == 1 for rules in recorded.values())
    for slo, objective in SLOS.items():
        assert recorded[("slo:objective:ratio", slo)][0]["expr"] == f"vector({objective})"
        for window in SLO_WINDOWS:
            expr = recorded[(f"slo:sli_error:ratio_rate{window}", slo)][0]["expr"]
            assert set(re.findall(r"\[(\w+)\]", expr)) == {window}, f"{slo} {window}: {expr}"


def test_rules_see_only_their_release_namespace(rule_file: dict[str, Any]) -> None:
    """Releases in other namespaces that share the Prometheus have their own rules."""
    problems = []
    for group in rule_file["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            expr = str(rule["expr"])
            selectors = re.findall(r"\{[^{}]*\}", re.sub(r"\{\{.*?\}\}", "", expr))
            if not selectors and "namespace" not in rule.get("labels", {}):
                problems.append(f"{name}: neither a selector nor a namespace label")
            problems += [f"{name}: {s}" for s in selectors if NAMESPACE_MATCHER not in s]
            for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
                if "namespace" not in re.split(r",\s*", grouping):
                    problems.append(f"{name}: aggregates away the namespace: by ({grouping})")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="session")
def values(helpers: Any) -> dict[str, Any]:
    return yaml.load((helpers.CHART / "values.yaml").read_text(), Loader=yaml.CSafeLoader)


def _prometheus_rules(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == "PrometheusRule"]


def test_chart_ships_the_rule_file(
    render: Any, helpers: Any, promtool_tool: ModuleType, values: dict[str, Any]
) -> None:
    base = "https://runbooks.example.com/mercato"
    documents = render(
        "default",
        "--set", f"prometheusRule.runbookBaseUrl={base}",
        "--set", "prometheusRule.labels.release=kube-prometheus-stack",
    )  # fmt: skip
    (rule,) = _prometheus_rules(documents)
    assert rule["metadata"]["namespace"] == helpers.NAMESPACE
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mercato"
    filled = promtool_tool.fill_placeholders(
        promtool_tool.RULES_FILE.read_text(),
        {"__NAMESPACE__": helpers.NAMESPACE, "__RUNBOOK_BASE_URL__": base},
    )
    assert rule["spec"]["groups"] == yaml.load(filled, Loader=yaml.CSafeLoader)["groups"]
    rendered = yaml.safe_dump(rule)
    assert "__NAMESPACE__" not in rendered
    assert "__RUNBOOK_BASE_URL__" not in rendered

    (default_rule,) = _prometheus_rules(render("default"))
    default_base = values["prometheusRule"]["runbookBaseUrl"]
    runbook_urls = {
        r["annotations"]["runbook_url"]
        for group in default_rule["spec"]["groups"]
        for r in group["rules"]
        if "alert" in r
    }
    assert runbook_urls
    assert all(url.startswith(f"{default_base}/") for url in runbook_urls)


def test_prometheus_rule_can_be_disabled(render: Any) -> None:
    # Enabled by default, so test_validate.py checks it against its CRD (default values set).
    assert _prometheus_rules(render("default"))
    assert not _prometheus_rules(render("default", "--set", "prometheusRule.enabled=false"))


@pytest.mark.parametrize("values_set", ["default", "operators"])
def test_service_monitors_label_series_with_their_component(
    render: Any, helpers: Any, values_set: str
) -> None:
    monitors = helpers.by_kind(render(values_set), "ServiceMonitor")
    assert {helpers.component_of(doc) for doc in monitors.values()} == set(helpers.COMPONENTS)
    for name, monitor in monitors.items():
        for endpoint in monitor["spec"]["endpoints"]:
            assert COMPONENT_RELABELING in endpoint.get("relabelings", []), name


def test_make_observe_loads_the_charts_rules_into_a_valid_config(
    render: Any, helpers: Any, promtool_tool: ModuleType, tmp_path: Path
) -> None:
    """`make observe`'s Prometheus: promtool accepts its config (and the rule file it names),
    whose rules are the chart's own, as the chart renders them for the local namespace; only
    the test override changes the alerts' `for:`."""
    from mercato_devstack.config import StackConfig
    from mercato_devstack.observe import LOCAL_NAMESPACE, Prometheus, ScrapeTarget, local_rules

    config = StackConfig(repo_root=ROOT, state_dir=tmp_path)
    prometheus = Prometheus(config, [ScrapeTarget(c, "127.0.0.1:9461") for c in helpers.COMPONENTS])
    prometheus.dir.mkdir(parents=True)
    written = prometheus._write_config()
    result = promtool_tool._run(
        [str(promtool_tool.ensure_promtool()), "check", "config", str(written)]
    )
    assert result.returncode == 0, result.stdout + result.stderr

    assert helpers.NAMESPACE == LOCAL_NAMESPACE  # the release namespace the chart is rendered in
    (rule,) = _prometheus_rules(render("default"))
    chart_groups = rule["spec"]["groups"]
    assert local_rules(ROOT)["groups"] == chart_groups
    shortened = local_rules(ROOT, alert_for="5s")["groups"]
    for group, original in zip(shortened, chart_groups, strict=True):
        for new, old in zip(group["rules"], original["rules"], strict=True):
            assert new == ({**old, "for": "5s"} if "alert" in old else old)
