"""Signing keys: JWKS, discovery, rotation on demand and on schedule, retired keys' lifetime."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import jwt
import pytest
from google.protobuf.json_format import MessageToDict
from grpc import StatusCode

from mercato.auth.v1 import auth_pb2
from mercato_common.errors import Unauthenticated
from mercato_common.identity import JwksTokenVerifier

pytestmark = pytest.mark.integration


def gateway_verifier(auth) -> JwksTokenVerifier:
    """A verifier as the gateway builds it: JWKS fetched over gRPC from GetJwks."""

    async def fetch() -> dict[str, Any]:
        response = await auth.stub.GetJwks(auth_pb2.GetJwksRequest())
        return MessageToDict(response, preserving_proto_field_name=True)

    return JwksTokenVerifier(
        fetch, issuer=auth.ISSUER, audience=auth.AUDIENCE, min_refresh_seconds=0
    )


async def test_jwks_and_discovery(auth) -> None:
    jwks = await auth.stub.GetJwks(auth_pb2.GetJwksRequest())
    # The active key and the next one, published ahead of its use.
    assert len(jwks.keys) == 2
    for key in jwks.keys:
        assert (key.kty, key.crv, key.alg, key.use) == ("OKP", "Ed25519", "EdDSA", "sig")
        assert key.kid
        assert key.x
        assert not key.y
    document = MessageToDict(jwks)
    assert set(document["keys"][0]) == {"kty", "use", "kid", "alg", "crv", "x"}

    config = await auth.stub.GetOpenIdConfiguration(auth_pb2.GetOpenIdConfigurationRequest())
    assert config.issuer == auth.ISSUER
    assert config.jwks_uri == f"{auth.ISSUER}/.well-known/jwks.json"
    assert config.token_endpoint == f"{auth.ISSUER}/oauth2/token"
    assert config.revocation_endpoint == f"{auth.ISSUER}/oauth2/revoke"
    assert list(config.grant_types_supported) == ["refresh_token", "client_credentials"]
    assert list(config.token_signing_alg_values_supported) == ["EdDSA"]
    assert "catalog:reserve" in config.scopes_supported
    assert "token_endpoint_auth_methods_supported" in MessageToDict(config)

    # Private keys are stored encrypted, never in clear.
    rows = await auth.fetch("SELECT private_key_enc, kek_id FROM signing_keys")
    assert all(len(row["private_key_enc"]) > 28 and row["kek_id"] for row in rows)


async def test_rotation_keeps_old_tokens_valid_until_they_expire(auth) -> None:
    await auth.register("ann@example.com")
    old = await auth.login("ann@example.com", "a long enough password")
    old_kid = jwt.get_unverified_header(old.access_token)["kid"]
    verifier = gateway_verifier(auth)
    assert (await verifier.verify(old.access_token)).scopes

    # Only an admin may rotate.
    denied = await auth.expect_failure(
        auth.stub.RotateSigningKey(
            auth_pb2.RotateSigningKeyRequest(), metadata=auth.bearer(old.access_token)
        )
    )
    assert denied.code == StatusCode.PERMISSION_DENIED
    before = {key.kid for key in (await auth.stub.GetJwks(auth_pb2.GetJwksRequest())).keys}
    rotated = await auth.stub.RotateSigningKey(
        auth_pb2.RotateSigningKeyRequest(), metadata=auth.bearer(await auth.admin_token())
    )
    assert rotated.previous_kid == old_kid
    assert rotated.kid != old_kid
    assert rotated.kid in before  # the pre-published next key took over
    assert rotated.alg == "EdDSA"

    new = await auth.login("ann@example.com", "a long enough password")
    assert jwt.get_unverified_header(new.access_token)["kid"] == rotated.kid
    kids = {key.kid for key in (await auth.stub.GetJwks(auth_pb2.GetJwksRequest())).keys}
    assert {old_kid, rotated.kid} <= kids
    assert len(kids) == 3  # retired, active, next

    # A token signed by the retired key still verifies, at the gateway and at auth itself.
    assert (await verifier.verify(old.access_token)).subject == (
        await verifier.verify(new.access_token)
    ).subject
    me = await auth.stub.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=auth.bearer(old.access_token)
    )
    assert me.user.email == "ann@example.com"

    # The retired key stays published for the tokens' lifetime plus the margins...
    [row] = await auth.fetch(
        "SELECT retire_time, publish_until FROM signing_keys WHERE kid = $1", old_kid
    )
    assert row["publish_until"] - row["retire_time"] >= timedelta(seconds=900 + 30)
    assert row["publish_until"] - row["retire_time"] <= timedelta(seconds=900 + 30 + 120)
    # ...and once that time is over, it is withdrawn and its tokens no longer verify.
    await auth.fetch(
        "UPDATE signing_keys SET publish_until = now() - interval '1 second' WHERE kid = $1",
        old_kid,
    )
    kids = {key.kid for key in (await auth.stub.GetJwks(auth_pb2.GetJwksRequest())).keys}
    assert old_kid not in kids
    with pytest.raises(Unauthenticated):
        await gateway_verifier(auth).verify(old.access_token)


async def test_scheduled_rotation_happens_once_when_due(make_settings, start_auth) -> None:
    settings = make_settings(signing_key_rotation_days=1)
    async with start_auth(settings) as auth:
        keys = auth.app.keys
        assert await keys.rotate(scheduled=True) is None  # not due yet
        await auth.fetch("UPDATE signing_keys SET activate_time = now() - interval '2 days'")
        first = await keys.rotate(scheduled=True)
        assert first is not None
        assert await keys.rotate(scheduled=True) is None  # the new key is fresh
        token = await auth.admin_token()
        assert jwt.get_unverified_header(token)["kid"] == first.kid


async def test_kek_protects_keys_and_survives_restart(make_settings, start_auth) -> None:
    settings = make_settings()
    async with start_auth(settings) as auth:
        token = await auth.admin_token()
    # Another process with the same KEK signs with the same key.
    async with start_auth(settings) as auth:
        again = await auth.admin_token()
        assert jwt.get_unverified_header(again)["kid"] == jwt.get_unverified_header(token)["kid"]
    # A wrong KEK cannot use the stored keys: the service refuses to start.
    wrong = make_settings(signing_key_kek="A" * 43 + "=")
    with pytest.raises(Exception, match=r"does not decrypt|unknown KEK"):
        async with start_auth(wrong):
            pass
    # KEK rotation: the old one listed as previous still decrypts.
    rotated = make_settings(
        signing_key_kek="B" * 43 + "=",
        signing_key_previous_keks=settings.signing_key_kek.get_secret_value(),
    )
    async with start_auth(rotated) as auth:
        assert await auth.admin_token()
