from mercato_common.redis_client import RedisBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_skips_redis_for_the_period_and_an_outage_is_said_once() -> None:
    clock = Clock()
    breaker = RedisBreaker(2.0, clock)
    assert breaker.allows()
    assert breaker.failed()  # the outage starts
    assert not breaker.allows()
    clock.now += 1.9
    assert not breaker.allows()
    clock.now += 0.1
    assert breaker.allows()
    assert not breaker.failed()  # the same outage: not said again
    clock.now += 2.0
    assert breaker.succeeded()  # the outage ends
    assert not breaker.succeeded()
    assert breaker.failed()  # a new outage is said again
