"""Admin account management, disabling, bootstrap, rehash on login, and the commands."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from grpc import StatusCode

from mercato.auth.v1 import auth_pb2
from mercato_auth.__main__ import main

pytestmark = pytest.mark.integration

PASSWORD = "a long enough password"


async def outbox_types(auth) -> list[str]:
    rows = await auth.fetch("SELECT type FROM outbox ORDER BY seq")
    return [row["type"].rsplit(".", 1)[-1] for row in rows]


async def test_bootstrap_admin_and_user_administration(auth) -> None:
    admin = await auth.admin_token()
    me = await auth.stub.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=auth.bearer(admin)
    )
    assert list(me.user.roles) == [auth_pb2.ROLE_ADMIN]
    assert "users:admin" in me.user.scopes
    assert "catalog:reserve" not in me.user.scopes

    users = [await auth.register(f"user{i}@example.com") for i in range(5)]
    # Newest first, in pages.
    seen, token = [], ""
    while True:
        page = await auth.stub.ListUsers(
            auth_pb2.ListUsersRequest(page_size=2, page_token=token, role=auth_pb2.ROLE_CUSTOMER),
            metadata=auth.bearer(admin),
        )
        seen.extend(user.id for user in page.users)
        token = page.next_page_token
        if not token:
            break
    assert seen == [user.id for user in reversed(users)]
    changed_filter = await auth.expect_failure(
        auth.stub.ListUsers(
            auth_pb2.ListUsersRequest(page_size=2, page_token=page.next_page_token or "x"),
            metadata=auth.bearer(admin),
        )
    )
    assert changed_filter.code == StatusCode.INVALID_ARGUMENT

    # A customer may not administer users.
    customer = (await auth.login("user0@example.com", PASSWORD)).access_token
    forbidden = await auth.expect_failure(
        auth.stub.GetUser(auth_pb2.GetUserRequest(id=users[1].id), metadata=auth.bearer(customer))
    )
    assert forbidden.code == StatusCode.PERMISSION_DENIED
    anonymous = await auth.expect_failure(
        auth.stub.GetUser(auth_pb2.GetUserRequest(id=users[1].id))
    )
    assert anonymous.code == StatusCode.UNAUTHENTICATED

    # Promote; the same update again changes nothing and emits nothing.
    request = auth_pb2.UpdateUserRequest(
        user=auth_pb2.User(id=users[0].id, roles=[auth_pb2.ROLE_CUSTOMER, auth_pb2.ROLE_ADMIN]),
        update_mask=FieldMask(paths=["roles"]),
    )
    updated = (await auth.stub.UpdateUser(request, metadata=auth.bearer(admin))).user
    assert "users:admin" in updated.scopes
    again = (await auth.stub.UpdateUser(request, metadata=auth.bearer(admin))).user
    assert again.update_time == updated.update_time
    assert (await outbox_types(auth)).count("UserRolesChanged") == 1
    # The new scopes apply to tokens issued afterwards.
    promoted = await auth.login("user0@example.com", PASSWORD)
    assert "users:admin" in promoted.scope

    renamed = await auth.stub.UpdateUser(
        auth_pb2.UpdateUserRequest(
            user=auth_pb2.User(id=users[1].id, display_name="Bea", roles=[auth_pb2.ROLE_ADMIN]),
            update_mask=FieldMask(paths=["display_name"]),
        ),
        metadata=auth.bearer(admin),
    )
    assert renamed.user.display_name == "Bea"
    assert list(renamed.user.roles) == [auth_pb2.ROLE_CUSTOMER]  # not in the mask

    missing = await auth.expect_failure(
        auth.stub.GetUser(
            auth_pb2.GetUserRequest(id="00000000-0000-4000-8000-000000000000"),
            metadata=auth.bearer(admin),
        )
    )
    assert (missing.code, missing.reason) == (StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    # An admin cannot demote themselves.
    self_id = me.user.id
    lockout = await auth.expect_failure(
        auth.stub.UpdateUser(
            auth_pb2.UpdateUserRequest(
                user=auth_pb2.User(id=self_id, roles=[auth_pb2.ROLE_CUSTOMER]),
                update_mask=FieldMask(paths=["roles"]),
            ),
            metadata=auth.bearer(admin),
        )
    )
    assert (lockout.code, lockout.reason) == (StatusCode.FAILED_PRECONDITION, "SELF_LOCKOUT")


async def test_disabled_user_loses_refresh_tokens_and_login(auth) -> None:
    admin = await auth.admin_token()
    user = await auth.register("ann@example.com")
    login = await auth.login("ann@example.com", PASSWORD)
    other_session = await auth.login("ann@example.com", PASSWORD)
    me = auth_pb2.GetCurrentUserRequest()
    # In use before the disable: the verifier remembers it as clean for a second at most.
    assert (await auth.stub.GetCurrentUser(me, metadata=auth.bearer(login.access_token))).user

    disabled = await auth.stub.DisableUser(
        auth_pb2.DisableUserRequest(id=user.id, reason="chargeback fraud"),
        metadata=auth.bearer(admin),
    )
    assert disabled.user.state == auth_pb2.USER_STATE_DISABLED
    assert disabled.user.HasField("disable_time")
    # Idempotent: same answer, one event.
    twice = await auth.stub.DisableUser(
        auth_pb2.DisableUserRequest(id=user.id), metadata=auth.bearer(admin)
    )
    assert twice.user.disable_time == disabled.user.disable_time
    assert (await outbox_types(auth)).count("UserDisabled") == 1

    for session in (login, other_session):
        refused = await auth.expect_failure(
            auth.stub.IssueToken(
                auth_pb2.IssueTokenRequest(
                    grant_type="refresh_token", refresh_token=session.refresh_token
                )
            )
        )
        assert refused.reason == "INVALID_GRANT"
    # Every access token issued before the disable is refused too (by every verifier; here
    # auth's own), after the clean answer remembered for TOKEN_REVOCATION_CACHE_SECONDS.
    await asyncio.sleep(1.1)
    for session in (login, other_session):
        denied = await auth.expect_failure(
            auth.stub.GetCurrentUser(me, metadata=auth.bearer(session.access_token))
        )
        assert (denied.code, denied.reason) == (StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")
    no_login = await auth.expect_failure(auth.login("ann@example.com", PASSWORD))
    assert (no_login.code, no_login.reason) == (StatusCode.PERMISSION_DENIED, "USER_DISABLED")
    # A wrong password still says only that the credentials are wrong.
    wrong = await auth.expect_failure(auth.login("ann@example.com", "wrong password"))
    assert wrong.reason == "INVALID_CREDENTIALS"

    listed = await auth.stub.ListUsers(
        auth_pb2.ListUsersRequest(state=auth_pb2.USER_STATE_DISABLED), metadata=auth.bearer(admin)
    )
    assert [u.id for u in listed.users] == [user.id]
    me = await auth.stub.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=auth.bearer(admin)
    )
    own = await auth.expect_failure(
        auth.stub.DisableUser(
            auth_pb2.DisableUserRequest(id=me.user.id), metadata=auth.bearer(admin)
        )
    )
    assert own.reason == "SELF_LOCKOUT"

    assert await outbox_types(auth) == [
        "UserRegistered",  # the bootstrap admin
        "UserRegistered",
        "UserDisabled",
    ]


async def test_password_rehash_on_login_when_parameters_change(make_settings, start_auth) -> None:
    async with start_auth(make_settings()) as auth:
        await auth.register("ann@example.com")
        [before] = await auth.fetch(
            "SELECT password_hash FROM users WHERE email = 'ann@example.com'"
        )
    assert "m=1024,t=1,p=1" in before["password_hash"]
    stronger = make_settings(argon2_time_cost=2, argon2_memory_cost_kib=2048)
    async with start_auth(stronger) as auth:
        await auth.login("ann@example.com", PASSWORD)
        [after] = await auth.fetch(
            "SELECT password_hash FROM users WHERE email = 'ann@example.com'"
        )
        assert after["password_hash"].startswith("$argon2id$")
        assert "m=2048,t=2,p=1" in after["password_hash"]
        assert await auth.login("ann@example.com", PASSWORD)


async def test_commands_migrate_create_admin_and_client(make_settings, start_auth) -> None:
    settings = make_settings(bootstrap_admin_email=None, bootstrap_admin_password=None)
    environ = {
        "MERCATO_AUTH_DATABASE_URL": settings.database_url.get_secret_value(),
        "MERCATO_AUTH_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "MERCATO_AUTH_SIGNING_KEY_KEK": settings.signing_key_kek.get_secret_value(),
        "MERCATO_AUTH_ARGON2_TIME_COST": "1",
        "MERCATO_AUTH_ARGON2_MEMORY_COST_KIB": "1024",
        "MERCATO_AUTH_ARGON2_PARALLELISM": "1",
        "OPS_PASSWORD": "an operator chosen password",
        "ANALYTICS_SECRET": "analytics-client-secret-value",
    }

    def run(*argv: str) -> int:
        return main(list(argv), environ)

    assert await asyncio.to_thread(run, "migrate") == 0
    assert (
        await asyncio.to_thread(
            run, "create-admin", "--email", "Ops@Example.com", "--password-env", "OPS_PASSWORD"
        )
        == 0
    )
    assert (
        await asyncio.to_thread(
            run,
            "create-client",
            "--client-id",
            "analytics",
            "--scope",
            "catalog:read",
            "--secret-env",
            "ANALYTICS_SECRET",
        )
        == 0
    )
    assert await asyncio.to_thread(run, "rotate-signing-key") == 0
    async with start_auth(settings) as auth:
        admin = await auth.login("ops@example.com", "an operator chosen password")
        assert "users:admin" in admin.scope
        token = await auth.stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                grant_type="client_credentials",
                client_id="analytics",
                client_secret="analytics-client-secret-value",
            )
        )
        assert token.scope == "catalog:read"
        retired = await auth.fetch("SELECT kid FROM signing_keys WHERE state = 'retired'")
        assert len(retired) == 1
    # Running create-admin again is harmless.
    assert (
        await asyncio.to_thread(
            run, "create-admin", "--email", "ops@example.com", "--password-env", "OPS_PASSWORD"
        )
        == 0
    )
