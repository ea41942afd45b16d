"""Rate limiter fallbacks (no Redis), headers, client addresses and settings."""

from __future__ import annotations

import json

import pytest

from mercato_common.settings import SettingsError, load_settings
from mercato_gateway.proxy import ClientAddress
from mercato_gateway.ratelimit import RateLimiter, lease_size
from mercato_gateway.settings import GatewaySettings, RateLimitPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_local_buckets_refill_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(
        None,
        policies={"default": RateLimitPolicy(rate=2, burst=3)},
        prefix="p:",
        clock=clock,
    )
    decisions = [await limiter.check("default", "ip:1") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[2].remaining == 0
    assert decisions[3].retry_after == 1
    assert decisions[3].headers(limiter.window("default")) == {
        "ratelimit-policy": '"default";q=3;w=2',
        "ratelimit": '"default";r=0;t=2',
        "retry-after": "1",
    }
    assert (await limiter.check("default", "ip:2")).allowed  # another client
    clock.now += 0.5
    assert (await limiter.check("default", "ip:1")).allowed  # one token back
    assert not (await limiter.check("default", "ip:1")).allowed
    assert (await limiter.check("unknown-class", "ip:3")).policy_name == "unknown-class"


def test_client_address_and_forwarded_chain() -> None:
    direct = ClientAddress.of("10.0.0.9", "1.2.3.4", 0)
    assert (direct.address, direct.forwarded_for) == ("10.0.0.9", "10.0.0.9")
    proxied = ClientAddress.of("10.0.0.9", "9.9.9.9, 1.2.3.4", 1)
    assert (proxied.address, proxied.forwarded_for) == ("1.2.3.4", "9.9.9.9, 1.2.3.4")
    two = ClientAddress.of("10.0.0.9", "1.2.3.4, 10.0.0.8", 2)
    assert two.address == "1.2.3.4"
    short = ClientAddress.of("10.0.0.9", "", 1)
    assert short.address == "10.0.0.9"


def test_settings_from_environment() -> None:
    settings = load_settings(
        GatewaySettings,
        {
            "MERCATO_GATEWAY_PORT": "9090",
            "MERCATO_GATEWAY_CORS_ALLOW_ORIGINS": "https://a.example, https://b.example",
            "MERCATO_GATEWAY_RATE_LIMIT_STRICT": '{"rate": 1, "burst": 5}',
            "MERCATO_GATEWAY_DEADLINE_OVERRIDES": json.dumps(
                {"mercato.orders.v1.OrdersService/CreateOrder": 20}
            ),
            "MERCATO_GATEWAY_CATALOG_TARGET": "dns:///catalog:50062",
            "MERCATO_GATEWAY_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        },
    )
    assert settings.port == 9090
    assert settings.metrics_port == 9460
    assert settings.cors_allow_origins == ("https://a.example", "https://b.example")
    assert settings.rate_limit_strict == RateLimitPolicy(rate=1, burst=5)
    assert settings.deadline_overrides == {"mercato.orders.v1.OrdersService/CreateOrder": 20.0}
    assert settings.upstreams["catalog"] == "dns:///catalog:50062"
    with pytest.raises(SettingsError) as caught:
        load_settings(
            GatewaySettings,
            {"MERCATO_GATEWAY_TLS_CERT_FILE": "/x.pem", "MERCATO_GATEWAY_RATE_LIMIT_DEFAULT": "[}"},
        )
    assert "MERCATO_GATEWAY_RATE_LIMIT_DEFAULT" in str(caught.value)


@pytest.mark.parametrize(
    ("rate", "burst", "lease"),
    [(50, 100, 5), (2, 10, 1), (5, 5, 1), (1000, 50, 5), (100_000, 100_000, 100)],
)
def test_lease_is_a_tenth_of_a_second_of_the_rate_within_a_tenth_of_the_burst(
    rate: float, burst: int, lease: int
) -> None:
    assert lease_size(RateLimitPolicy(rate=rate, burst=burst)) == lease
