"""The environment of the end-to-end suite: its own state folder, ports and short timings.

Separate from `make run` (state ``.state/e2e``, every port moved by +10000 or so) so the tests can
run while a developer's suite or another engineer's tests use the default ports. The build cache
(``.state/cache``: Kafka's jars, FerretDB's binary) is linked in, so nothing is rebuilt.

``python tests/e2e/suite_env.py`` prints the variables as shell ``export`` lines, to start the
same suite by hand (``eval "$(python tests/e2e/suite_env.py)"; python -m mercato_devstack run``);
the tests then reuse it and leave it running.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from mercato_devstack.private_suite import isolated_env, link_cache, port_block

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Each can be overridden with MERCATO_E2E_<name without MERCATO_> (e.g. MERCATO_E2E_PG_PORT,
#: MERCATO_E2E_OTEL_EXPORTER_OTLP_ENDPOINT):
#: the suite never inherits the developer's own MERCATO_PG_PORT & co., whose stack it would hit.
#: Every port is below the kernel's ephemeral range (32768-60999): a listener there can find its
#: port taken by some client connection's local end and fail to start.
DEFAULTS: dict[str, str] = {
    "MERCATO_STATE_DIR": str(REPO_ROOT / ".state" / "e2e"),
    "MERCATO_PG_PORT": "25432",
    "MERCATO_KAFKA_PORT": "29092",
    "MERCATO_KAFKA_CONTROLLER_PORT": "29093",
    "MERCATO_MONGO_PORT": "24018",
    "MERCATO_REDIS_PORT": "26379",
    "MERCATO_GATEWAY_PORT": "18080",
    "MERCATO_SUITE_PORT_BASE": "24060",
    "MERCATO_SUITE_METRICS_PORT_BASE": "19460",
    # Every service reaches Kafka over TLS with SCRAM-SHA-512, as against a managed Kafka: the
    # whole journey (relays, consumers, health probes, lag positions) runs on the secure path.
    "MERCATO_SUITE_KAFKA_SECURITY": "sasl_ssl",
    # Every process exports its spans to the tests' OTLP receiver (otlp_receiver.py), flushed
    # every 200 ms so a test sees a trace soon after the request.
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:14317",
    "OTEL_BSP_SCHEDULE_DELAY": "200",
    # Short repair timings so the fault tests see the reconciler and sweeper act within seconds.
    # The lease must exceed AUTH_TIMEOUT + 2 x CATALOG_TIMEOUT + DATABASE_COMMAND_TIMEOUT.
    "MERCATO_ORDERS_AUTH_TIMEOUT_SECONDS": "2",
    "MERCATO_ORDERS_CATALOG_TIMEOUT_SECONDS": "2",
    "MERCATO_ORDERS_COMPENSATION_TIMEOUT_SECONDS": "2",
    "MERCATO_ORDERS_DATABASE_COMMAND_TIMEOUT_SECONDS": "3",
    "MERCATO_ORDERS_IDEMPOTENCY_LEASE_SECONDS": "10",
    "MERCATO_ORDERS_RECONCILE_INTERVAL_SECONDS": "1",
    "MERCATO_ORDERS_RECONCILE_ORPHAN_GRACE_SECONDS": "10",
    "MERCATO_ORDERS_RECONCILE_CATALOG_SCAN_EVERY": "2",
    "MERCATO_CATALOG_SWEEP_INTERVAL_SECONDS": "1",
    "MERCATO_CATALOG_ORPHAN_GRACE_SECONDS": "10",
    "MERCATO_CATALOG_STUCK_AFTER_SECONDS": "5",
    # The fault tests place hundreds of unpaid orders as one customer; the per-user caps are
    # tested in services/orders/tests/integration/test_placement.py.
    "MERCATO_ORDERS_MAX_OPEN_ORDERS_PER_USER": "0",
    "MERCATO_ORDERS_MAX_UNITS_PER_PRODUCT_PER_USER": "0",
    # Many logins from one address: the public-write limit would throttle the tests themselves.
    "MERCATO_GATEWAY_RATE_LIMIT_STRICT": json.dumps({"rate": 200, "burst": 400}),
    "MERCATO_GATEWAY_RATE_LIMIT_DEFAULT": json.dumps({"rate": 500, "burst": 1000}),
}


#: The observed suite (test_observe.py): a second private suite with Prometheus and Jaeger, as
#: `make observe` runs them, on ports of its own. Alerts wait 5 s instead of their minutes (the
#: loaded copy of the rules only) and Prometheus scrapes every second. Overridable with
#: MERCATO_OBSERVE_E2E_<name without MERCATO_>.
OBSERVE_DEFAULTS: dict[str, str] = {
    **{
        key: value
        for key, value in DEFAULTS.items()
        if key.startswith(("MERCATO_ORDERS_", "MERCATO_CATALOG_", "OTEL_BSP_"))
    },
    **port_block(REPO_ROOT, "observe", 23),
    "MERCATO_OBSERVE": "1",
    "MERCATO_PROMETHEUS_INTERVAL": "1s",
    "MERCATO_OBSERVE_ALERT_FOR": "5s",
    # Analytics reads its group's lag from Kafka every 2 s instead of 15 s.
    "MERCATO_ANALYTICS_LAG_REFRESH_SECONDS": "2",
    # Room for the load's traffic from one address, but a burst of logins still meets a 429.
    "MERCATO_GATEWAY_RATE_LIMIT_STRICT": json.dumps({"rate": 10, "burst": 30}),
    # The alert tests send thousands of requests from one address within seconds.
    "MERCATO_GATEWAY_RATE_LIMIT_DEFAULT": json.dumps({"rate": 5000, "burst": 10000}),
}


def observe_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: os.environ) with the observed suite's values."""
    env = dict(os.environ if base is None else base)
    env.setdefault("MERCATO_REPO_ROOT", str(REPO_ROOT))
    return isolated_env(OBSERVE_DEFAULTS, override_prefix="MERCATO_OBSERVE_E2E_", base=env)


def suite_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: os.environ) with the e2e values: MERCATO_E2E_* or the defaults."""
    env = dict(os.environ if base is None else base)
    env.setdefault("MERCATO_REPO_ROOT", str(REPO_ROOT))
    return isolated_env(DEFAULTS, override_prefix="MERCATO_E2E_", base=env)


if __name__ == "__main__":
    env = suite_env({})
    link_cache(env)
    for key in (*DEFAULTS, "MERCATO_REPO_ROOT"):
        print(f"export {key}={shlex.quote(env[key])}")
