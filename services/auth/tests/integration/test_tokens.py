"""Register → login → refresh rotation → reuse detection → logout, and the token endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import jwt
import pytest
from grpc import StatusCode

from mercato.auth.v1 import auth_pb2

pytestmark = pytest.mark.integration


async def test_register_login_refresh_reuse_and_logout(auth) -> None:
    user = await auth.register("Ann@Example.COM")
    assert user.email == "ann@example.com"
    assert list(user.roles) == [auth_pb2.ROLE_CUSTOMER]
    assert list(user.scopes) == ["catalog:read", "orders:read", "orders:write"]
    assert user.state == auth_pb2.USER_STATE_ACTIVE

    taken = await auth.expect_failure(auth.register("ann@example.com"))
    assert (taken.code, taken.reason) == (StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN")

    # Unknown email and wrong password: the same error.
    wrong = await auth.expect_failure(auth.login("ann@example.com", "not the password"))
    unknown = await auth.expect_failure(auth.login("nobody@example.com", "not the password"))
    assert (wrong.code, wrong.reason, wrong.message) == (
        unknown.code,
        unknown.reason,
        unknown.message,
    )
    assert wrong.code == StatusCode.UNAUTHENTICATED
    assert wrong.reason == "INVALID_CREDENTIALS"
    assert "password" not in str(wrong.metadata)

    login = await auth.login("ANN@example.com", "a long enough password")
    assert login.token_type == "Bearer"
    assert login.expires_in == 900
    assert login.scope == "catalog:read orders:read orders:write"
    assert len(login.refresh_token) == 43  # 256 bits, base64url

    # RFC 9068 access token.
    header = jwt.get_unverified_header(login.access_token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "EdDSA"
    claims = jwt.decode(login.access_token, options={"verify_signature": False})
    assert claims["sub"] == user.id
    assert claims["iss"] == auth.ISSUER
    assert claims["aud"] == auth.AUDIENCE
    assert claims["client_id"] == "mercato-web"
    assert claims["scope"] == "catalog:read orders:read orders:write"
    assert claims["exp"] - claims["iat"] == 900
    assert claims["jti"]
    # The login session: the refresh token family, revoked with it.
    assert claims["sid"]

    me = await auth.stub.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=auth.bearer(login.access_token)
    )
    assert me.user.id == user.id

    # The database holds only the refresh token's hash.
    rows = await auth.fetch("SELECT token_hash FROM refresh_tokens")
    assert all(login.refresh_token.encode() not in bytes(row["token_hash"]) for row in rows)

    # Rotation: every use gives a new refresh token.
    first = await auth.stub.IssueToken(
        auth_pb2.IssueTokenRequest(grant_type="refresh_token", refresh_token=login.refresh_token)
    )
    assert first.refresh_token
    assert first.refresh_token != login.refresh_token
    assert first.scope == login.scope
    second = await auth.stub.IssueToken(
        auth_pb2.IssueTokenRequest(grant_type="refresh_token", refresh_token=first.refresh_token)
    )

    # Reuse of a rotated token: rejected, and the whole family dies (the live token too).
    reused = await auth.expect_failure(
        auth.stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                grant_type="refresh_token", refresh_token=login.refresh_token
            )
        )
    )
    assert (reused.code, reused.reason) == (StatusCode.INVALID_ARGUMENT, "INVALID_GRANT")
    family_dead = await auth.expect_failure(
        auth.stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                grant_type="refresh_token", refresh_token=second.refresh_token
            )
        )
    )
    assert family_dead.reason == "INVALID_GRANT"
    revoked = await auth.fetch("SELECT revoke_reason FROM refresh_token_families")
    assert [row["revoke_reason"] for row in revoked] == ["reuse"]
    # The family's access tokens die with it, the first login's as well as the last refresh's.
    me = auth_pb2.GetCurrentUserRequest()
    await asyncio.sleep(1.1)  # clean answers of earlier calls, TOKEN_REVOCATION_CACHE_SECONDS
    for stolen in (login.access_token, second.access_token):
        refused = await auth.expect_failure(
            auth.stub.GetCurrentUser(me, metadata=auth.bearer(stolen))
        )
        assert (refused.code, refused.reason) == (StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")

    # Logout (RFC 7009) revokes a fresh login's family, and the access tokens it issued.
    again = await auth.login("ann@example.com", "a long enough password")
    assert (await auth.stub.GetCurrentUser(me, metadata=auth.bearer(again.access_token))).user
    await auth.stub.RevokeToken(
        auth_pb2.RevokeTokenRequest(token=again.refresh_token, token_type_hint="refresh_token")
    )
    after_logout = await auth.expect_failure(
        auth.stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                grant_type="refresh_token", refresh_token=again.refresh_token
            )
        )
    )
    assert after_logout.reason == "INVALID_GRANT"
    await asyncio.sleep(1.1)  # the clean answer of the call above, TOKEN_REVOCATION_CACHE_SECONDS
    refused = await auth.expect_failure(
        auth.stub.GetCurrentUser(me, metadata=auth.bearer(again.access_token))
    )
    assert (refused.code, refused.reason) == (StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")
    # Revoking again, or revoking garbage, succeeds (RFC 7009 section 2.2).
    await auth.stub.RevokeToken(auth_pb2.RevokeTokenRequest(token=again.refresh_token))
    await auth.stub.RevokeToken(auth_pb2.RevokeTokenRequest(token="not-a-token"))
    # Logout with the access token revokes that token alone: it is refused from then on (here
    # by auth's own verifier, the one every service has); revoking it again succeeds.
    third = await auth.login("ann@example.com", "a long enough password")
    sibling = await auth.stub.IssueToken(
        auth_pb2.IssueTokenRequest(grant_type="refresh_token", refresh_token=third.refresh_token)
    )
    assert (await auth.stub.GetCurrentUser(me, metadata=auth.bearer(third.access_token))).user
    await auth.stub.RevokeToken(auth_pb2.RevokeTokenRequest(token=third.access_token))
    await asyncio.sleep(1.1)
    refused = await auth.expect_failure(
        auth.stub.GetCurrentUser(me, metadata=auth.bearer(third.access_token))
    )
    assert (refused.code, refused.reason) == (StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")
    await auth.stub.RevokeToken(auth_pb2.RevokeTokenRequest(token=third.access_token))
    assert (await auth.stub.GetCurrentUser(me, metadata=auth.bearer(sibling.access_token))).user
    # Other sessions of the same user are untouched.
    other = await auth.login("ann@example.com", "a long enough password")
    assert (await auth.stub.GetCurrentUser(me, metadata=auth.bearer(other.access_token))).user


async def test_access_token_revocation_needs_the_revocation_list(make_settings, start_auth) -> None:
    async with start_auth(make_settings(redis_url="")) as auth:
        await auth.register("ann@example.com")
        login = await auth.login("ann@example.com", "a long enough password")
        unsupported = await auth.expect_failure(
            auth.stub.RevokeToken(auth_pb2.RevokeTokenRequest(token=login.access_token))
        )
        assert unsupported.reason == "UNSUPPORTED_TOKEN_TYPE"


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_an_unreachable_revocation_list(make_settings, start_auth, on_error: str) -> None:
    # Nothing listens on port 9 of loopback: every Redis command fails at once.
    settings = make_settings(redis_url="redis://127.0.0.1:9/0", token_revocation_on_error=on_error)
    async with start_auth(settings) as auth:
        user = await auth.register("ann@example.com")
        login = await auth.login("ann@example.com", "a long enough password")
        me = auth_pb2.GetCurrentUserRequest()
        call = auth.stub.GetCurrentUser(me, metadata=auth.bearer(login.access_token))
        if on_error == "open":
            assert (await call).user.id == user.id  # signature, expiry, audience still checked
        else:
            closed = await auth.expect_failure(call)
            assert (closed.code, closed.reason) == (
                StatusCode.UNAVAILABLE,
                "REVOCATION_UNAVAILABLE",
            )
        # A revocation that cannot be written is never acknowledged.
        unwritten = await auth.expect_failure(
            auth.stub.RevokeToken(auth_pb2.RevokeTokenRequest(token=login.access_token))
        )
        assert (unwritten.code, unwritten.reason) == (
            StatusCode.UNAVAILABLE,
            "REVOCATION_UNAVAILABLE",
        )
        # Nor a logout with the refresh token (its access tokens could not be denied); its
        # family is revoked all the same, and a retry is answered once Redis is back.
        unwritten = await auth.expect_failure(
            auth.stub.RevokeToken(auth_pb2.RevokeTokenRequest(token=login.refresh_token))
        )
        assert unwritten.reason == "REVOCATION_UNAVAILABLE"
        dead = await auth.expect_failure(
            auth.stub.IssueToken(
                auth_pb2.IssueTokenRequest(
                    grant_type="refresh_token", refresh_token=login.refresh_token
                )
            )
        )
        assert dead.reason == "INVALID_GRANT"


async def test_refresh_scope_rules(auth) -> None:
    await auth.register("bob@example.com")
    narrow = await auth.login("bob@example.com", "a long enough password", scope="catalog:read")
    assert narrow.scope == "catalog:read"
    # A refresh never widens the original grant.
    wider = await auth.expect_failure(
        auth.stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                grant_type="refresh_token", refresh_token=narrow.refresh_token, scope="orders:read"
            )
        )
    )
    assert wider.reason == "INVALID_SCOPE"
    # The failed request did not consume the token.
    same = await auth.stub.IssueToken(
        auth_pb2.IssueTokenRequest(grant_type="refresh_token", refresh_token=narrow.refresh_token)
    )
    assert same.scope == "catalog:read"
    # Bound to its client.
    other_client = await auth.expect_failure(
        auth.stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                grant_type="refresh_token", refresh_token=same.refresh_token, client_id="orders"
            )
        )
    )
    assert other_client.reason == "INVALID_GRANT"
    # A customer cannot ask for admin scopes at login.
    too_much = await auth.expect_failure(
        auth.login("bob@example.com", "a long enough password", scope="users:admin")
    )
    assert (too_much.code, too_much.reason) == (StatusCode.INVALID_ARGUMENT, "INVALID_SCOPE")


async def test_client_credentials(auth) -> None:
    token = await auth.stub.IssueToken(
        auth_pb2.IssueTokenRequest(
            grant_type="client_credentials", client_id="orders", client_secret=auth.ORDERS_SECRET
        )
    )
    assert token.scope == "catalog:reserve"
    assert token.refresh_token == ""
    claims = jwt.decode(token.access_token, options={"verify_signature": False})
    assert (claims["sub"], claims["client_id"]) == ("orders", "orders")

    # Auth's own verifier accepts it; the client has no user behind it.
    no_user = await auth.expect_failure(
        auth.stub.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=auth.bearer(token.access_token)
        )
    )
    assert no_user.code == StatusCode.NOT_FOUND
    # Its scopes do not include user administration.
    denied = await auth.expect_failure(
        auth.stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=auth.bearer(token.access_token))
    )
    assert denied.code == StatusCode.PERMISSION_DENIED

    for client_id, secret in [("orders", "wrong-secret-value"), ("nobody", "some-secret-value")]:
        bad = await auth.expect_failure(
            auth.stub.IssueToken(
                auth_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id=client_id, client_secret=secret
                )
            )
        )
        assert (bad.code, bad.reason) == (StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")

    scope = await auth.expect_failure(
        auth.stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                grant_type="client_credentials",
                client_id="orders",
                client_secret=auth.ORDERS_SECRET,
                scope="catalog:reserve users:admin",
            )
        )
    )
    assert scope.reason == "INVALID_SCOPE"
    grant = await auth.expect_failure(
        auth.stub.IssueToken(auth_pb2.IssueTokenRequest(grant_type="password"))
    )
    assert (grant.code, grant.reason) == (StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_GRANT_TYPE")
    # Shape errors are protovalidate's (RFC invalid_request).
    missing = await auth.expect_failure(
        auth.stub.IssueToken(auth_pb2.IssueTokenRequest(grant_type="refresh_token"))
    )
    assert (missing.code, missing.reason) == (StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")


async def test_register_validation(auth) -> None:
    short = await auth.expect_failure(auth.register("carl@example.com", password="short pass"))
    assert short.code == StatusCode.INVALID_ARGUMENT
    assert short.violations == ["password"]
    too_long = await auth.expect_failure(auth.register("carl@example.com", password="é" * 513))
    assert too_long.violations == ["password"]


async def test_concurrent_use_of_one_refresh_token_counts_as_reuse(auth) -> None:
    import asyncio

    await auth.register("dan@example.com")
    login = await auth.login("dan@example.com", "a long enough password")
    request = auth_pb2.IssueTokenRequest(
        grant_type="refresh_token", refresh_token=login.refresh_token
    )
    results = await asyncio.gather(
        auth.stub.IssueToken(request), auth.stub.IssueToken(request), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, auth_pb2.IssueTokenResponse)]
    assert len(winners) == 1  # the row lock lets exactly one rotate
    # The loser looked like a replay: the family is revoked, the winner's token with it.
    dead = await auth.expect_failure(
        auth.stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                grant_type="refresh_token", refresh_token=winners[0].refresh_token
            )
        )
    )
    assert dead.reason == "INVALID_GRANT"


async def test_forged_and_tampered_tokens_are_refused_by_auth_itself(auth) -> None:
    import base64
    import json

    await auth.register("eve@example.com")
    token = (await auth.login("eve@example.com", "a long enough password")).access_token
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "users:admin"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    unsigned_head = base64.urlsafe_b64encode(
        json.dumps({"alg": "none", "typ": "at+jwt", "kid": "x"}).encode()
    ).decode()
    for forged in (
        f"{head}.{forged_payload}.{signature}",  # tampered payload
        f"{unsigned_head.rstrip('=')}.{forged_payload}.",  # alg none
    ):
        refused = await auth.expect_failure(
            auth.stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=auth.bearer(forged))
        )
        assert refused.code == StatusCode.UNAUTHENTICATED


async def test_client_secret_rotation_accepts_both_until_the_old_is_dropped(
    make_settings, start_auth
) -> None:
    """The order rotate.yml follows: auth restarted with the new secret and the old one as
    previous (callers on either get tokens), then without it (the old one refused)."""
    old, new = "old-orders-secret-0123456789", "new-orders-secret-0123456789"

    def seeded(secret: str, previous: list[str]) -> Any:
        client = {"client_id": "orders", "secret": secret, "scopes": ["catalog:reserve"]}
        return make_settings(service_clients=[{**client, "previous_secrets": previous}])

    async def grant(auth: Any, secret: str) -> Any:
        request = auth_pb2.IssueTokenRequest(
            grant_type="client_credentials", client_id="orders", client_secret=secret
        )
        try:
            return (await auth.stub.IssueToken(request)).scope
        except grpc.aio.AioRpcError as error:
            return error.code()

    async with start_auth(seeded(old, [])) as auth:
        assert [await grant(auth, old), await grant(auth, new)] == [
            "catalog:reserve",
            StatusCode.UNAUTHENTICATED,
        ]
    async with start_auth(seeded(new, [old])) as auth:
        assert [await grant(auth, old), await grant(auth, new)] == ["catalog:reserve"] * 2
    # A start with the same seed changes nothing (the stored hashes are of these secrets).
    async with start_auth(seeded(new, [old])) as auth:
        assert (
            await auth.app.service.ensure_client("orders", new, ["catalog:reserve"], [old]) is False
        )
    async with start_auth(seeded(new, [])) as auth:
        assert [await grant(auth, old), await grant(auth, new)] == [
            StatusCode.UNAUTHENTICATED,
            "catalog:reserve",
        ]
