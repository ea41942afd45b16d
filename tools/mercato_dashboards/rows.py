"""Rows shared by several dashboards: RED of gRPC methods and of HTTP routes, saturation,
outbox relay, Kafka consumers."""

from __future__ import annotations

from .kit import (
    DB_POOLS,
    GRPC_SERVICES,
    ORANGE,
    RED,
    SERVER_FAULT_CODES,
    Query,
    Row,
    graph,
    quantile,
    rate,
    ratio,
    sel,
)

# Shared rows ----------------------------------------------------------------------------------


def grpc_red_row(component: str) -> Row:
    """Rate, errors and duration of a service's gRPC methods (health checks left out)."""
    service = GRPC_SERVICES[component]
    s = sel(component, f'grpc_service="{service}"')
    handled = "grpc_server_handled_total"
    return Row(
        f"gRPC methods of {service}",
        [
            graph(
                "Requests by method",
                "Calls completed per second, per method. Shape follows the gateway's traffic; "
                "a method at zero while others serve means its callers stopped calling it.",
                "reqps",
                Query(rate(handled, s, "grpc_method"), "{{grpc_method}}"),
                stack=True,
            ),
            graph(
                "Responses by status code",
                "Calls completed per second, per gRPC status. OK dominates; NOT_FOUND, "
                "INVALID_ARGUMENT and the like are callers' mistakes, while UNKNOWN, INTERNAL, "
                "UNAVAILABLE or DEADLINE_EXCEEDED are the server failing.",
                "reqps",
                Query(rate(handled, s, "grpc_code"), "{{grpc_code}}"),
                stack=True,
            ),
            graph(
                "Server error ratio by method",
                "Share of calls ending in a server fault ("
                + SERVER_FAULT_CODES.replace("|", ", ")
                + "). Normal is 0; a sustained value above 0.1 % burns the gateway's "
                "availability budget.",
                "percentunit",
                Query(
                    ratio(handled, s, f'grpc_code=~"{SERVER_FAULT_CODES}"', "grpc_method"),
                    "{{grpc_method}}",
                ),
                lines=[(0.001, ORANGE), (0.01, RED)],
            ),
            graph(
                "Latency p50 by method",
                "Median time to handle a call, per method. Reads and lookups stay in the low "
                "milliseconds; writes that touch the database or another service take longer.",
                "s",
                Query(
                    quantile(0.5, "grpc_server_handling_seconds", s, "grpc_method"),
                    "{{grpc_method}}",
                ),
                width=12,
            ),
            graph(
                "Latency p99 by method",
                "99th percentile of the time to handle a call, per method. It should stay well "
                "under the gateway's 0.5 s latency objective; steps up point at a slow database, "
                "a slow downstream call or a blocked event loop (see Saturation).",
                "s",
                Query(
                    quantile(0.99, "grpc_server_handling_seconds", s, "grpc_method"),
                    "{{grpc_method}}",
                ),
                width=12,
                lines=[(0.5, RED)],
            ),
        ],
    )


def http_red_row(title: str, routes: str) -> Row:
    """Rate, errors and duration of the gateway's routes matching the regex `routes`."""
    s = sel("gateway", f'route=~"{routes}"')
    requests = "http_server_requests_total"
    duration = "http_server_request_duration_seconds"
    return Row(
        title,
        [
            graph(
                "Requests by route",
                "HTTP requests answered per second, per route template. This is the suite's "
                "public traffic; routes named `unmatched` are requests for unknown paths.",
                "reqps",
                Query(rate(requests, s, "method, route"), "{{method}} {{route}}"),
                stack=True,
            ),
            graph(
                "Responses by status",
                "Responses per second, per HTTP status. 2xx dominates; 401/403 follow token "
                "problems, 429 is rate limiting, any 5xx is the suite failing.",
                "reqps",
                Query(rate(requests, s, "status"), "{{status}}"),
                stack=True,
            ),
            graph(
                "5xx ratio by route",
                "Share of requests answered with a 5xx status, per route. Normal is 0; the "
                "availability objective allows 0.1 % over 30 days (dashed lines: 0.1 % and 1 %).",
                "percentunit",
                Query(ratio(requests, s, 'status=~"5.."', "route"), "{{route}}"),
                lines=[(0.001, ORANGE), (0.01, RED)],
            ),
            graph(
                "4xx ratio by route",
                "Share of requests refused as the client's fault (4xx), per route. A steady few "
                "percent is normal (expired tokens, unknown ids); a jump follows a client release "
                "or an attack.",
                "percentunit",
                Query(ratio(requests, s, 'status=~"4.."', "route"), "{{route}}"),
            ),
            graph(
                "Latency p50 by route",
                "Median time from request to response, per route. Tens of milliseconds are "
                "normal: the gateway adds little to the service it calls.",
                "s",
                Query(quantile(0.5, duration, s, "route"), "{{route}}"),
            ),
            graph(
                "Latency p99 by route",
                "99th percentile of the response time, per route. The latency objective counts "
                "requests slower than 0.5 s (dashed line); 99 % must be faster.",
                "s",
                Query(quantile(0.99, duration, s, "route"), "{{route}}"),
                lines=[(0.5, RED)],
            ),
        ],
    )


def saturation_row(component: str) -> Row:
    """How close a component's processes are to their limits."""
    s = sel(component)
    panels = [
        graph(
            "Event loop lag p99",
            "How late the event loop runs a timer callback, per pod (99th percentile). A healthy "
            "loop stays under a few milliseconds; 100 ms and more means something blocks the loop "
            "and every request in the pod waits as long.",
            "s",
            Query(quantile(0.99, "mercato_event_loop_lag_seconds", s, "pod"), "{{pod}}"),
            lines=[(0.1, RED)],
        ),
    ]
    pool = DB_POOLS.get(component)
    if pool:
        pool_sel = sel(component, f'pool="{pool}"')
        panels.append(
            graph(
                f"Database pool ({pool}): used vs max",
                "Connections checked out of the pool, per pod, against the pool's maximum. Used "
                "connections that sit at the maximum make requests queue for a connection: "
                "raise the pool size or find the slow queries.",
                "short",
                Query(
                    f'sum by (pod) (mercato_db_pool_connections{{{pool_sel}, state="used"}})',
                    "{{pod}} used",
                ),
                Query(f"max (mercato_db_pool_max_connections{{{pool_sel}}})", "max per pod"),
            )
        )
    if component != "gateway":
        panels.append(
            graph(
                "Kafka producer pending messages",
                "Records handed to the Kafka producer and not yet acknowledged, per pod. Near 0 "
                "normally; it grows while the brokers are slow or unreachable.",
                "short",
                Query(f"sum by (pod) (mercato_kafka_producer_pending_messages{{{s}}})", "{{pod}}"),
            )
        )
    panels += [
        graph(
            "Memory (resident)",
            "Resident memory per pod. Flat after warm-up is normal; steady growth until the "
            "container limit points at a leak (the pod is then OOM-killed and restarts).",
            "bytes",
            Query(f"sum by (pod) (process_resident_memory_bytes{{{s}}})", "{{pod}}"),
        ),
        graph(
            "CPU (cores)",
            "CPU time used per pod, in cores. One Python process uses at most about one core: "
            "near 1 the pod is CPU-bound and latency rises (the HPA adds pods).",
            "short",
            Query(rate("process_cpu_seconds_total", s, "pod"), "{{pod}}"),
        ),
    ]
    return Row(f"Saturation of {component}", panels)


def outbox_row(component: str) -> Row:
    """A component's outbox relay: what waits to be published and what was."""
    s = sel(component)
    return Row(
        f"Outbox of {component}",
        [
            graph(
                "Outbox backlog",
                "Events written with a state change and not yet published to Kafka. Near 0 "
                "normally; a growing backlog means the relay cannot publish (Kafka down, errors).",
                "short",
                Query(f"max by (outbox) (mercato_outbox_backlog{{{s}}})", "{{outbox}}"),
                width=6,
            ),
            graph(
                "Oldest unsent event age",
                "Age of the oldest event still waiting in the outbox. Under a second normally; "
                "it is how late downstream consumers see this service's changes.",
                "s",
                Query(
                    f"max by (outbox) (mercato_outbox_oldest_unsent_age_seconds{{{s}}})",
                    "{{outbox}}",
                ),
                width=6,
            ),
            graph(
                "Published events by topic",
                "Events published per second, per topic: the rate of this service's changes.",
                "ops",
                Query(rate("mercato_outbox_published_total", s, "topic"), "{{topic}}"),
                width=6,
            ),
            graph(
                "Publish errors",
                "Failed publications per second (the events stay pending and are retried). "
                "Normal is 0.",
                "ops",
                Query(rate("mercato_outbox_publish_errors_total", s, "outbox"), "{{outbox}}"),
                width=6,
            ),
        ],
    )


def consumer_row(component: str) -> Row:
    """A component's Kafka consumers: how far behind, and what became of the records."""
    s = sel(component)
    return Row(
        f"Kafka consumers of {component}",
        [
            graph(
                "Consumer lag by topic",
                "Records not yet processed, summed over the partitions of each topic. Near 0 "
                "normally; steady growth means the consumers cannot keep up or are stuck.",
                "short",
                Query(
                    "sum by (group, topic) (max by (group, topic, partition) "
                    f"(mercato_kafka_consumer_lag{{{s}}}))",
                    "{{group}} {{topic}}",
                ),
            ),
            graph(
                "Records by outcome",
                "Records handled per second: processed, duplicate (already applied, skipped), "
                "retried (a transient failure) and dead_lettered (parked on the DLQ).",
                "ops",
                Query(
                    rate("mercato_kafka_consumer_messages_total", s, "topic, outcome"),
                    "{{topic}} {{outcome}}",
                ),
                stack=True,
            ),
            graph(
                "Dead-lettered records",
                "Records parked on a dead-letter topic per second. Normal is 0: each one is an "
                "event this service could not apply and that needs a look.",
                "ops",
                Query(
                    rate(
                        "mercato_kafka_consumer_messages_total",
                        f'{s}, outcome="dead_lettered"',
                        "topic",
                    ),
                    "{{topic}}",
                ),
                lines=[(0.0001, RED)],
            ),
        ],
    )
