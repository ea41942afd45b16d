"""Brute-force throttling per account and per client address, shared through PostgreSQL."""

from __future__ import annotations

import statistics
import time

import pytest
from grpc import StatusCode

pytestmark = pytest.mark.integration

PASSWORD = "a long enough password"


async def test_account_throttling_locks_then_resets_on_success(make_settings, start_auth) -> None:
    """Guessing an account's password from one address locks that address out of that account,
    with growing delays; the owner elsewhere is unaffected."""
    settings = make_settings(
        throttle_account_max_failures=3,
        throttle_address_max_failures=100,
        throttle_base_delay_seconds=60,
    )
    async with start_auth(settings) as auth:
        await auth.register("ann@example.com")
        for _ in range(3):
            failed = await auth.expect_failure(
                auth.login("ann@example.com", "wrong password", address="198.51.100.7")
            )
            assert failed.reason == "INVALID_CREDENTIALS"
        # Locked from there: even the right password is refused, with the delay to wait.
        throttled = await auth.expect_failure(
            auth.login("ann@example.com", PASSWORD, address="198.51.100.7")
        )
        assert throttled.code == StatusCode.RESOURCE_EXHAUSTED
        assert throttled.reason == "LOGIN_THROTTLED"
        assert 55 <= int(throttled.metadata["retry_after_seconds"]) <= 60
        assert throttled.retry_delay == int(throttled.metadata["retry_after_seconds"])
        # The owner, from another address, is not locked out.
        assert (await auth.login("ann@example.com", PASSWORD, address="203.0.113.5")).access_token
        # An unknown account is throttled the same way (no enumeration through throttling).
        for _ in range(3):
            await auth.expect_failure(auth.login("ghost@example.com", "wrong password"))
        ghost = await auth.expect_failure(auth.login("ghost@example.com", "wrong password"))
        assert ghost.reason == "LOGIN_THROTTLED"

        # Another replica shares the counters (they live in PostgreSQL).
        async with start_auth(settings) as replica:
            other = await replica.expect_failure(
                replica.login("ann@example.com", PASSWORD, address="198.51.100.7")
            )
            assert other.reason == "LOGIN_THROTTLED"

        # Once the delay is over, success resets the counters of the attempt.
        await auth.fetch("UPDATE login_throttle SET locked_until = now() - interval '1 second'")
        assert (await auth.login("ann@example.com", PASSWORD, address="198.51.100.7")).access_token
        # Failures start again from zero: two more do not lock.
        for _ in range(2):
            await auth.expect_failure(
                auth.login("ann@example.com", "wrong password", address="198.51.100.7")
            )
        assert (await auth.login("ann@example.com", PASSWORD, address="198.51.100.7")).access_token


async def test_guesses_from_many_addresses_meet_a_short_ceiling(make_settings, start_auth) -> None:
    """Guesses spread over many addresses (each below its own limit) meet the account's ceiling:
    a short lock that never grows, so the owner waits at most that long, never more."""
    settings = make_settings(
        throttle_account_max_failures=3,
        throttle_address_max_failures=100,
        throttle_account_ceiling_failures=4,
        throttle_account_ceiling_delay_seconds=5,
        throttle_base_delay_seconds=60,
    )
    async with start_auth(settings) as auth:
        await auth.register("ann@example.com")
        for round_ in range(3):
            for i in range(4):
                address = f"198.51.{100 + round_}.{i}"
                failed = await auth.expect_failure(
                    auth.login("ann@example.com", "wrong password", address=address)
                )
                assert failed.reason in ("INVALID_CREDENTIALS", "LOGIN_THROTTLED")
            owner = await auth.expect_failure(
                auth.login("ann@example.com", PASSWORD, address="203.0.113.5")
            )
            assert owner.reason == "LOGIN_THROTTLED"
            # The ceiling's lock does not grow with the attack.
            assert 1 <= int(owner.metadata["retry_after_seconds"]) <= 5
            await auth.fetch(
                "UPDATE login_throttle SET locked_until = now() - interval '1 second' "
                "WHERE kind = 'account'"
            )
        assert (await auth.login("ann@example.com", PASSWORD, address="203.0.113.5")).access_token


async def test_address_throttling_spans_accounts(make_settings, start_auth) -> None:
    settings = make_settings(
        throttle_account_max_failures=100,
        throttle_address_max_failures=4,
        throttle_base_delay_seconds=30,
    )
    async with start_auth(settings) as auth:
        await auth.register("ann@example.com")
        for i in range(4):  # spraying many accounts from one address
            await auth.expect_failure(
                auth.login(f"user{i}@example.com", "wrong password", address="192.0.2.7")
            )
        blocked = await auth.expect_failure(
            auth.login("ann@example.com", PASSWORD, address="192.0.2.7")
        )
        assert blocked.reason == "LOGIN_THROTTLED"
        # The gateway appends the address it saw; the last hop is the one that counts.
        spoofed = await auth.expect_failure(
            auth.login("ann@example.com", PASSWORD, address="10.9.9.9, 192.0.2.7")
        )
        assert spoofed.reason == "LOGIN_THROTTLED"
        # Other addresses are unaffected.
        assert (await auth.login("ann@example.com", PASSWORD, address="192.0.2.8")).access_token


async def test_client_authentication_is_throttled(make_settings, start_auth) -> None:
    from mercato.auth.v1 import auth_pb2

    settings = make_settings(throttle_account_max_failures=2, throttle_base_delay_seconds=30)
    async with start_auth(settings) as auth:
        request = auth_pb2.IssueTokenRequest(
            grant_type="client_credentials", client_id="orders", client_secret="guessing-0000"
        )
        for _ in range(2):
            assert (await auth.expect_failure(auth.stub.IssueToken(request))).reason == (
                "INVALID_CLIENT"
            )
        throttled = await auth.expect_failure(auth.stub.IssueToken(request))
        assert throttled.code == StatusCode.RESOURCE_EXHAUSTED
        assert throttled.retry_delay is not None
        assert throttled.retry_delay > 0


async def test_unknown_email_and_wrong_password_take_comparable_time(
    make_settings, start_auth
) -> None:
    # Realistic enough argon2 costs that hashing dominates (a few ms per attempt).
    settings = make_settings(
        argon2_time_cost=2,
        argon2_memory_cost_kib=8192,
        throttle_account_max_failures=1000,
        throttle_address_max_failures=1000,
    )
    async with start_auth(settings) as auth:
        await auth.register("ann@example.com")

        async def timed(email: str) -> float:
            started = time.perf_counter()
            await auth.expect_failure(auth.login(email, "wrong password"))
            return time.perf_counter() - started

        known, unknown = [], []
        for i in range(12):
            known.append(await timed("ann@example.com"))
            unknown.append(await timed(f"nobody{i}@example.com"))
        ratio = statistics.median(unknown) / statistics.median(known)
        assert 0.6 < ratio < 1.6, (statistics.median(known), statistics.median(unknown))
