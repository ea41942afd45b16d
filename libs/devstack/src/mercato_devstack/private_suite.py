"""A private copy of the whole suite, for the end-to-end tests and the benchmark.

Its own state folder and ports (so it runs beside a developer's `make run` and the shared test
stack), the checkout's build cache linked in (nothing rebuilt or downloaded), started as
``python -m mercato_devstack run`` in its own process group and stopped with SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mercato_devstack.config import StackConfig, find_repo_root
from mercato_devstack.stack import Stack
from mercato_devstack.suite import http_ok

__all__ = [
    "PrivateSuite",
    "isolated_env",
    "link_cache",
    "port_block",
    "running_status",
    "start_private_suite",
    "stop_private_suite",
]


def isolated_env(
    defaults: Mapping[str, str], *, override_prefix: str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default: os.environ) with ``defaults``, each overridable by its own variable.

    ``MERCATO_PG_PORT`` in ``defaults`` is overridden by ``<override_prefix>PG_PORT``, never by
    the caller's ``MERCATO_PG_PORT``: that one names the developer's stack, which a private suite
    must not land on.
    """
    env = dict(os.environ if base is None else base)
    for key, value in defaults.items():
        env[key] = env.get(override_prefix + key.removeprefix("MERCATO_"), value)
    env.setdefault("MERCATO_REPO_ROOT", str(find_repo_root(env)))
    return env


def port_block(repo_root: Path, name: str, block: int) -> dict[str, str]:
    """The state folder ``.state/<name>`` and every port of a private suite, in the thousand
    ``block`` (22: PostgreSQL 22432, Kafka 22092 and its controller 22093, MongoDB 22018, Redis
    22379, the gateway 22080, gRPC ports from 22061, metrics from 22461, Prometheus 22090,
    Jaeger 22686 and its OTLP receiver 22317). Keep ``block`` below 32, under the kernel's
    ephemeral range, where a listener could find its port taken by a client's local end."""
    return {
        "MERCATO_STATE_DIR": str(repo_root / ".state" / name),
        "MERCATO_PG_PORT": f"{block}432",
        "MERCATO_KAFKA_PORT": f"{block}092",
        "MERCATO_KAFKA_CONTROLLER_PORT": f"{block}093",
        "MERCATO_MONGO_PORT": f"{block}018",
        "MERCATO_REDIS_PORT": f"{block}379",
        "MERCATO_GATEWAY_PORT": f"{block}080",
        "MERCATO_SUITE_PORT_BASE": f"{block}060",
        "MERCATO_SUITE_METRICS_PORT_BASE": f"{block}460",
        "MERCATO_PROMETHEUS_PORT": f"{block}090",
        "MERCATO_JAEGER_PORT": f"{block}686",
        "MERCATO_JAEGER_OTLP_PORT": f"{block}317",
    }


def link_cache(env: Mapping[str, str]) -> Path:
    """Link the checkout's build cache into the private state folder; returns that folder."""
    state = Path(env["MERCATO_STATE_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    shared = find_repo_root(env) / ".state" / "cache"
    cache = state / "cache"
    if shared.is_dir() and not cache.exists() and cache.resolve() != shared.resolve():
        cache.symlink_to(shared, target_is_directory=True)
    return state


def running_status(state_dir: Path) -> dict[str, Any] | None:
    """The status of a suite whose supervisor is alive on ``state_dir``, else None."""
    try:
        status = json.loads((state_dir / "run" / "suite.json").read_text())
        os.kill(int(status["supervisor_pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return dict(status)


@dataclass
class PrivateSuite:
    env: dict[str, str]
    state_dir: Path
    url: str
    stack: Stack
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    ready_seconds: float = 0.0

    @property
    def status_file(self) -> Path:
        return self.state_dir / "run" / "suite.json"

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.status_file.read_text()))

    def pid(self, service: str) -> int:
        pid = self.status()["services"][service]["pid"]
        assert isinstance(pid, int), f"{service} has no process"
        return pid

    def pids(self) -> dict[str, int]:
        """Every service's and stack component's pid."""
        pids = {name: info["pid"] for name, info in self.status()["services"].items()}
        for component in self.stack.status():
            if component.pid:
                pids[component.name] = component.pid
        return pids

    def grpc_target(self, service: str) -> str:
        return f"127.0.0.1:{self.status()['services'][service]['grpc_port']}"

    def ready(self) -> bool:
        # /status: every upstream SERVING (the gateway's /readyz no longer depends on them).
        return http_ok(f"{self.url}/status")


def start_private_suite(
    env: dict[str, str], *, ready_timeout: float, reuse: bool = False
) -> PrivateSuite:
    """Start the suite described by ``env`` and wait until it is ready.

    With ``reuse``, a ready suite already running on that state folder (started by hand) is
    returned as it is (``process`` None: :func:`stop_private_suite` leaves it running);
    without, such a suite is an error.
    """
    state_dir = link_cache(env)
    url = f"http://127.0.0.1:{env['MERCATO_GATEWAY_PORT']}"
    stack = Stack(StackConfig.from_env(env))
    running = running_status(state_dir)
    if running is not None:
        if reuse and running.get("ready"):
            return PrivateSuite(env, state_dir, url, stack)
        raise RuntimeError(f"a suite already runs on {state_dir}: stop it first")
    log_path = state_dir / "run" / "supervisor.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mercato_devstack", "run"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    suite = PrivateSuite(env, state_dir, url, stack, process, log_path)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the suite exited with {process.returncode}: see {log_path}")
            status = running_status(state_dir)
            if status is not None and status.get("ready") and suite.ready():
                break
            if time.monotonic() - started > ready_timeout:
                raise RuntimeError(
                    f"the suite is not ready after {ready_timeout:.0f} s: {log_path}"
                )
            time.sleep(0.25)
    except BaseException:
        stop_private_suite(suite, stop_timeout=60)
        raise
    suite.ready_seconds = round(time.monotonic() - started, 1)
    return suite


def stop_private_suite(suite: PrivateSuite, *, stop_timeout: float) -> None:
    """SIGTERM the supervisor (it stops the services, then the stack); kill it if it hangs."""
    process = suite.process
    if process is None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(stop_timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        suite.stack.down()
