"""The suite at a glance: public traffic, SLOs, components, events pipeline, business."""

from __future__ import annotations

from .kit import (
    ALL_COMPONENTS,
    GREEN,
    ORANGE,
    ORDER_EVENTS,
    RED,
    SLOS,
    Dashboard,
    Query,
    Row,
    containers,
    graph,
    quantile,
    rate,
    ratio,
    sel,
    single,
)
from .slos import BUDGET_STEPS, budget_remaining


def overview() -> Dashboard:
    # As the SLOs count them: the probes' own requests left out.
    gateway = sel("gateway", 'route!~"/healthz|/readyz"')
    suite = sel(None, f'component=~"{ALL_COMPONENTS}"')
    requests = "http_server_requests_total"
    duration = "http_server_request_duration_seconds"
    order_latency = sel(None, f'topic="{ORDER_EVENTS}"')
    restarts = f"increase(kube_pod_container_status_restarts_total{{{containers()}}}[1h])"
    return Dashboard(
        "mercato-overview",
        "Mercato / Overview",
        "The whole suite at a glance: public traffic, SLOs, the health of each component, "
        "the events pipeline and the business. The Mercato dashboards menu (top right) leads "
        "to the detailed ones.",
        [
            Row(
                "Gateway (public traffic)",
                [
                    single(
                        "Request rate",
                        "HTTP requests per second over all routes (health probes left out), now.",
                        "reqps",
                        Query(rate(requests, gateway)),
                        height=8,
                    ),
                    single(
                        "5xx ratio",
                        "Share of requests answered with a 5xx status over the rate interval. "
                        "Green under 0.1 % (the availability objective), red from 1 %.",
                        "percentunit",
                        Query(ratio(requests, gateway, 'status=~"5.."')),
                        steps=((None, GREEN), (0.001, ORANGE), (0.01, RED)),
                        decimals=3,
                        height=8,
                    ),
                    single(
                        "Latency p99",
                        "99th percentile of the response time over all routes. Green under "
                        "0.25 s, red from the 0.5 s latency threshold.",
                        "s",
                        Query(quantile(0.99, duration, gateway)),
                        steps=((None, GREEN), (0.25, ORANGE), (0.5, RED)),
                        height=8,
                    ),
                    graph(
                        "Requests by status",
                        "Responses per second by HTTP status: 2xx dominates, 429 is rate "
                        "limiting, 5xx is the suite failing.",
                        "reqps",
                        Query(rate(requests, gateway, "status"), "{{status}}"),
                        width=12,
                        stack=True,
                    ),
                    graph(
                        "5xx ratio over time",
                        "Share of requests answered with a 5xx status. Normal is 0; the dashed "
                        "lines are the 0.1 % objective and 1 %.",
                        "percentunit",
                        Query(ratio(requests, gateway, 'status=~"5.."'), "5xx"),
                        width=12,
                        lines=[(0.001, ORANGE), (0.01, RED)],
                    ),
                    graph(
                        "Latency p50 / p95 / p99",
                        "Response time quantiles over all routes. p99 well under 0.5 s (dashed) "
                        "is normal; a rising p50 means everything slowed down, a rising p99 "
                        "alone a slow dependency or route.",
                        "s",
                        Query(quantile(0.5, duration, gateway), "p50"),
                        Query(quantile(0.95, duration, gateway), "p95"),
                        Query(quantile(0.99, duration, gateway), "p99"),
                        width=12,
                        lines=[(0.5, RED)],
                    ),
                ],
            ),
            Row(
                "SLOs (error budget remaining over 30 days)",
                [
                    single(
                        slo,
                        f"Share of the 30-day error budget of {slo} left (bad events: "
                        f"{bad}). 100 % is untouched, 0 % spent; orange under 25 %. Details in "
                        "the SLOs dashboard.",
                        "percentunit",
                        Query(budget_remaining(slo), slo),
                        width=8,
                        steps=BUDGET_STEPS,
                        decimals=1,
                    )
                    for slo, bad in SLOS.items()
                ],
            ),
            Row(
                "Components",
                [
                    single(
                        "Targets up",
                        "Pods Prometheus scrapes successfully, per component. Each should "
                        "match its replica count.",
                        "short",
                        Query(f"sum by (component) (up{{{suite}}})", "{{component}}"),
                        width=8,
                        steps=((None, RED), (1.0, GREEN)),
                    ),
                    single(
                        "Targets down",
                        "Pods of the suite Prometheus cannot scrape. Normal is 0; a down "
                        "target is a crashed, stuck or starting pod.",
                        "short",
                        Query(f"count (up{{{suite}}} == 0) or vector(0)"),
                        steps=((None, GREEN), (1.0, RED)),
                    ),
                    single(
                        "Restarts (1h)",
                        "Container restarts of the suite's pods over the last hour. Normal is 0;"
                        " restarts come from crashes, OOM kills or failing liveness probes.",
                        "short",
                        Query(f"sum ({restarts}) or vector(0)"),
                        steps=((None, GREEN), (1.0, ORANGE), (5.0, RED)),
                    ),
                    single(
                        "Pods crash-looping",
                        "Containers of the suite waiting in CrashLoopBackOff. Normal is 0.",
                        "short",
                        Query(
                            "count (kube_pod_container_status_waiting_reason"
                            f"""{{{containers('reason="CrashLoopBackOff"')}}} == 1) or vector(0)"""
                        ),
                        steps=((None, GREEN), (1.0, RED)),
                        width=8,
                    ),
                    graph(
                        "Restarts by component",
                        "Container restarts per component over the trailing hour (the chart "
                        "names each container after its component). Without kube-state-metrics "
                        "(make observe), the restarts of the processes Prometheus scraped "
                        "(their start time changed). Flat at 0 is normal.",
                        "short",
                        Query(
                            f"sum by (container) ({restarts}) or sum by (container) ("
                            "label_replace(changes(process_start_time_seconds"
                            f'{{{suite}}}[1h]), "container", "$1", "component", "(.*)"))',
                            "{{container}}",
                        ),
                        width=8,
                    ),
                    graph(
                        "Memory by component",
                        "Resident memory summed over each component's pods. Flat after "
                        "warm-up; steps follow scaling, steady growth a leak.",
                        "bytes",
                        Query(
                            f"sum by (component) (process_resident_memory_bytes{{{suite}}})",
                            "{{component}}",
                        ),
                        width=8,
                    ),
                    graph(
                        "CPU by component",
                        "CPU used by each component's pods, in cores. Follows traffic; a "
                        "component near its pods' limits scales out (HPA).",
                        "short",
                        Query(
                            rate("process_cpu_seconds_total", suite, "component"), "{{component}}"
                        ),
                        width=8,
                    ),
                ],
            ),
            Row(
                "Events pipeline",
                [
                    single(
                        "Outbox backlog",
                        "Events written by auth, catalog and orders and not yet published to "
                        "Kafka, over all outboxes. Near 0 normally.",
                        "short",
                        Query(
                            "sum (max by (namespace, outbox) "
                            f"(mercato_outbox_backlog{{{sel()}}})) or vector(0)"
                        ),
                        steps=((None, GREEN), (100.0, ORANGE), (1000.0, RED)),
                        width=6,
                    ),
                    single(
                        "Oldest unsent event",
                        "Age of the oldest event waiting in any outbox. Under a few seconds "
                        "normally.",
                        "s",
                        Query(
                            f"max (mercato_outbox_oldest_unsent_age_seconds{{{sel()}}})"
                            " or vector(0)"
                        ),
                        steps=((None, GREEN), (10.0, ORANGE), (60.0, RED)),
                        width=6,
                    ),
                    single(
                        "Order events applied, p99 delay",
                        "99th percentile of the time from an order event to its effect in "
                        "analytics (the freshness SLO counts events later than 10 s).",
                        "s",
                        Query(
                            quantile(
                                0.99, "mercato_analytics_event_apply_latency_seconds", order_latency
                            )
                        ),
                        steps=((None, GREEN), (5.0, ORANGE), (10.0, RED)),
                        width=6,
                    ),
                    single(
                        "Analytics consumer lag",
                        "Records of the event topics analytics has not processed yet. Near 0 "
                        "normally.",
                        "short",
                        Query(
                            "sum (max by (namespace, topic, partition) "
                            f"(mercato_analytics_consumer_lag{{{sel()}}})) or vector(0)"
                        ),
                        steps=((None, GREEN), (1000.0, ORANGE), (10000.0, RED)),
                        width=6,
                    ),
                ],
            ),
            Row(
                "Business",
                [
                    graph(
                        "Orders placed per minute",
                        "Orders placed per minute, by currency. Follows the time of day; a drop "
                        "to 0 while the gateway serves traffic means checkout is broken.",
                        "short",
                        Query(
                            f"{rate('mercato_orders_placed_total', sel('orders'), 'currency')}"
                            " * 60",
                            "{{currency}}",
                        ),
                        width=12,
                    ),
                    graph(
                        "Revenue per hour",
                        "Revenue of paid orders at the current hourly pace, by currency, in "
                        "major units (the counter is in minor units, divided by 100).",
                        "short",
                        Query(
                            rate("mercato_orders_revenue_minor_total", sel("orders"), "currency")
                            + " * 3600 / 100",
                            "{{currency}}",
                        ),
                        width=12,
                    ),
                ],
            ),
        ],
    )
