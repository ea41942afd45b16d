"""`make observe-snapshot`: every dashboard panel, drawn from a live Prometheus into one HTML page.

    python tools/observe_snapshot.py [--prometheus URL] [--minutes 15] [--output FILE]

Reads the Grafana dashboards the chart ships (deploy/helm/mercato/files/dashboards/), runs every
panel's queries over the last ``--minutes`` through Prometheus' HTTP API with the variables
filled as Grafana fills them over the local suite (mercato_devstack.observe), and writes one
static page (no script, no external asset): a line chart per time-series panel, the last value
per stat panel, the query under each. A reviewer without Grafana sees what an SRE would.

The default Prometheus is `make observe`'s (127.0.0.1, ``MERCATO_PROMETHEUS_PORT`` or 9090); the
default output is docs/observe-snapshot.html, which the README links.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mercato_devstack.observe import (
    ROUTES_SELECTOR,
    dashboard_variables,
    expand,
    panel_queries,
)

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "observe-snapshot.html"
WIDTH, HEIGHT = 420, 130
#: Series drawn per panel at most (the rest are counted under the chart).
MAX_SERIES = 8
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


class PrometheusApi:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:  # noqa: S310 - a URL the user gives
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]


@dataclass
class Series:
    legend: str
    points: list[tuple[float, float]]


@dataclass
class Panel:
    dashboard: str
    title: str
    kind: str
    unit: str
    description: str
    queries: list[str] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)


def legend_of(template: str, labels: dict[str, str]) -> str:
    if template:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"


def collect(api: PrometheusApi, minutes: int) -> list[Panel]:
    routes = api.get("/api/v1/label/route/values", **{"match[]": ROUTES_SELECTOR})
    variables = dashboard_variables(routes)
    end = time.time()
    start = end - minutes * 60
    step = max(5, minutes * 60 // 120)
    panels: dict[tuple[str, str], Panel] = {}
    for query in panel_queries(ROOT):
        panel = panels.setdefault(
            (query.dashboard, query.panel),
            Panel(query.dashboard_title, query.panel, query.kind, query.unit, query.description),
        )
        expr = expand(query.expr, variables)
        panel.queries.append(expr)
        data = api.get(
            "/api/v1/query_range", query=expr, start=str(start), end=str(end), step=str(step)
        )
        for result in data["result"]:
            points = [(float(t), float(v)) for t, v in result["values"]]
            panel.series.append(Series(legend_of(query.legend, result["metric"]), points))
    return list(panels.values())


def format_value(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return str(value)
    if unit == "percentunit":
        return f"{value * 100:.2f} %"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    if unit in ("reqps", "ops"):
        return f"{value:.2f}/s"
    return f"{value:.3g}"


def chart(panel: Panel) -> str:
    """An SVG line chart of the panel's series (NaN points leave gaps)."""
    drawn = panel.series[:MAX_SERIES]
    values = [v for s in drawn for _, v in s.points if math.isfinite(v)]
    times = [t for s in drawn for t, _ in s.points]
    if not values or not times:
        return '<p class="empty">no data</p>'
    low, high = min([*values, 0.0]), max(values)
    if high == low:
        high = low + 1
    t0, t1 = min(times), max(times)
    span = (t1 - t0) or 1

    def xy(t: float, v: float) -> str:
        x = 40 + (t - t0) / span * (WIDTH - 50)
        y = HEIGHT - 15 - (v - low) / (high - low) * (HEIGHT - 25)
        return f"{x:.1f},{y:.1f}"

    lines = []
    for index, series in enumerate(drawn):
        runs: list[list[str]] = [[]]
        for t, v in series.points:
            if math.isfinite(v):
                runs[-1].append(xy(t, v))
            elif runs[-1]:
                runs.append([])
        for run in runs:
            if run:
                lines.append(
                    f'<polyline fill="none" stroke="{COLOURS[index % len(COLOURS)]}" '
                    f'stroke-width="1.5" points="{" ".join(run)}"/>'
                )
    axis = (
        f'<text x="2" y="12">{html.escape(format_value(high, panel.unit))}</text>'
        f'<text x="2" y="{HEIGHT - 15}">{html.escape(format_value(low, panel.unit))}</text>'
        f'<line x1="40" y1="{HEIGHT - 15}" x2="{WIDTH - 10}" y2="{HEIGHT - 15}" stroke="#ccc"/>'
    )
    legend = "".join(
        f'<li><span style="color:{COLOURS[i % len(COLOURS)]}">&#9632;</span> '
        f"{html.escape(s.legend)}: {html.escape(format_value(s.points[-1][1], panel.unit))}</li>"
        for i, s in enumerate(drawn)
    )
    more = len(panel.series) - len(drawn)
    if more > 0:
        legend += f"<li>and {more} more series</li>"
    return (
        f'<svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'font-size="10" font-family="sans-serif">{axis}{"".join(lines)}</svg>'
        f'<ul class="legend">{legend}</ul>'
    )


def stat(panel: Panel) -> str:
    if not panel.series:
        return '<p class="empty">no data</p>'
    items = "".join(
        f"<li><b>{html.escape(format_value(s.points[-1][1], panel.unit))}</b>"
        f" {html.escape(s.legend if len(panel.series) > 1 else '')}</li>"
        for s in panel.series[:MAX_SERIES]
    )
    return f'<ul class="stat">{items}</ul>'


def render(panels: Sequence[Panel], prometheus: str, minutes: int) -> str:
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    empty = sum(1 for panel in panels if not panel.series)
    sections = []
    for dashboard in dict.fromkeys(panel.dashboard for panel in panels):
        cards = []
        for panel in (p for p in panels if p.dashboard == dashboard):
            body = stat(panel) if panel.kind == "stat" else chart(panel)
            queries = "".join(f"<code>{html.escape(q)}</code>" for q in panel.queries)
            cards.append(
                f'<div class="panel"><h3>{html.escape(panel.title)}</h3>{body}'
                f"<details><summary>query</summary>{queries}"
                f"<p>{html.escape(panel.description)}</p></details></div>"
            )
        sections.append(
            f"<h2>{html.escape(dashboard)}</h2><div class='grid'>{''.join(cards)}</div>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mercato dashboards snapshot</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.panel {{ border: 1px solid #ddd; border-radius: 4px; padding: 6px 10px; width: {WIDTH + 10}px; }}
.panel h3 {{ font-size: 13px; margin: 4px 0; }}
.legend, .stat {{ list-style: none; padding: 0; margin: 2px 0; font-size: 11px; }}
.stat b {{ font-size: 22px; }}
.empty {{ color: #b00; }}
code {{ display: block; font-size: 10px; white-space: pre-wrap; color: #555; }}
details p {{ font-size: 11px; }}
</style></head><body>
<h1>mercato dashboards snapshot</h1>
<p>Every panel of the Grafana dashboards in <code>deploy/helm/mercato/files/dashboards/</code>,
queried from {html.escape(prometheus)} over the {minutes} minutes before {generated}
(<code>make observe</code>, a short mixed load, <code>make observe-snapshot</code>).
{len(panels)} panels, {empty} without data.</p>
{"".join(sections)}
</body></html>
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    port = os.environ.get("MERCATO_PROMETHEUS_PORT") or "9090"
    parser.add_argument("--prometheus", default=f"http://127.0.0.1:{port}")
    parser.add_argument("--minutes", type=int, default=15)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    try:
        panels = collect(PrometheusApi(args.prometheus), args.minutes)
    except OSError as error:
        print(
            f"cannot query Prometheus at {args.prometheus} ({error}): is `make observe` running?",
            file=sys.stderr,
        )
        return 1
    args.output.write_text(render(panels, args.prometheus, args.minutes))
    empty = [f"{p.dashboard} / {p.title}" for p in panels if not p.series]
    print(f"{args.output}: {len(panels)} panels, {len(empty)} without data")
    for name in empty:
        print(f"  no data: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
