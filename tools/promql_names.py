"""The metric names a PromQL expression reads, for checks that dashboards and rules only use
metrics something really exports.

Dashboard queries hold Grafana template variables (`$__rate_interval`, `${namespace}`, ...)
that are not PromQL: :func:`substitute_variables` replaces them with plausible values first.
:func:`metric_names` parses with `promql_parser` (a port of Prometheus's parser) and walks the
tree for the names of vector and matrix selectors, so names inside label values, legends or
comments never count.

:func:`dashboard_queries` and :func:`rule_expressions` list the expressions to check, of the
Grafana dashboards and of the Prometheus rules file; :data:`PLATFORM` names the series that come
from the platform rather than from the suite.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import promql_parser
import yaml

#: Values for Grafana's built-in variables and the dashboards' own ones. Durations are whole
#: minutes so that they are valid range selectors; `__range_s` and friends are numbers.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "datasource": "prometheus",
    "namespace": "mercato",
    "route": "/v1/products/{sku}",
}

#: Series that no process of the suite exports, by who does.
PLATFORM: Mapping[str, str] = {
    "up": "Prometheus, per scrape target",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "kube_pod_container_status_waiting_reason": "kube-state-metrics",
}

# $name, ${name} and ${name:format}; [[name]] is Grafana's deprecated spelling. `$1` and the like
# are not variables but label_replace's references to regex groups (Grafana leaves them alone).
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(?!\d+\b)(\w+)|\[\[(\w+)\]\]")


class UnknownVariableError(ValueError):
    """An expression uses a template variable that has no substitute."""


def substitute_variables(expr: str, values: Mapping[str, str] = DEFAULT_VARIABLES) -> str:
    """`expr` with every Grafana template variable replaced by its value in `values`."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if name not in values:
            raise UnknownVariableError(f"no value for template variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def parse(expr: str, values: Mapping[str, str] = DEFAULT_VARIABLES) -> promql_parser.Expr:
    """The syntax tree of a dashboard expression (variables substituted); ValueError if invalid."""
    return promql_parser.parse(substitute_variables(expr, values))


def vector_selectors(tree: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    """Every vector selector of the tree, those of range selectors (`x[5m]`) included."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(tree, visit)
    return found


def metric_names(expr: str, values: Mapping[str, str] = DEFAULT_VARIABLES) -> set[str]:
    """The metric names `expr` selects. A selector without a fixed name (`{__name__=~"..."}`)
    is refused with ValueError: what it reads cannot be checked."""
    names: set[str] = set()
    unnamed: list[str] = []
    for node in vector_selectors(parse(expr, values)):
        if node.name:
            names.add(node.name)
            continue
        fixed = [
            matcher.value
            for matcher in node.matchers.matchers
            if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal
        ]
        if fixed:
            names.update(fixed)
        else:
            unnamed.append(str(node))
    if unnamed:
        raise ValueError(f"selector without a metric name in {expr!r}: {', '.join(unnamed)}")
    return names


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard's `panels`, those inside collapsed rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries(folder: Path) -> list[tuple[str, str]]:
    """(where, expression) of every panel target of every dashboard (`*.json`) in `folder`."""
    found = []
    for path in sorted(folder.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in all_panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                where = f"{path.name}: {panel.get('title')} ({target.get('refId')})"
                found.append((where, target["expr"]))
    return found


def rule_expressions(rules_file: Path) -> tuple[list[tuple[str, str]], set[str]]:
    """(where, expression) of every rule of a Prometheus rules file, and the names its recording
    rules define."""
    document = yaml.safe_load(rules_file.read_text())
    expressions, recorded = [], set()
    for group in document["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            expressions.append((f"{rules_file.name}: {group['name']}/{name}", str(rule["expr"])))
            if "record" in rule:
                recorded.add(rule["record"])
    return expressions, recorded
