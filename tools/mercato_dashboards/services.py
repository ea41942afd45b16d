"""One dashboard per component: gateway, auth, catalog, orders, analytics."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.models import dashboard as models

from .kit import DATASOURCE, RED, Dashboard, Query, Row, graph, quantile, rate, ratio, sel
from .rows import consumer_row, grpc_red_row, http_red_row, outbox_row, saturation_row


def graphql_row(s: str) -> Row:
    """GraphQL (POST /graphql and its WebSocket): RED per root field, and live connections."""
    fields = "gateway_graphql_field_requests_total"
    return Row(
        "GraphQL",
        [
            graph(
                "Root fields by field",
                "GraphQL root fields resolved per second (each is one RPC), per field and "
                "operation type. A client's own operation names are not labels; the fields are.",
                "ops",
                Query(rate(fields, s, "operation_type, field"), "{{operation_type}} {{field}}"),
                width=6,
                stack=True,
            ),
            graph(
                "Root field errors by code",
                "Share of root fields answered with an error, per gRPC status code. NOT_FOUND "
                "and INVALID_ARGUMENT are the clients'; INTERNAL or UNAVAILABLE is the suite "
                "failing.",
                "percentunit",
                Query(ratio(fields, s, 'code!="OK"', "code"), "{{code}}"),
                width=6,
            ),
            graph(
                "Root field latency p99",
                "99th percentile of the time to resolve a root field (its RPC included), per "
                "field.",
                "s",
                Query(
                    quantile(0.99, "gateway_graphql_field_duration_seconds", s, "field"),
                    "{{field}}",
                ),
                width=6,
            ),
            graph(
                "WebSocket connections and subscriptions",
                "Open GraphQL WebSocket connections and running operations over them, and "
                "resources watched for subscriptions, summed over pods.",
                "short",
                Query(f"sum (gateway_graphql_ws_connections{{{s}}})", "connections"),
                Query(f"sum (gateway_graphql_ws_operations{{{s}}})", "operations"),
                width=6,
            ),
        ],
    )


def gateway() -> Dashboard:
    s = sel("gateway")
    decisions = "gateway_rate_limit_decisions_total"
    route = (
        dashboard_builders.QueryVariable("route")
        .label("Route")
        .datasource(DATASOURCE)
        .query(f"label_values(http_server_requests_total{{{s}}}, route)")
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    return Dashboard(
        "mercato-gateway",
        "Mercato / Gateway",
        "The public HTTP entry point: per-route rate, errors and latency, requests in flight, "
        "rate limiting and its Redis backend, and the gateway's saturation.",
        [
            http_red_row("Routes ($route)", "$route"),
            Row(
                "Concurrency and rate limiting",
                [
                    graph(
                        "Requests in flight",
                        "Requests being handled right now, per pod. A few per pod is normal; "
                        "a climb without more traffic means a slow backend holds requests.",
                        "short",
                        Query(f"sum by (pod) (http_server_requests_in_flight{{{s}}})", "{{pod}}"),
                        width=6,
                    ),
                    graph(
                        "Rate limit decisions",
                        "Rate-limit decisions per second, by route class and decision. "
                        "`limited` answers 429; a few are normal, many mean a client floods a "
                        "route or the limits are too tight.",
                        "ops",
                        Query(
                            rate(decisions, s, "route_class, decision"),
                            "{{route_class}} {{decision}}",
                        ),
                        width=6,
                        stack=True,
                    ),
                    graph(
                        "Decisions by backend",
                        "Which backend decided: `redis` (shared across replicas) normally; "
                        "`local`, `open` or `closed` are the fallback used while Redis fails.",
                        "ops",
                        Query(rate(decisions, s, "backend"), "{{backend}}"),
                        width=6,
                        stack=True,
                    ),
                    graph(
                        "Redis errors and degraded pods",
                        "Failed rate-limit calls to Redis per second, and pods currently "
                        "skipping Redis (degraded = 1). Both 0 normally; while degraded the "
                        "fallback decides (see Decisions by backend).",
                        "short",
                        Query(rate("gateway_rate_limit_redis_errors_total", s), "Redis errors/s"),
                        Query(f"sum (gateway_rate_limit_degraded{{{s}}})", "degraded pods"),
                        width=6,
                    ),
                ],
            ),
            graphql_row(s),
            saturation_row("gateway"),
        ],
        [route],
    )


def auth() -> Dashboard:
    s = sel("auth")
    return Dashboard(
        "mercato-auth",
        "Mercato / Auth",
        "Users, logins and tokens: gRPC rate, errors and latency per method, login and token "
        "activity, the outbox and saturation of auth.",
        [
            grpc_red_row("auth"),
            Row(
                "Logins and tokens",
                [
                    graph(
                        "Logins by outcome",
                        "Password logins per second, by outcome. Failures are normal at a low "
                        "share; a surge of failures or throttled logins is credential stuffing.",
                        "ops",
                        Query(rate("mercato_auth_logins_total", s, "outcome"), "{{outcome}}"),
                        width=6,
                        stack=True,
                    ),
                    graph(
                        "Tokens issued by grant type",
                        "Access tokens issued per second, by OAuth grant type. refresh_token "
                        "follows the access token lifetime; client_credentials the services' "
                        "own calls.",
                        "ops",
                        Query(
                            rate("mercato_auth_tokens_issued_total", s, "grant_type"),
                            "{{grant_type}}",
                        ),
                        width=6,
                        stack=True,
                    ),
                    graph(
                        "Refresh token reuse detected",
                        "Refresh tokens presented again after rotation (the whole token family "
                        "is revoked). Normal is 0: each one may be a stolen token.",
                        "ops",
                        Query(rate("mercato_auth_refresh_token_reuse_detected_total", s), "reuse"),
                        width=6,
                        lines=[(0.0001, RED)],
                    ),
                    graph(
                        "Registrations",
                        "New users registered per minute.",
                        "short",
                        Query(
                            f"{rate('mercato_auth_users_registered_total', s)} * 60", "per minute"
                        ),
                        width=6,
                    ),
                ],
            ),
            outbox_row("auth"),
            saturation_row("auth"),
        ],
    )


def catalog() -> Dashboard:
    s = sel("catalog")
    lookups = "mercato_catalog_cache_lookups_total"
    hits = sel("catalog", 'result="hit"')
    hits_and_misses = sel("catalog", 'result=~"hit|miss"')
    return Dashboard(
        "mercato-catalog",
        "Mercato / Catalog",
        "Products and stock: gRPC rate, errors and latency per method, the Redis product "
        "cache, the outbox and saturation of catalog.",
        [
            grpc_red_row("catalog"),
            Row(
                "Product cache (Redis)",
                [
                    graph(
                        "Cache hit ratio",
                        "Share of product lookups answered from Redis (bypassed lookups left "
                        "out). Steady and high once warm; a drop follows a flush, a deploy "
                        "or many updates.",
                        "percentunit",
                        Query(
                            f"{rate(lookups, hits)} / {rate(lookups, hits_and_misses)}",
                            "hit ratio",
                        ),
                    ),
                    graph(
                        "Lookups by result",
                        "Product cache lookups per second: hit, miss, and bypass (Redis skipped "
                        "because it fails: every lookup then reads the database).",
                        "ops",
                        Query(rate(lookups, s, "result"), "{{result}}"),
                        stack=True,
                    ),
                    graph(
                        "Cache errors by operation",
                        "Failed Redis calls per second, by operation. Normal is 0; errors mean "
                        "Redis is down or slow, and lookups bypass the cache.",
                        "ops",
                        Query(
                            rate("mercato_catalog_cache_errors_total", s, "operation"),
                            "{{operation}}",
                        ),
                    ),
                ],
            ),
            outbox_row("catalog"),
            saturation_row("catalog"),
        ],
    )


def orders() -> Dashboard:
    s = sel("orders")
    return Dashboard(
        "mercato-orders",
        "Mercato / Orders",
        "Orders and their saga: gRPC rate, errors and latency per method, order flow "
        "(placements, transitions, replays, compensations, reconciler), the outbox and "
        "saturation of orders.",
        [
            grpc_red_row("orders"),
            Row(
                "Order flow",
                [
                    graph(
                        "Orders placed by currency",
                        "Orders placed per minute, by currency.",
                        "short",
                        Query(
                            f"{rate('mercato_orders_placed_total', s, 'currency')} * 60",
                            "{{currency}}",
                        ),
                    ),
                    graph(
                        "Transitions by state",
                        "Order state changes per minute, by the state entered. CONFIRMED "
                        "follows placements, PAID and FULFILLED trail it; CANCELLED and FAILED "
                        "should stay a small share.",
                        "short",
                        Query(
                            f"{rate('mercato_orders_transitions_total', s, 'to_state')} * 60",
                            "{{to_state}}",
                        ),
                        stack=True,
                    ),
                    graph(
                        "Idempotent replays",
                        "CreateOrder calls answered from an earlier call with the same "
                        "idempotency key, per second: client retries. A few are normal; a surge "
                        "follows timeouts between the client and the gateway.",
                        "ops",
                        Query(rate("mercato_orders_idempotent_replays_total", s), "replays"),
                    ),
                    graph(
                        "Saga compensations by outcome",
                        "Stock reservations released (or deferred, skipped) because an order "
                        "failed or was cancelled, per second. `deferred` means catalog could "
                        "not be reached and the reconciler will retry.",
                        "ops",
                        Query(
                            rate("mercato_orders_saga_compensations_total", s, "outcome"),
                            "{{outcome}}",
                        ),
                        stack=True,
                    ),
                    graph(
                        "Reconciler actions",
                        "Orders the reconciler repaired per second, by action (orders stuck "
                        "half-way through the saga). Near 0 normally; steady activity means a "
                        "step of the saga keeps failing.",
                        "ops",
                        Query(rate("mercato_orders_reconciled_total", s, "action"), "{{action}}"),
                    ),
                    graph(
                        "Payment provider events",
                        "Webhook events of the payment provider per second, by outcome: paid, "
                        "repeated (delivered again), refunded (a payment that could not pay its "
                        "order), ignored, invalid. Steady `invalid` means the webhook's signing "
                        "secret does not match the provider's (no order gets paid by events).",
                        "ops",
                        Query(
                            rate("mercato_orders_payment_events_total", s, "outcome"),
                            "{{outcome}}",
                        ),
                    ),
                ],
            ),
            outbox_row("orders"),
            saturation_row("orders"),
        ],
    )


def analytics() -> Dashboard:
    s = sel("analytics")
    latency = "mercato_analytics_event_apply_latency_seconds"
    return Dashboard(
        "mercato-analytics",
        "Mercato / Analytics",
        "The aggregates behind reporting: gRPC rate, errors and latency per method, event "
        "processing (outcomes, apply latency, lag, dead letters) and saturation of analytics.",
        [
            grpc_red_row("analytics"),
            Row(
                "Event processing",
                [
                    graph(
                        "Events by outcome",
                        "Events handled per second: applied, duplicate (already applied), "
                        "ignored (not relevant to the aggregates), unknown (a type this "
                        "version does not know), failed (dead-lettered). Mostly applied.",
                        "ops",
                        Query(rate("mercato_analytics_events_total", s, "outcome"), "{{outcome}}"),
                        stack=True,
                    ),
                    graph(
                        "Events by type",
                        "Events handled per second, by event type: the suite's activity as "
                        "analytics sees it.",
                        "ops",
                        Query(rate("mercato_analytics_events_total", s, "type"), "{{type}}"),
                        stack=True,
                    ),
                    graph(
                        "Apply latency p50 / p99 by topic",
                        "Time from an event's time to its effect in the aggregates, per source "
                        "topic. Under a second normally; order events later than 10 s (dashed) "
                        "count against the freshness SLO.",
                        "s",
                        Query(quantile(0.5, latency, s, "topic"), "p50 {{topic}}"),
                        Query(quantile(0.99, latency, s, "topic"), "p99 {{topic}}"),
                        lines=[(10.0, RED)],
                    ),
                    graph(
                        "Group lag by topic",
                        "Records of each event topic not yet committed by the analytics group, "
                        "summed over partitions. Near 0 normally; steady growth means analytics "
                        "cannot keep up (KEDA/HPA adds consumers) or is stuck.",
                        "short",
                        Query(
                            "sum by (topic) (max by (topic, partition) "
                            f"(mercato_analytics_consumer_lag{{{s}}}))",
                            "{{topic}}",
                        ),
                    ),
                    graph(
                        "Time since newest event",
                        "Seconds since the event time of the newest event analytics handled, "
                        "per topic. Small while the suite is busy; on a quiet topic it grows "
                        "without anything being wrong.",
                        "s",
                        Query(
                            "time() - max by (topic) "
                            f"(mercato_analytics_newest_event_timestamp_seconds{{{s}}})",
                            "{{topic}}",
                        ),
                    ),
                    graph(
                        "Dead letters and store retries",
                        "Events parked on the dead-letter topic per second, by source topic, "
                        "and applications retried because the database was unreachable. Both 0 "
                        "normally.",
                        "ops",
                        Query(
                            rate("mercato_analytics_dead_letters_total", s, "topic"),
                            "dead letters {{topic}}",
                        ),
                        Query(rate("mercato_analytics_store_retries_total", s), "store retries"),
                    ),
                ],
            ),
            consumer_row("analytics"),
            saturation_row("analytics"),
        ],
    )
