"""Grafana dashboards of the suite, as code (Grafana Foundation SDK).

`DASHBOARDS` lists the functions that describe each dashboard; :func:`build` turns one
description into Grafana's JSON model. tools/dashboards.py writes them into the Helm chart.

- kit: selectors and queries, panels (time series, stat, text), rows, layout, JSON model
- rows: the rows several dashboards share (RED of gRPC methods and of HTTP routes,
  saturation, outbox relay, Kafka consumers)
- overview, services (one per component), suite (events pipeline, business), slos

Every query selects the suite's processes by the `component` label the chart's ServiceMonitors
copy from the pods, filters by the `$namespace` variable and takes its rates over
`$__rate_interval`.
"""

from __future__ import annotations

from .kit import Dashboard, build
from .overview import overview
from .services import analytics, auth, catalog, gateway, orders
from .slos import slos
from .suite import business, events

DASHBOARDS = (overview, gateway, auth, catalog, orders, analytics, events, business, slos)

__all__ = ["DASHBOARDS", "Dashboard", "build"]
