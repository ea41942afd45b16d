"""Account use cases: registration, lookups, admin changes, disabling, bootstrap, clients."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from mercato_auth import publish
from mercato_auth.domain.errors import InvalidEmail, UserNotFound
from mercato_auth.domain.scopes import ALL_SCOPES, Role, sorted_scopes
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
from mercato_auth.service.base import ServiceBase, is_uuid
from mercato_auth.store import ClientRecord, Tx
from mercato_common.identity import Identity

__all__ = ["Accounts"]

_log = logging.getLogger("mercato_auth")


class Accounts(ServiceBase):
    """Registration, lookups, admin changes, disabling, the bootstrap admin, service clients."""

    async def register(self, email: str, display_name: str, password: str) -> User:
        """A customer account; EMAIL_TAKEN if the normalised email is in use."""
        check_password_policy(password)
        user = self._new_user(normalize_email(email), display_name, (Role.CUSTOMER,))
        password_hash = await self.passwords.hash(password)
        async with self.store.write() as tx:
            await tx.users.insert(user, password_hash)
            await tx.outbox.add(publish.user_registered(user))
        self.metrics.registrations.inc()
        _log.info("user registered", extra={"user_id": user.id})
        return user

    def _new_user(self, email: str, display_name: str, roles: Sequence[Role]) -> User:
        now = self.clock()
        return User(
            id=str(uuid.uuid4()),
            email=email,
            display_name=display_name,
            roles=canonical_roles(roles),
            state=UserState.ACTIVE,
            create_time=now,
            update_time=now,
        )

    @staticmethod
    async def _user(tx: Tx, user_id: str, *, for_update: bool = False) -> User:
        """The account; USER_NOT_FOUND for an unknown id, or one that is no user id at all."""
        user = await tx.users.get(user_id, for_update=for_update) if is_uuid(user_id) else None
        if user is None:
            raise UserNotFound()
        return user

    async def get_user(self, user_id: str) -> User:
        async with self.store.read() as tx:
            return await self._user(tx, user_id)

    async def current_user(self, identity: Identity) -> User:
        """The token's user; a service client's token has none (NOT_FOUND)."""
        if identity.client_id is not None and identity.client_id == identity.subject:
            raise UserNotFound("a service client's token has no user")
        return await self.get_user(identity.subject)

    async def list_users(
        self, filters: UserFilter, *, size: int, page_token: str
    ) -> tuple[list[User], str]:
        cursor = decode_page_token(page_token, filters)
        limit = page_size(size)
        async with self.store.read() as tx:
            users = await tx.users.list(filters, cursor, limit + 1)
        if len(users) <= limit:
            return users, ""
        page = users[:limit]
        last = page[-1]
        return page, encode_page_token(PageCursor(last.create_time, last.id), filters)

    async def update_user(
        self,
        user_id: str,
        *,
        display_name: str | None,
        roles: Sequence[Role] | None,
        actor_id: str,
    ) -> User:
        async with self.store.write() as tx:
            user = await self._user(tx, user_id, for_update=True)
            now = self.clock()
            update = plan_update(
                user, display_name=display_name, roles=roles, actor_id=actor_id, now=now
            )
            if not update.changed:
                return user
            await tx.users.update(update.user)
            if update.roles_changed:
                await tx.outbox.add(
                    publish.user_roles_changed(
                        user.id,
                        old_roles=update.old_roles,
                        new_roles=update.user.roles,
                        actor_id=actor_id,
                        when=now,
                    )
                )
        if update.roles_changed:
            _log.info(
                "user roles changed",
                extra={
                    "user_id": user.id,
                    "actor_id": actor_id,
                    "roles": [r.value for r in update.user.roles],
                },
            )
        return update.user

    async def disable_user(self, user_id: str, *, reason: str, actor_id: str) -> User:
        """Disable the account, revoke every refresh token and deny every access token issued
        until now; idempotent (one event; a retry writes the denylist again)."""
        async with self.store.write() as tx:
            user = await self._user(tx, user_id, for_update=True)
            now = self.clock()
            disabled = plan_disable(user, actor_id=actor_id, now=now)
            if disabled is not None:
                await tx.users.update(disabled, reason=reason, actor=actor_id)
                revoked = await tx.refresh_tokens.revoke_user(
                    user.id, now=now, reason="user_disabled"
                )
                await tx.outbox.add(
                    publish.user_disabled(user.id, actor_id=actor_id, reason=reason, when=now)
                )
        # After the commit: a disabled user gets no new token, so every access token it holds
        # was issued by now. If Redis fails the call fails (UNAVAILABLE) and may be repeated.
        if self.revocations is not None:
            await self.revocations.revoke_subject(
                user.id,
                issued_until=int(now.timestamp()),
                lifetime=self.tokens.access_token_ttl.total_seconds(),
            )
        if disabled is None:
            return user
        _log.info(
            "user disabled",
            extra={"user_id": user.id, "actor_id": actor_id, "revoked_families": revoked},
        )
        return disabled

    async def ensure_admin(
        self, email: str, password: str, *, display_name: str = "Administrator"
    ) -> tuple[User, bool]:
        """The bootstrap admin: created if missing, given the admin role if it lacks it.

        An existing account keeps its password (the bootstrap variables do not reset it).
        Returns the account and whether it was created.
        """
        email = normalize_email(email)
        if "@" not in email or len(email) > 254 or any(c.isspace() for c in email):
            raise InvalidEmail()
        check_password_policy(password)
        async with self.store.read() as tx:
            existing = await tx.users.get_with_hash(email)
        password_hash = None if existing is not None else await self.passwords.hash(password)
        async with self.store.write() as tx:
            found = await tx.users.get_with_hash(email, for_update=True)
            if found is None:
                if password_hash is None:  # deleted meanwhile (not possible today)
                    password_hash = await self.passwords.hash(password)
                user = self._new_user(email, display_name, (Role.ADMIN,))
                await tx.users.insert(user, password_hash)
                await tx.outbox.add(publish.user_registered(user))
                _log.info("admin created", extra={"user_id": user.id})
                return user, True
            user = found[0]
            if Role.ADMIN in user.roles:
                return user, False
            now = self.clock()
            promoted = plan_update(
                user, display_name=None, roles=(*user.roles, Role.ADMIN), actor_id="", now=now
            ).user
            await tx.users.update(promoted)
            await tx.outbox.add(
                publish.user_roles_changed(
                    user.id, old_roles=user.roles, new_roles=promoted.roles, actor_id="", when=now
                )
            )
            _log.info("existing user promoted to admin", extra={"user_id": user.id})
            return promoted, False

    # Service clients ------------------------------------------------------------------------

    async def ensure_client(
        self,
        client_id: str,
        secret: str,
        scopes: Sequence[str],
        previous_secrets: Sequence[str] = (),
    ) -> bool:
        """Register or update a service client; True when something changed. ``previous_secrets``
        stay accepted beside ``secret`` (a rotation in progress); an empty list drops them."""
        unknown = set(scopes) - set(ALL_SCOPES)
        if unknown or not scopes:
            raise ValueError(f"a client needs known scopes; unknown: {sorted(unknown)}")
        wanted = sorted_scopes(scopes)
        async with self.store.read() as tx:
            existing = await tx.clients.get(client_id)
        if existing is not None and await self._same_secrets(existing, secret, previous_secrets):
            if not existing.disabled and sorted_scopes(existing.scopes) == wanted:
                return False
            async with self.store.write() as tx:
                await tx.clients.update_scopes(client_id, wanted, self.clock())
            return True
        secret_hash = await self.passwords.hash(secret)
        previous_hashes = [await self.passwords.hash(previous) for previous in previous_secrets]
        async with self.store.write() as tx:
            await tx.clients.upsert(client_id, secret_hash, wanted, self.clock(), previous_hashes)
        _log.info(
            "service client registered",
            extra={
                "client_id": client_id,
                "scopes": wanted,
                "previous_secrets": len(previous_hashes),
            },
        )
        return True

    async def _same_secrets(
        self, existing: ClientRecord, secret: str, previous_secrets: Sequence[str]
    ) -> bool:
        """Whether the stored hashes are of exactly these secrets (hashes are salted: each one
        is verified, in order)."""
        if len(existing.previous_secret_hashes) != len(previous_secrets):
            return False
        pairs = [
            (existing.secret_hash, secret),
            *zip(existing.previous_secret_hashes, previous_secrets, strict=True),
        ]
        for stored, given in pairs:
            if not await self.passwords.verify(stored, given):
                return False
        return True
