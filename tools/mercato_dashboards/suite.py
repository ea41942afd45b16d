"""Dashboards across the components: events pipeline, business."""

from __future__ import annotations

from .kit import RED, Dashboard, Query, Row, graph, quantile, rate, sel, single


def events() -> Dashboard:
    s = sel()
    latency = "mercato_analytics_event_apply_latency_seconds"
    return Dashboard(
        "mercato-events",
        "Mercato / Events pipeline",
        "From the outboxes through Kafka to the consumers: what waits to be published, what "
        "was, how far behind each consumer group is, what became of the records, and how "
        "fresh the analytics aggregates are.",
        [
            Row(
                "Outboxes (auth, catalog, orders)",
                [
                    graph(
                        "Backlog by outbox",
                        "Events written with a state change and not yet published, per outbox. "
                        "Near 0 normally; growth means the relay cannot publish.",
                        "short",
                        Query(f"max by (outbox) (mercato_outbox_backlog{{{s}}})", "{{outbox}}"),
                        width=6,
                    ),
                    graph(
                        "Oldest unsent event by outbox",
                        "Age of the oldest event waiting in each outbox: how late consumers "
                        "see the owner's changes. Under a second normally.",
                        "s",
                        Query(
                            f"max by (outbox) (mercato_outbox_oldest_unsent_age_seconds{{{s}}})",
                            "{{outbox}}",
                        ),
                        width=6,
                    ),
                    graph(
                        "Published by topic",
                        "Events published per second, per topic.",
                        "ops",
                        Query(rate("mercato_outbox_published_total", s, "topic"), "{{topic}}"),
                        width=6,
                        stack=True,
                    ),
                    graph(
                        "Publish errors by outbox",
                        "Failed publications per second (retried). Normal is 0.",
                        "ops",
                        Query(
                            rate("mercato_outbox_publish_errors_total", s, "outbox"), "{{outbox}}"
                        ),
                        width=6,
                    ),
                ],
            ),
            Row(
                "Consumers",
                [
                    graph(
                        "Consumer lag by group and topic",
                        "Records not yet processed per consumer group and topic (sum over "
                        "partitions, as each runner reports it). Near 0 normally.",
                        "short",
                        Query(
                            "sum by (group, topic) (max by (group, topic, partition) "
                            f"(mercato_kafka_consumer_lag{{{s}}}))",
                            "{{group}} {{topic}}",
                        ),
                    ),
                    graph(
                        "Analytics lag by topic",
                        "Records not yet committed by the analytics group, per topic, as "
                        "analytics measures it group-wide. Near 0 normally.",
                        "short",
                        Query(
                            "sum by (topic) (max by (topic, partition) "
                            f"(mercato_analytics_consumer_lag{{{s}}}))",
                            "{{topic}}",
                        ),
                    ),
                    graph(
                        "Records by outcome",
                        "Records handled per second by every consumer group, by outcome: "
                        "processed, duplicate, retried, dead_lettered.",
                        "ops",
                        Query(
                            rate("mercato_kafka_consumer_messages_total", s, "group, outcome"),
                            "{{group}} {{outcome}}",
                        ),
                        stack=True,
                    ),
                    graph(
                        "Dead letters",
                        "Records parked on a dead-letter topic per second, by consumer group "
                        "and source topic. Normal is 0: each one is an event that was not "
                        "applied and needs a look (mercato.<service>.dlq.v1).",
                        "ops",
                        Query(
                            rate(
                                "mercato_kafka_consumer_messages_total",
                                f'{s}, outcome="dead_lettered"',
                                "group, topic",
                            ),
                            "{{group}} {{topic}}",
                        ),
                        Query(
                            rate("mercato_analytics_dead_letters_total", s, "topic"),
                            "analytics {{topic}}",
                        ),
                        width=12,
                        lines=[(0.0001, RED)],
                    ),
                    graph(
                        "Retried records",
                        "Records whose handling failed transiently and was retried, per second "
                        "and group. Bursts follow a dependency's hiccup; a steady rate a "
                        "failing dependency.",
                        "ops",
                        Query(
                            rate(
                                "mercato_kafka_consumer_messages_total",
                                f'{s}, outcome="retried"',
                                "group, topic",
                            ),
                            "{{group}} {{topic}}",
                        ),
                        width=12,
                    ),
                ],
            ),
            Row(
                "Analytics freshness",
                [
                    graph(
                        "Apply latency p50 by topic",
                        "Median time from an event's time to its effect in analytics.",
                        "s",
                        Query(quantile(0.5, latency, s, "topic"), "{{topic}}"),
                    ),
                    graph(
                        "Apply latency p99 by topic",
                        "99th percentile of the time from an event's time to its effect. Order "
                        "events later than 10 s (dashed) count against the freshness SLO.",
                        "s",
                        Query(quantile(0.99, latency, s, "topic"), "{{topic}}"),
                        lines=[(10.0, RED)],
                    ),
                    graph(
                        "Time since newest event",
                        "Seconds since the event time of the newest event analytics handled, "
                        "per topic. Grows on a quiet topic without anything being wrong; "
                        "growing while the producer publishes means analytics is stuck.",
                        "s",
                        Query(
                            "time() - max by (topic) "
                            f"(mercato_analytics_newest_event_timestamp_seconds{{{s}}})",
                            "{{topic}}",
                        ),
                    ),
                ],
            ),
        ],
    )


def business() -> Dashboard:
    s = sel("orders")
    placed = "mercato_orders_placed_total"
    revenue = "mercato_orders_revenue_minor_total"
    transitions = "mercato_orders_transitions_total"
    return Dashboard(
        "mercato-business",
        "Mercato / Business",
        "Orders, revenue, conversion and users, from the services' business counters. "
        "Amounts are in major units: the counters count minor units (cents), divided by 100.",
        [
            Row(
                "Over the selected time range",
                [
                    single(
                        "Orders placed",
                        "Orders placed over the dashboard's time range, all currencies.",
                        "short",
                        Query(f"sum (increase({placed}{{{s}}}[$__range]))"),
                        width=6,
                        decimals=0,
                    ),
                    single(
                        "Revenue",
                        "Revenue of orders paid over the time range, per currency, in major "
                        "units (minor units divided by 100).",
                        "short",
                        Query(
                            f"sum by (currency) (increase({revenue}{{{s}}}[$__range])) / 100",
                            "{{currency}}",
                        ),
                        width=6,
                        decimals=2,
                    ),
                    single(
                        "Paid / placed",
                        "Orders paid over orders placed in the time range: the checkout "
                        "conversion. Stable from day to day; a drop points at payments.",
                        "percentunit",
                        Query(
                            f'sum (increase({transitions}{{{s}, to_state="PAID"}}[$__range]))'
                            f" / sum (increase({placed}{{{s}}}[$__range]))"
                        ),
                        width=6,
                        decimals=1,
                    ),
                    single(
                        "New users",
                        "Users registered over the time range.",
                        "short",
                        Query(
                            "sum (increase(mercato_auth_users_registered_total"
                            f"{{{sel('auth')}}}[$__range]))"
                        ),
                        width=6,
                        decimals=0,
                    ),
                ],
            ),
            Row(
                "Orders",
                [
                    graph(
                        "Orders placed per minute by currency",
                        "Orders placed per minute. Follows the time of day and campaigns; 0 "
                        "while the gateway serves traffic means checkout is broken.",
                        "short",
                        Query(f"{rate(placed, s, 'currency')} * 60", "{{currency}}"),
                    ),
                    graph(
                        "Revenue per hour by currency",
                        "Revenue of paid orders at the current hourly pace, per currency, in "
                        "major units: the counter is in minor units (cents) and divided by 100.",
                        "short",
                        Query(f"{rate(revenue, s, 'currency')} * 3600 / 100", "{{currency}}"),
                    ),
                    graph(
                        "Transitions per minute by state",
                        "Orders entering each state per minute: CONFIRMED at placement, then "
                        "PAID and FULFILLED; CANCELLED and FAILED are the ones lost.",
                        "short",
                        Query(f"{rate(transitions, s, 'to_state')} * 60", "{{to_state}}"),
                        stack=True,
                    ),
                    graph(
                        "Paid / placed (trailing hour)",
                        "Orders paid over orders placed in the trailing hour. An hour rather "
                        "than the rate interval because payment follows placement by minutes: "
                        "short windows swing around without meaning.",
                        "percentunit",
                        Query(
                            f'sum (increase({transitions}{{{s}, to_state="PAID"}}[1h]))'
                            f" / sum (increase({placed}{{{s}}}[1h]))",
                            "paid / placed",
                        ),
                        width=12,
                    ),
                    graph(
                        "Cancelled and failed per minute",
                        "Orders cancelled (by the customer) and failed (stock or payment) per "
                        "minute. A small share of placements; a jump in FAILED points at "
                        "catalog or the saga.",
                        "short",
                        Query(
                            rate(transitions, f'{s}, to_state=~"CANCELLED|FAILED"', "to_state")
                            + " * 60",
                            "{{to_state}}",
                        ),
                        width=12,
                    ),
                ],
            ),
            Row(
                "Users",
                [
                    graph(
                        "Registrations per hour",
                        "New users per hour, at the current pace.",
                        "short",
                        Query(
                            f"{rate('mercato_auth_users_registered_total', sel('auth'))} * 3600",
                            "registrations",
                        ),
                        width=12,
                    ),
                    graph(
                        "Logins per minute by outcome",
                        "Password logins per minute, by outcome. Successes follow active users; "
                        "failures stay a small share.",
                        "short",
                        Query(
                            f"{rate('mercato_auth_logins_total', sel('auth'), 'outcome')} * 60",
                            "{{outcome}}",
                        ),
                        width=12,
                        stack=True,
                    ),
                ],
            ),
        ],
    )
