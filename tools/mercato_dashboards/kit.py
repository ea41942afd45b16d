"""The building blocks of the dashboards: selectors and queries, panels, rows, the layout and
the JSON model (Grafana Foundation SDK)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, text, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import text as text_models

from mercato_devstack.manifest import load_manifest

DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: The suite's components: the services of the service manifest (services/services.toml).
MANIFEST = load_manifest()
COMPONENTS = MANIFEST.names
ALL_COMPONENTS = "|".join(COMPONENTS)
GRPC_SERVICES = {s.name: s.grpc_service for s in MANIFEST.services if s.kind == "grpc"}
#: The database pool of each component with a store (mercato_db_pool_* `pool` label).
DB_POOLS = {
    s.name: "mongodb" if s.store == "mongo" else s.store
    for s in MANIFEST.services
    if s.store != "none"
}
#: gRPC codes that mean the server failed (as in mercato_common.interceptors); the others
#: (NOT_FOUND, INVALID_ARGUMENT, ...) are the caller's doing.
SERVER_FAULT_CODES = "UNKNOWN|DEADLINE_EXCEEDED|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS"
ORDER_EVENTS = "mercato.orders.events.v1"
#: The SLOs of the suite, with what their SLI counts as bad (see docs/observability.md).
SLOS = {
    "gateway-availability": "gateway requests answered with a 5xx status",
    "gateway-latency": "gateway requests slower than 0.5 s",
    "order-events-freshness": "order events applied by analytics more than 10 s after their time",
}
GREEN, ORANGE, RED, BLUE = "green", "orange", "red", "blue"


# Selectors and queries ------------------------------------------------------------------------


def sel(component: str | None = None, *matchers: str) -> str:
    """Label matchers of a component (any component when None) in the selected namespaces."""
    parts = [f'component="{component}"'] if component else []
    return ", ".join([*parts, 'namespace=~"$namespace"', *matchers])


def rate(metric: str, selector: str, by: str = "") -> str:
    """Per-second rate of a counter, summed (by the given labels)."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{selector}}}[$__rate_interval]))"


def ratio(metric: str, selector: str, bad: str, by: str = "") -> str:
    """Share of a counter's rate whose extra matcher `bad` matches: 0, not "no data", while
    nothing bad was ever counted (its series do not exist yet), as the SLO rules compute it."""
    total = rate(metric, selector, by)
    return f"({rate(metric, f'{selector}, {bad}', by)} or 0 * {total}) / {total}"


def quantile(q: float, histogram: str, selector: str, by: str = "") -> str:
    """The q-quantile of a histogram over the rate interval (by the given labels)."""
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, {rate(f'{histogram}_bucket', selector, labels)})"


def containers(*matchers: str) -> str:
    """Label matchers of the suite's containers in kube-state-metrics series, which know pods
    and containers but not components: the chart names each container after its component."""
    return sel(None, f'container=~"{ALL_COMPONENTS}"', *matchers)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


# Panels ---------------------------------------------------------------------------------------

PanelBuilder = Builder[models.Panel]


def _targets(queries: Sequence[Query], *, instant: bool) -> list[Builder[Dataquery]]:
    targets: list[Builder[Dataquery]] = []
    for index, query in enumerate(queries):
        target = (
            prometheus.Dataquery()
            .datasource(DATASOURCE)
            .expr(query.expr)
            .legend_format(query.legend or "__auto")
            .ref_id(chr(ord("A") + index))
        )
        targets.append(target.instant() if instant else target.range())
    return targets


def _thresholds(*steps: tuple[float | None, str]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


def graph(
    title: str,
    description: str,
    unit: str,
    *queries: Query,
    width: int = 8,
    height: int = 8,
    stack: bool = False,
    lines: Sequence[tuple[float, str]] = (),
) -> PanelBuilder:
    """A time series panel. `lines` draws dashed threshold lines (value, colour)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(20 if stack else 5)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .targets(_targets(queries, instant=False))
    )
    if stack:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    if lines:
        panel = panel.thresholds(_thresholds((None, "transparent"), *lines)).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED)
        )
    return panel


def single(
    title: str,
    description: str,
    unit: str,
    *queries: Query,
    width: int = 4,
    height: int = 4,
    steps: Sequence[tuple[float | None, str]] = ((None, GREEN),),
    decimals: int | None = None,
) -> PanelBuilder:
    """A stat panel of the last value of instant queries, coloured by `steps`."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .thresholds(_thresholds(*steps))
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.AUTO)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .targets(_targets(queries, instant=True))
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def note(title: str, markdown: str, *, width: int = 24, height: int = 8) -> PanelBuilder:
    """A text panel (explanations only: it has no query)."""
    return (
        text.Panel()
        .title(title)
        .mode(text_models.TextMode.MARKDOWN)
        .content(markdown)
        .span(width)
        .height(height)
    )


@dataclass
class Row:
    title: str
    panels: list[PanelBuilder] = field(default_factory=list)


# Dashboards -----------------------------------------------------------------------------------


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    rows: list[Row]
    variables: list[Builder[models.VariableModel]] = field(default_factory=list)
    #: Whether the namespace variable takes one namespace only (views of one release).
    one_namespace: bool = False


def _variables(spec: Dashboard) -> list[Any]:
    datasource = (
        dashboard_builders.DatasourceVariable("datasource").label("Data source").type("prometheus")
    )
    namespace = (
        dashboard_builders.QueryVariable("namespace")
        .label("Namespace")
        .datasource(DATASOURCE)
        .query(f'label_values(up{{component=~"{ALL_COMPONENTS}"}}, namespace)')
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
    )
    if not spec.one_namespace:
        namespace = namespace.multi(True).include_all(True).all_value(".+")
    return [datasource, namespace, *spec.variables]


def _lay_out(rows: Sequence[Row]) -> list[Any]:
    """Rows one below the other, each open, with its panels left to right on a 24-column grid."""
    placed: list[Any] = []
    next_id = 1
    y = 0
    for row in rows:
        row_model = dashboard_builders.Row(row.title).collapsed(False).build()
        row_model.grid_pos = models.GridPos(x=0, y=y, w=24, h=1)
        row_model.id_val = next_id
        next_id += 1
        placed.append(row_model)
        y += 1
        x = line_height = 0
        for builder in row.panels:
            panel = builder.build()
            assert panel.grid_pos is not None
            width, height = panel.grid_pos.w, panel.grid_pos.h
            if x + width > 24:
                y, x, line_height = y + line_height, 0, 0
            panel.grid_pos = models.GridPos(x=x, y=y, w=width, h=height)
            panel.id_val = next_id
            next_id += 1
            placed.append(panel)
            x += width
            line_height = max(line_height, height)
        y += line_height
    return placed


def build(spec: Dashboard) -> dict[str, Any]:
    """The dashboard JSON model of `spec`."""
    builder = (
        dashboard_builders.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["mercato"])
        .editable()
        .timezone("browser")
        .time("now-3h", "now")
        .refresh("1m")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .variables(_variables(spec))
        .link(
            dashboard_builders.DashboardLink("Mercato dashboards")
            .type(models.DashboardLinkType.DASHBOARDS)
            .tags(["mercato"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    model = builder.build()
    model.panels = _lay_out(spec.rows)
    result: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return result
