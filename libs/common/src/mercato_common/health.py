"""Health that tells the truth: a service is NOT_SERVING while a dependency it needs is down.

:class:`HealthWatch` is a lifecycle part that probes each declared dependency (a database, the
broker) every ``interval`` seconds. A required dependency that has failed its probes for longer
than ``grace`` seconds turns the server's gRPC health (``grpc.health.v1``, every service name and
the overall ``""``) NOT_SERVING; the first successful round of every required probe turns it
SERVING again. A single failed probe inside the grace does not flap the status, so one network
blip does not take a replica out of its Service.

Every probe's result is exported as ``mercato_dependency_up{dependency}`` (1 or 0) whether or
not it is required, and a change is logged once (not every interval).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from mercato_common.runtime import Periodic

__all__ = ["HealthWatch", "Probe"]

_log = logging.getLogger("mercato.health")

Probe = Callable[[], Awaitable[object]]


@dataclass
class _Dependency:
    name: str
    probe: Probe
    required: bool
    failing_since: float | None = None
    up: bool = True


class HealthWatch:
    """Probes the dependencies and keeps the serving status true to them: ``set_serving`` (the
    gRPC server's) is called with every change."""

    def __init__(
        self,
        set_serving: Callable[[bool], Awaitable[None]],
        *,
        interval: float,
        grace: float,
        timeout: float | None = None,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._set_serving = set_serving
        # A probe that hangs counts as a failure after this long (default: one interval).
        self._timeout = interval if timeout is None else timeout
        self._grace = grace
        self._clock = clock
        self._dependencies: list[_Dependency] = []
        self._serving = True
        self._up = Gauge(
            "mercato_dependency_up",
            "Whether the last probe of a dependency (database, broker) succeeded (1) or not (0).",
            ["dependency"],
            registry=registry,
        )
        self._periodic = Periodic(
            "health-watch", self.check, interval=interval, immediate=False, logger=_log
        )

    @property
    def serving(self) -> bool:
        return self._serving

    def watch(self, name: str, probe: Probe, *, required: bool = True) -> None:
        """Probe ``name`` with ``probe`` (an awaitable that raises when it is unreachable).

        ``required``: the service cannot do its job without it, so its outage turns the service
        NOT_SERVING; otherwise it is only reported (metric and log).
        """
        self._dependencies.append(_Dependency(name, probe, required))
        self._up.labels(name).set(1)

    async def check(self) -> bool:
        """One round of probes; updates the status and returns whether the service serves."""
        now = self._clock()
        results = await asyncio.gather(
            *(self._probe(dependency) for dependency in self._dependencies)
        )
        for dependency, ok in zip(self._dependencies, results, strict=True):
            self._record(dependency, ok, now)
        serving = all(
            dependency.failing_since is None or now - dependency.failing_since < self._grace
            for dependency in self._dependencies
            if dependency.required
        )
        if serving != self._serving:
            self._serving = serving
            down = [d.name for d in self._dependencies if not d.up]
            _log.warning(
                "health turned %s", "SERVING" if serving else "NOT_SERVING", extra={"down": down}
            )
            await self._set_serving(serving)
        return serving

    async def _probe(self, dependency: _Dependency) -> bool:
        try:
            await asyncio.wait_for(dependency.probe(), self._timeout)
        except Exception as exc:
            if dependency.up:
                _log.warning("dependency %s unreachable: %r", dependency.name, exc)
            return False
        return True

    def _record(self, dependency: _Dependency, ok: bool, now: float) -> None:
        if ok:
            if not dependency.up:
                _log.info("dependency %s reachable again", dependency.name)
            dependency.failing_since = None
        elif dependency.failing_since is None:
            dependency.failing_since = now
        dependency.up = ok
        self._up.labels(dependency.name).set(1 if ok else 0)

    async def start(self) -> None:
        if self._dependencies:
            await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
