"""Token use cases: password login, the OAuth 2.0 token endpoint, revocation, keys."""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import timedelta

from mercato_auth.crypto import hash_refresh_token, new_refresh_token
from mercato_auth.domain.errors import (
    InvalidClient,
    InvalidCredentials,
    InvalidGrant,
    UnsupportedGrantType,
    UnsupportedTokenType,
    UserDisabled,
)
from mercato_auth.domain.scopes import ALL_SCOPES, grant_scopes, parse_scope
from mercato_auth.domain.throttle import ThrottleKind
from mercato_auth.domain.tokens import (
    GRANT_CLIENT_CREDENTIALS,
    GRANT_REFRESH_TOKEN,
    SUPPORTED_GRANTS,
    AccessTokenClaims,
    RefreshCheck,
    TokenGrant,
    check_refresh_token,
)
from mercato_auth.domain.users import User, normalize_email
from mercato_auth.service.base import OpenIdConfiguration, ServiceBase, looks_like_access_token
from mercato_auth.service.keys import RotationResult
from mercato_auth.store import Tx
from mercato_common.errors import Unauthenticated
from mercato_common.revocation import RevocationUnavailable

__all__ = ["Tokens"]

_log = logging.getLogger("mercato_auth")


class Tokens(ServiceBase):
    """Password login, the token endpoint, revocation, signing keys and discovery."""

    async def login(self, email: str, password: str, scope: str, address: str) -> TokenGrant:
        """First-party password login; the same error for an unknown email and a wrong password."""
        email = normalize_email(email)
        keys = self._throttle_keys(ThrottleKind.ACCOUNT, email, address)
        had_failures = await self._check_throttle(keys, outcome_metric=True)
        async with self.store.read() as tx:
            found = await tx.users.get_with_hash(email)
        # Unknown email: verified against a dummy hash, so both failures take as long.
        ok = await self.passwords.verify(found[1] if found else None, password)
        if not ok or found is None:
            await self._record_failures(keys)
            self.metrics.logins.labels("invalid_credentials").inc()
            raise InvalidCredentials()
        user, password_hash = found
        if not user.active:
            self.metrics.logins.labels("disabled").inc()
            raise UserDisabled()
        requested = parse_scope(scope)
        granted = grant_scopes(requested, user.scopes)
        new_hash = None
        if self.passwords.needs_rehash(password_hash):
            new_hash = await self.passwords.hash(password)
        async with self.store.write() as tx:
            if had_failures:
                await tx.throttle.reset(keys)
            if new_hash is not None:
                await tx.users.set_password_hash(user.id, new_hash)
            grant = await self._issue_user_tokens(
                tx,
                user,
                granted,
                family_scopes=granted if requested else None,
                client_id=self.tokens.first_party_client_id,
            )
        self.metrics.logins.labels("success").inc()
        self.metrics.tokens_issued.labels("password").inc()
        return grant

    async def issue_token(
        self,
        *,
        grant_type: str,
        refresh_token: str,
        client_id: str,
        client_secret: str,
        scope: str,
        address: str,
    ) -> TokenGrant:
        """The OAuth 2.0 token endpoint (RFC 6749 section 3.2)."""
        if grant_type not in SUPPORTED_GRANTS:
            raise UnsupportedGrantType()
        if grant_type == GRANT_REFRESH_TOKEN:
            return await self._refresh(refresh_token, client_id=client_id, scope=scope)
        return await self._client_credentials(client_id, client_secret, scope, address)

    async def _refresh(self, refresh_token: str, *, client_id: str, scope: str) -> TokenGrant:
        requested = parse_scope(scope)
        token_hash = hash_refresh_token(refresh_token)
        now = self.clock()
        failure: str | None = None
        grant: TokenGrant | None = None
        async with self.store.write() as tx:
            record = await tx.refresh_tokens.find(token_hash, for_update=True)
            check = check_refresh_token(record, now=now, client_id=client_id)
            if check is RefreshCheck.REJECT or record is None:
                raise InvalidGrant()
            if check is RefreshCheck.REUSED:
                # Theft detection: whoever holds the newer token loses it too. The revocation
                # commits; the error is raised after the transaction.
                await tx.refresh_tokens.revoke_family(record.family_id, now=now, reason="reuse")
                failure = "reuse"
            else:
                user = await tx.users.get(record.user_id)
                if user is None or not user.active:
                    await tx.refresh_tokens.revoke_family(
                        record.family_id, now=now, reason="user_disabled"
                    )
                    failure = "disabled"
                else:
                    allowed = (
                        user.scopes
                        if record.family_scopes is None
                        else record.family_scopes & user.scopes
                    )
                    granted = grant_scopes(requested, allowed)
                    grant = await self._issue_user_tokens(
                        tx,
                        user,
                        granted,
                        family_id=record.family_id,
                        client_id=record.client_id,
                        replaces=record.id,
                    )
        if failure == "reuse":
            assert record is not None
            self.metrics.refresh_reuse.inc()
            _log.warning(
                "refresh token reuse detected; token family revoked",
                extra={"user_id": record.user_id, "family_id": record.family_id},
            )
            # Logged by the list when Redis fails; the refresh tokens are revoked, the answer
            # stands.
            with contextlib.suppress(RevocationUnavailable):
                await self._revoke_session(record.family_id)
            raise InvalidGrant()
        if grant is None:
            raise InvalidGrant()
        self.metrics.tokens_issued.labels(GRANT_REFRESH_TOKEN).inc()
        return grant

    async def _issue_user_tokens(
        self,
        tx: Tx,
        user: User,
        granted: frozenset[str],
        *,
        client_id: str,
        family_id: str | None = None,
        family_scopes: frozenset[str] | None = None,
        replaces: str | None = None,
    ) -> TokenGrant:
        """A refresh token (new family, or the successor of ``replaces``) and an access token."""
        now = self.clock()
        if family_id is None:
            family_id = str(uuid.uuid4())
            await tx.refresh_tokens.create_family(
                family_id, user_id=user.id, client_id=client_id, scopes=family_scopes, now=now
            )
        refresh_token = new_refresh_token()
        token_id = str(uuid.uuid4())
        await tx.refresh_tokens.insert(
            token_id,
            family_id=family_id,
            token_hash=hash_refresh_token(refresh_token),
            now=now,
            expire=now + self.tokens.refresh_token_ttl,
        )
        if replaces is not None:
            await tx.refresh_tokens.mark_used(replaces, now=now, replaced_by=token_id)
        access = await self._access_token(
            subject=user.id, client_id=client_id, scopes=granted, session_id=family_id
        )
        return TokenGrant(
            access_token=access,
            expires_in=int(self.tokens.access_token_ttl.total_seconds()),
            scopes=granted,
            refresh_token=refresh_token,
        )

    async def _access_token(
        self,
        *,
        subject: str,
        client_id: str,
        scopes: frozenset[str],
        session_id: str | None = None,
    ) -> str:
        key = await self.keys.signing_key()
        claims = AccessTokenClaims(
            issuer=self.tokens.issuer,
            audience=self.tokens.audience,
            subject=subject,
            client_id=client_id,
            scopes=scopes,
            issued_at=self.clock(),
            lifetime=self.tokens.access_token_ttl,
            token_id=str(uuid.uuid4()),
            session_id=session_id,
        )
        return key.sign(claims.to_jwt_claims())

    async def _client_credentials(
        self, client_id: str, client_secret: str, scope: str, address: str
    ) -> TokenGrant:
        await self._authenticate_client(client_id, client_secret, address)
        async with self.store.read() as tx:
            client = await tx.clients.get(client_id)
        if client is None or client.disabled:  # removed meanwhile
            raise InvalidClient()
        granted = grant_scopes(parse_scope(scope), client.scopes)
        # RFC 9068 section 2.2: with no resource owner, `sub` names the client.
        access = await self._access_token(subject=client_id, client_id=client_id, scopes=granted)
        self.metrics.tokens_issued.labels(GRANT_CLIENT_CREDENTIALS).inc()
        return TokenGrant(
            access_token=access,
            expires_in=int(self.tokens.access_token_ttl.total_seconds()),
            scopes=granted,
        )

    async def _authenticate_client(self, client_id: str, client_secret: str, address: str) -> None:
        if not client_id or not client_secret:
            raise InvalidClient()
        keys = self._throttle_keys(ThrottleKind.CLIENT, client_id, address)
        had_failures = await self._check_throttle(keys)
        async with self.store.read() as tx:
            client = await tx.clients.get(client_id)
        usable = client is not None and not client.disabled
        ok = await self.passwords.verify(
            client.secret_hash if client is not None and usable else None, client_secret
        )
        if not ok and client is not None and usable:
            # A rotation in progress: callers not yet restarted still present the old secret.
            for previous in client.previous_secret_hashes:
                if await self.passwords.verify(previous, client_secret):
                    ok = True
                    break
        if not ok:
            await self._record_failures(keys)
            raise InvalidClient()
        if had_failures:
            async with self.store.write() as tx:
                await tx.throttle.reset(keys)

    async def revoke(
        self,
        *,
        token: str,
        token_type_hint: str,
        client_id: str,
        client_secret: str,
        address: str,
    ) -> None:
        """RFC 7009: revoke a refresh token's family and the access tokens it issued, or one
        access token; unknown tokens succeed silently."""
        if client_secret:
            await self._authenticate_client(client_id, client_secret, address)
        now = self.clock()
        async with self.store.write() as tx:
            record = await tx.refresh_tokens.find(hash_refresh_token(token), for_update=True)
            if record is not None:
                if client_id and client_id != record.client_id:
                    raise InvalidGrant("the token was issued to another client")
                if await tx.refresh_tokens.revoke_family(
                    record.family_id, now=now, reason="revoked"
                ):
                    _log.info(
                        "refresh token family revoked",
                        extra={"user_id": record.user_id, "family_id": record.family_id},
                    )
        if record is not None:
            # Also when the family was revoked before: a retry after UNAVAILABLE writes again.
            await self._revoke_session(record.family_id)
            return
        if token_type_hint != GRANT_REFRESH_TOKEN and looks_like_access_token(token):
            await self._revoke_access_token(token, client_id)

    async def _revoke_access_token(self, token: str, client_id: str) -> None:
        """Put an access token on the denylist until it expires (logout)."""
        if self.revocations is None or self.verifier is None:
            raise UnsupportedTokenType()
        try:
            identity = await self.verifier.verify(token)
        except Unauthenticated:
            return  # invalid, expired or revoked already: nothing to revoke (RFC 7009 2.2)
        if client_id and identity.client_id and client_id != identity.client_id:
            raise InvalidGrant("the token was issued to another client")
        if identity.token_id is None or identity.expires_at is None:
            return  # not one of auth's access tokens (they all carry both)
        await self.revocations.revoke_token(identity.token_id, identity.expires_at)
        _log.info("access token revoked", extra={"user_id": identity.subject})

    async def _revoke_session(self, family_id: str) -> None:
        """Deny the access tokens issued with a refresh token family (their ``sid``)."""
        if self.revocations is None:
            return  # no Redis: they stay valid until they expire (docs/auth.md)
        await self.revocations.revoke_session(
            family_id, lifetime=self.tokens.access_token_ttl.total_seconds()
        )

    # Keys and discovery ---------------------------------------------------------------------

    async def jwks(self) -> list[dict[str, str]]:
        return await self.keys.jwks()

    async def rotate_signing_key(self) -> RotationResult:
        result = await self.keys.rotate(scheduled=False)
        assert result is not None  # an unscheduled rotation always happens
        return result

    def openid_configuration(self) -> OpenIdConfiguration:
        base = self.tokens.issuer.rstrip("/")
        return OpenIdConfiguration(
            issuer=self.tokens.issuer,
            jwks_uri=f"{base}/.well-known/jwks.json",
            token_endpoint=f"{base}/oauth2/token",
            revocation_endpoint=f"{base}/oauth2/revoke",
            grant_types_supported=(GRANT_REFRESH_TOKEN, GRANT_CLIENT_CREDENTIALS),
            token_endpoint_auth_methods_supported=(
                "client_secret_basic",
                "client_secret_post",
                "none",
            ),
            scopes_supported=ALL_SCOPES,
            response_types_supported=("token",),
            token_signing_alg_values_supported=(self.keys.algorithm,),
        )

    # Housekeeping ---------------------------------------------------------------------------

    async def housekeeping(self, *, batch: int = 5_000) -> None:
        """Delete long-expired refresh tokens, stale throttle rows and unpublished keys."""
        now = self.clock()
        async with self.store.write() as tx:
            tokens = await tx.refresh_tokens.delete_expired(now - timedelta(days=1), batch)
            stale = max(self.throttling.account.window, self.throttling.address.window)
            throttles = await tx.throttle.delete_stale(now - stale, now)
        keys = await self.keys.prune()
        if tokens or throttles or keys:
            _log.info(
                "housekeeping",
                extra={"refresh_tokens": tokens, "throttle_rows": throttles, "keys": keys},
            )
