"""The auth rules, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mercato_auth.domain.errors import (
    EmailTaken,
    InvalidClient,
    InvalidCredentials,
    InvalidGrant,
    InvalidPageToken,
    InvalidRoles,
    InvalidScope,
    LoginThrottled,
    SelfLockout,
    UnsupportedGrantType,
    UnsupportedTokenType,
    WeakPassword,
)
from mercato_auth.domain.keys import KeyState, SigningKeyInfo, publish_until, rotation_due
from mercato_auth.domain.scopes import (
    ADMIN_SCOPES,
    ALL_SCOPES,
    CUSTOMER_SCOPES,
    Role,
    format_scope,
    grant_scopes,
    parse_scope,
    scopes_for_roles,
)
from mercato_auth.domain.throttle import (
    ThrottleKind,
    ThrottlePolicy,
    record_failure,
    retry_after,
    throttle_key,
)
from mercato_auth.domain.tokens import (
    AccessTokenClaims,
    RefreshCheck,
    RefreshTokenRecord,
    check_refresh_token,
)
from mercato_auth.domain.users import (
    PageCursor,
    User,
    UserFilter,
    UserState,
    canonical_roles,
    check_password_policy,
    decode_page_token,
    encode_page_token,
    normalize_email,
    page_size,
    plan_disable,
    plan_update,
)
from mercato_common.errors import ErrorKind
from mercato_common.rpc_errors import to_rpc_status

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def user(**overrides: object) -> User:
    values: dict[str, object] = {
        "id": "6f1c1d3e-8f0a-4c56-9a55-3c8f6f7a1b2c",
        "email": "ann@example.com",
        "display_name": "Ann",
        "roles": (Role.CUSTOMER,),
        "state": UserState.ACTIVE,
        "create_time": NOW,
        "update_time": NOW,
    }
    values.update(overrides)
    return User(**values)  # type: ignore[arg-type]


# Scopes ------------------------------------------------------------------------------------


def test_scopes_per_role_match_the_contract() -> None:
    assert {"catalog:read", "orders:read", "orders:write"} == CUSTOMER_SCOPES
    assert {
        "catalog:read",
        "catalog:write",
        "orders:read",
        "orders:write",
        "orders:fulfill",
        "orders:admin",
        "analytics:read",
        "users:admin",
    } == ADMIN_SCOPES
    assert "catalog:reserve" in ALL_SCOPES
    assert "catalog:reserve" not in ADMIN_SCOPES
    assert scopes_for_roles([Role.CUSTOMER, Role.ADMIN]) == ADMIN_SCOPES
    assert user().sorted_scopes == ["catalog:read", "orders:read", "orders:write"]


def test_scope_strings_and_grants() -> None:
    assert parse_scope("orders:read  catalog:read") == {"orders:read", "catalog:read"}
    assert parse_scope("") == frozenset()
    assert format_scope({"users:admin", "catalog:read"}) == "catalog:read users:admin"
    allowed = frozenset({"catalog:read", "orders:read"})
    assert grant_scopes(frozenset(), allowed) == allowed
    assert grant_scopes(frozenset({"orders:read"}), allowed) == {"orders:read"}
    with pytest.raises(InvalidScope) as caught:
        grant_scopes(frozenset({"orders:read", "users:admin", "made:up"}), allowed)
    assert caught.value.metadata["scopes"] == "users:admin made:up"


# Accounts ----------------------------------------------------------------------------------


def test_email_is_trimmed_and_lower_cased() -> None:
    assert normalize_email("  Ann.Lee@Example.COM\t") == "ann.lee@example.com"


@pytest.mark.parametrize(
    ("password", "ok"),
    [
        ("x" * 11, False),
        ("x" * 12, True),
        ("ü" * 12, True),  # characters, not bytes, for the minimum
        ("x" * 1024, True),
        ("x" * 1025, False),
        ("ü" * 513, False),  # 1026 bytes
    ],
)
def test_password_policy(password: str, ok: bool) -> None:
    if ok:
        check_password_policy(password)
    else:
        with pytest.raises(WeakPassword) as caught:
            check_password_policy(password)
        assert caught.value.field_violations[0].field == "password"
        assert password not in caught.value.message


def test_roles_are_canonical_and_never_empty() -> None:
    assert canonical_roles([Role.ADMIN, Role.CUSTOMER, Role.ADMIN]) == (Role.CUSTOMER, Role.ADMIN)
    with pytest.raises(InvalidRoles):
        canonical_roles([])


def test_update_changes_only_what_differs() -> None:
    same = plan_update(user(), display_name="Ann", roles=[Role.CUSTOMER], actor_id="admin", now=NOW)
    assert not same.changed
    assert same.user.update_time == NOW
    later = NOW + timedelta(minutes=1)
    renamed = plan_update(user(), display_name="Bea", roles=None, actor_id="admin", now=later)
    assert renamed.changed
    assert not renamed.roles_changed
    assert renamed.user.update_time == later
    promoted = plan_update(
        user(), display_name=None, roles=[Role.ADMIN, Role.CUSTOMER], actor_id="a", now=later
    )
    assert promoted.roles_changed
    assert promoted.old_roles == (Role.CUSTOMER,)
    assert promoted.user.roles == (Role.CUSTOMER, Role.ADMIN)


def test_admins_cannot_lock_themselves_out() -> None:
    admin = user(roles=(Role.ADMIN,))
    with pytest.raises(SelfLockout):
        plan_update(admin, display_name=None, roles=[Role.CUSTOMER], actor_id=admin.id, now=NOW)
    with pytest.raises(SelfLockout):
        plan_disable(admin, actor_id=admin.id, now=NOW)
    # Demoting another admin is fine.
    other = plan_update(admin, display_name=None, roles=[Role.CUSTOMER], actor_id="x", now=NOW)
    assert other.user.roles == (Role.CUSTOMER,)


def test_disable_is_idempotent() -> None:
    disabled = plan_disable(user(), actor_id="admin", now=NOW)
    assert disabled is not None
    assert disabled.state is UserState.DISABLED
    assert disabled.disable_time == NOW
    assert not disabled.active
    assert plan_disable(disabled, actor_id="admin", now=NOW + timedelta(hours=1)) is None


def test_page_tokens_round_trip_and_are_bound_to_the_filters() -> None:
    filters = UserFilter(role=Role.ADMIN)
    cursor = PageCursor(datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), user().id)
    token = encode_page_token(cursor, filters)
    assert decode_page_token(token, filters) == cursor
    assert decode_page_token("", filters) is None
    with pytest.raises(InvalidPageToken):
        decode_page_token(token, UserFilter(state=UserState.ACTIVE))
    for garbage in ("!!!", "e30", "bm90IGpzb24"):
        with pytest.raises(InvalidPageToken):
            decode_page_token(garbage, filters)
    assert page_size(0) == 20
    assert page_size(500) == 100
    assert page_size(7) == 7


# Throttling --------------------------------------------------------------------------------

POLICY = ThrottlePolicy(
    max_failures=3,
    window=timedelta(minutes=15),
    base_delay=timedelta(seconds=30),
    max_delay=timedelta(minutes=5),
)


def test_throttle_locks_at_the_threshold_and_backs_off_exponentially() -> None:
    state = None
    now = NOW
    delays = []
    for _ in range(8):
        state = record_failure(state, now, POLICY)
        delays.append(retry_after(state, now))
        now += timedelta(seconds=1)
    assert delays[:2] == [None, None]
    assert delays[2:] == [30, 60, 120, 240, 300, 300]  # capped at max_delay
    assert state is not None
    assert state.failures == 8


def test_throttle_forgets_old_failures_and_lock_expires() -> None:
    state = record_failure(None, NOW, POLICY)
    state = record_failure(state, NOW + timedelta(minutes=1), POLICY)
    assert state.failures == 2
    fresh = record_failure(state, NOW + timedelta(minutes=30), POLICY)
    assert fresh.failures == 1
    at = NOW + timedelta(minutes=1)
    locked = record_failure(state, at, POLICY)  # the third failure: 30 s
    assert retry_after(locked, at + timedelta(seconds=29.5)) == 1
    assert retry_after(locked, at + timedelta(seconds=30)) is None
    assert retry_after(None, NOW) is None


def test_throttle_keys_do_not_store_the_email() -> None:
    key = throttle_key(ThrottleKind.ACCOUNT, "ann@example.com")
    assert key.key.startswith("account:")
    assert "ann" not in key.key
    assert key == throttle_key(ThrottleKind.ACCOUNT, "ann@example.com")
    assert key != throttle_key(ThrottleKind.ADDRESS, "ann@example.com")
    with pytest.raises(ValueError, match="max_failures"):
        ThrottlePolicy(0, timedelta(1), timedelta(1), timedelta(1))


# Tokens ------------------------------------------------------------------------------------


def record(**overrides: object) -> RefreshTokenRecord:
    values: dict[str, object] = {
        "id": "t1",
        "family_id": "f1",
        "user_id": "u1",
        "client_id": "mercato-web",
        "expire_time": NOW + timedelta(days=30),
        "use_time": None,
        "family_revoke_time": None,
        "family_scopes": None,
    }
    values.update(overrides)
    return RefreshTokenRecord(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("found", "client_id", "expected"),
    [
        (record(), "", RefreshCheck.ROTATE),
        (record(), "mercato-web", RefreshCheck.ROTATE),
        (None, "", RefreshCheck.REJECT),
        (record(use_time=NOW), "", RefreshCheck.REUSED),
        (record(family_revoke_time=NOW), "", RefreshCheck.REJECT),
        (record(use_time=NOW, family_revoke_time=NOW), "", RefreshCheck.REJECT),
        (record(expire_time=NOW), "", RefreshCheck.REJECT),
        (record(), "orders", RefreshCheck.REJECT),
    ],
)
def test_refresh_token_checks(
    found: RefreshTokenRecord | None, client_id: str, expected: RefreshCheck
) -> None:
    assert check_refresh_token(found, now=NOW, client_id=client_id) is expected


def test_access_token_claims_follow_rfc_9068() -> None:
    claims = AccessTokenClaims(
        issuer="https://api.example",
        audience="mercato",
        subject="u1",
        client_id="mercato-web",
        scopes=frozenset({"orders:read", "catalog:read"}),
        issued_at=NOW,
        lifetime=timedelta(minutes=15),
        token_id="j1",
    ).to_jwt_claims()
    assert claims == {
        "iss": "https://api.example",
        "sub": "u1",
        "aud": "mercato",
        "exp": int(NOW.timestamp()) + 900,
        "iat": int(NOW.timestamp()),
        "jti": "j1",
        "client_id": "mercato-web",
        "scope": "catalog:read orders:read",
    }


# Keys --------------------------------------------------------------------------------------


def test_key_rotation_schedule_and_publication() -> None:
    key = SigningKeyInfo("k", "EdDSA", KeyState.ACTIVE, NOW, NOW, None, None)
    assert not rotation_due(key, NOW + timedelta(days=29), timedelta(days=30))
    assert rotation_due(key, NOW + timedelta(days=30), timedelta(days=30))
    until = publish_until(NOW, timedelta(minutes=15), timedelta(seconds=90))
    assert until == NOW + timedelta(minutes=16, seconds=30)


# Errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (EmailTaken(), ErrorKind.ALREADY_EXISTS, "EMAIL_TAKEN"),
        (InvalidCredentials(), ErrorKind.UNAUTHENTICATED, "INVALID_CREDENTIALS"),
        (LoginThrottled(42), ErrorKind.RESOURCE_EXHAUSTED, "LOGIN_THROTTLED"),
        (InvalidGrant(), ErrorKind.INVALID_ARGUMENT, "INVALID_GRANT"),
        (InvalidClient(), ErrorKind.UNAUTHENTICATED, "INVALID_CLIENT"),
        (InvalidScope(["x"]), ErrorKind.INVALID_ARGUMENT, "INVALID_SCOPE"),
        (UnsupportedGrantType(), ErrorKind.INVALID_ARGUMENT, "UNSUPPORTED_GRANT_TYPE"),
        (UnsupportedTokenType(), ErrorKind.INVALID_ARGUMENT, "UNSUPPORTED_TOKEN_TYPE"),
    ],
)
def test_errors_map_to_kinds_and_rfc_reasons(
    error: Exception, kind: ErrorKind, reason: str
) -> None:
    from mercato_auth.domain.errors import AuthError

    assert isinstance(error, AuthError)
    assert error.kind is kind
    assert error.reason == reason
    status = to_rpc_status(error)
    assert status.details[0].value  # one ErrorInfo, domain auth.mercato
    assert error.error_domain == "auth.mercato"


def test_throttle_error_carries_the_delay() -> None:
    error = LoginThrottled(0)
    assert error.retry_after_seconds == 1
    assert LoginThrottled(90).metadata == {"retry_after_seconds": "90"}
