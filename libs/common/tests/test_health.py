"""HealthWatch: a required dependency down longer than the grace turns the service NOT_SERVING."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from mercato_common.health import HealthWatch


class Target:
    def __init__(self) -> None:
        self.changes: list[bool] = []

    async def set_serving(self, serving: bool) -> None:
        self.changes.append(serving)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Switch:
    """A probe that fails while ``down`` is set."""

    def __init__(self) -> None:
        self.down = False

    async def __call__(self) -> None:
        if self.down:
            raise ConnectionRefusedError("down")


def watch(grace: float = 5.0) -> tuple[HealthWatch, Target, Clock, CollectorRegistry]:
    target, clock, registry = Target(), Clock(), CollectorRegistry()
    health = HealthWatch(
        target.set_serving, interval=1.0, grace=grace, timeout=0.05, registry=registry, clock=clock
    )
    return health, target, clock, registry


def up(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value("mercato_dependency_up", {"dependency": name})


async def test_not_serving_only_after_the_grace_and_serving_again_on_recovery() -> None:
    health, target, clock, registry = watch(grace=5.0)
    database = Switch()
    health.watch("postgres", database)

    assert await health.check() is True
    database.down = True
    assert await health.check() is True  # a blip inside the grace does not flap
    assert up(registry, "postgres") == 0
    clock.now += 4.9
    assert await health.check() is True
    clock.now += 0.2
    assert await health.check() is False
    assert target.changes == [False]

    database.down = False
    assert await health.check() is True
    assert target.changes == [False, True]
    assert up(registry, "postgres") == 1


async def test_a_recovered_blip_restarts_the_grace() -> None:
    health, target, clock, _ = watch(grace=5.0)
    database = Switch()
    health.watch("postgres", database)
    database.down = True
    await health.check()
    clock.now += 4.0
    database.down = False
    await health.check()
    database.down = True
    clock.now += 4.0
    assert await health.check() is True  # down again, but only just
    assert target.changes == []


async def test_an_optional_dependency_is_reported_but_does_not_stop_serving() -> None:
    health, target, clock, registry = watch(grace=0.0)
    broker = Switch()
    broker.down = True
    health.watch("kafka", broker, required=False)
    clock.now += 60
    assert await health.check() is True
    assert up(registry, "kafka") == 0
    assert target.changes == []


async def test_a_hanging_probe_counts_as_down() -> None:
    health, target, _, registry = watch(grace=0.0)

    async def hangs() -> None:
        await asyncio.sleep(60)

    health.watch("mongodb", hangs)
    assert await health.check() is False
    assert up(registry, "mongodb") == 0
    assert target.changes == [False]
