from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from mercato_common.metrics_set import MetricsSet


class Things(MetricsSet):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.things = Counter("mercato_test_things", "Things.", registry=registry)


class Others(MetricsSet):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.others = Counter("mercato_test_others", "Others.", registry=registry)


def test_one_set_per_class_and_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    # A second Things in the same registry would be refused (duplicate metric names).
    assert Things.for_registry(first) is Things.for_registry(first)
    assert Things.for_registry(first) is not Things.for_registry(second)
    assert isinstance(Others.for_registry(first), Others)
