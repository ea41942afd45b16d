"""The SLO dashboard, and the SLO queries the overview shares."""

from __future__ import annotations

from .kit import BLUE, GREEN, ORANGE, RED, SLOS, Dashboard, Query, Row, graph, note, single

#: The burn-rate alerts of each SLO (files/prometheus-rules.yaml): alert name suffix, severity,
#: how long the condition must hold, and the (long window, short window, burn rate) pairs of
#: which either fires it.
BURN_RATE_ALERTS = (
    ("BurnRateFast", "page", "2m", (("1h", "5m", 14.4), ("6h", "30m", 6.0))),
    ("BurnRateSlow", "ticket", "15m", (("1d", "2h", 3.0), ("3d", "6h", 1.0))),
)
BURN_WINDOWS = ("1h", "6h", "1d", "3d")
SLO_WINDOW_HOURS = 30 * 24


def alert_name(slo: str, suffix: str) -> str:
    return "Mercato" + "".join(word.capitalize() for word in slo.split("-")) + suffix


def _hours(window: str) -> int:
    return int(window[:-1]) * {"h": 1, "d": 24}[window[-1]]


def slo_series(record: str, slo: str) -> str:
    """A series of the SLO recording rules (the chart's PrometheusRule records them per release
    namespace)."""
    return f'{record}{{slo="{slo}", namespace=~"$namespace"}}'


def slo_error_ratio(slo: str, window: str) -> str:
    """The SLI's error ratio over `window`."""
    return slo_series(f"slo:sli_error:ratio_rate{window}", slo)


def burn_rate(slo: str, window: str) -> str:
    """How fast the SLO's error budget burns over `window`: 1 spends it exactly in 30 days."""
    budget = slo_series("slo:error_budget:ratio", slo)
    return f"{slo_error_ratio(slo, window)} / on (namespace, slo) {budget}"


def budget_remaining(slo: str) -> str:
    """Share of the 30-day error budget left (negative once overspent)."""
    return f"1 - ({burn_rate(slo, '30d')})"


BUDGET_STEPS = ((None, RED), (0.0, ORANGE), (0.25, GREEN))
BURN_STEPS = ((None, GREEN), (1.0, ORANGE), (6.0, RED))


def _alert_table() -> str:
    lines = [
        "Each SLO has two multi-window, multi-burn-rate alerts. A pair fires when the burn rate "
        "over its **long** window *and* over its **short** window are both above the threshold: "
        "the long window makes the alert significant, the short one makes it stop soon after "
        "the problem does.",
        "",
        "| alert | severity | long window | short window | burn rate | budget spent "
        "(long window) | for |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for suffix, severity, hold, pairs in BURN_RATE_ALERTS:
        for long, short, burn in pairs:
            spent = burn * _hours(long) / SLO_WINDOW_HOURS
            lines.append(
                f"| `Mercato<Slo>{suffix}` | {severity} | {long} | {short} | {burn:g} "
                f"| {spent:.0%} | {hold} |"
            )
    names = ", ".join(
        f"`{alert_name(slo, suffix)}`" for slo in SLOS for suffix, *_ in BURN_RATE_ALERTS
    )
    lines += [
        "",
        f"Alerts: {names}.",
        "",
        "Burn rate = error ratio over the window / error budget (1 - objective). At 1 the "
        "budget lasts exactly the 30 days; at 14.4 it is gone in about 2 days. Runbooks: "
        "docs/runbooks/slo-<slo>.md.",
    ]
    return "\n".join(lines)


def slo_row(slo: str, bad: str) -> Row:
    steps = [
        (burn, RED if severity == "page" else ORANGE)
        for _, severity, _, pairs in BURN_RATE_ALERTS
        for _, _, burn in pairs
    ]
    return Row(
        f"SLO {slo}",
        [
            single(
                "Objective",
                f"Share of events that must be good over 30 days. Bad events: {bad}.",
                "percentunit",
                Query(slo_series("slo:objective:ratio", slo)),
                width=3,
                steps=((None, BLUE),),
                decimals=1,
            ),
            single(
                "Error budget remaining (30d)",
                "Share of the 30-day error budget left. 100 % untouched, 0 % spent (then "
                "negative); orange under 25 %.",
                "percentunit",
                Query(budget_remaining(slo)),
                width=5,
                steps=BUDGET_STEPS,
                decimals=1,
            ),
            single(
                "Burn rate",
                "How fast the budget burns over each alert window: 1 spends it exactly in 30 "
                "days. Alerts: 14.4 over 1h and 6 over 6h page, 3 over 1d and 1 over 3d open a "
                "ticket (see the last row).",
                "short",
                *(Query(burn_rate(slo, window), window) for window in BURN_WINDOWS),
                width=8,
                steps=BURN_STEPS,
                decimals=2,
            ),
            single(
                "Error ratio (30d)",
                f"Share of bad events over 30 days ({bad}), against the budget.",
                "percentunit",
                Query(slo_error_ratio(slo, "30d"), "error ratio"),
                Query(slo_series("slo:error_budget:ratio", slo), "budget"),
                width=8,
                decimals=3,
            ),
            graph(
                "SLI error ratio",
                f"Share of bad events ({bad}) over 5 minutes and 1 hour, against the error budget. "
                "Short spikes above the budget are fine; a 1h line that stays above it burns "
                "the budget faster than it lasts.",
                "percentunit",
                Query(slo_error_ratio(slo, "5m"), "5m"),
                Query(slo_error_ratio(slo, "1h"), "1h"),
                Query(slo_series("slo:error_budget:ratio", slo), "error budget"),
                width=12,
            ),
            graph(
                "Burn rate by window",
                "Burn rate over the alert windows, with the alert thresholds as dashed lines "
                "(14.4 and 6 page, 3 and 1 open a ticket when the short window agrees).",
                "short",
                *(Query(burn_rate(slo, window), window) for window in BURN_WINDOWS),
                width=12,
                lines=steps,
            ),
        ],
    )


def slos() -> Dashboard:
    return Dashboard(
        "mercato-slos",
        "Mercato / SLOs",
        "The suite's service level objectives: objective, error budget left over 30 days, "
        "burn rates over the alert windows and the SLIs over time, from the SLO recording "
        "rules of the chart's PrometheusRule. SLOs are per release: pick its namespace.",
        [
            *(slo_row(slo, bad) for slo, bad in SLOS.items()),
            Row("How the SLO alerts fire", [note("Burn-rate alerts", _alert_table(), height=10)]),
        ],
        one_namespace=True,
    )
