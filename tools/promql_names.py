"""The metric names a PromQL expression reads, for checks that dashboards and rules only use
metrics something really exports.

Dashboard queries hold Grafana template variables (`$__rate_interval`, `${namespace}`, ...)
that are not PromQL: :func:`substitute_variables` replaces them with plausible values first.
:func:`metric_names` parses with `promql_parser` (a port of Prometheus's parser) and walks the
tree for the names of vector and matrix selectors, so names inside label values, legends or
comments never count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import promql_parser

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


def metric_names(expr: str, values: Mapping[str, str] = DEFAULT_VARIABLES) -> set[str]:
    """The metric names `expr` selects. A selector without a fixed name (`{__name__=~"..."}`)
    is refused with ValueError: what it reads cannot be checked."""
    names: set[str] = set()
    unnamed: list[str] = []

    def visit(node: promql_parser.Expr) -> None:
        if not isinstance(node, promql_parser.VectorSelector):
            return
        if node.name:
            names.add(node.name)
            return
        fixed = [
            matcher.value
            for matcher in node.matchers.matchers
            if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal
        ]
        if fixed:
            names.update(fixed)
        else:
            unnamed.append(str(node))

    promql_parser.walk(parse(expr, values), visit)
    if unnamed:
        raise ValueError(f"selector without a metric name in {expr!r}: {', '.join(unnamed)}")
    return names
