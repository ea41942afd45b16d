"""The auth service's settings, from ``MERCATO_AUTH_*`` environment variables.

Read once in ``__main__`` with ``load_settings(AuthSettings, os.environ)``. Secrets (database
URL, key-encryption keys, the bootstrap admin's password, service-client secrets) are
``SecretStr``: they never show in ``repr``, logs or errors.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from mercato_auth.crypto import Argon2Params, parse_kek
from mercato_auth.domain.scopes import ALL_SCOPES
from mercato_auth.domain.throttle import ThrottlePolicy
from mercato_common.settings import BaseServiceSettings, OutboxSettings, PostgresSettings

__all__ = ["AuthSettings", "ServiceClientSeed"]


class ServiceClientSeed(BaseModel):
    """A service client ensured at start (client-credentials grant)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    secret: SecretStr
    scopes: tuple[str, ...] = Field(min_length=1)
    #: Secrets still accepted while the client's callers change to ``secret`` (a rotation:
    #: deploy with the old one here, restart the callers with the new one, then drop it).
    previous_secrets: tuple[SecretStr, ...] = Field(default=(), max_length=2)

    @field_validator("secret")
    @classmethod
    def _long_secret(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("a client secret has at least 16 characters")
        return value

    @field_validator("previous_secrets")
    @classmethod
    def _long_previous_secrets(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(len(previous.get_secret_value()) < 16 for previous in value):
            raise ValueError("a client secret has at least 16 characters")
        return value

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(ALL_SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes: {' '.join(unknown)}")
        return value


class AuthSettings(BaseServiceSettings, PostgresSettings, OutboxSettings):
    env_prefix = "MERCATO_AUTH_"

    service_name: str = Field(default="auth", min_length=1)
    grpc_port: int = Field(default=50061, ge=0, le=65535)
    metrics_port: int = Field(default=9461, ge=0, le=65535)
    events_topic: str = Field(default="mercato.auth.events.v1", min_length=1)

    # Tokens (issuer, audience, leeway: TokenSettings). The issuer and audience must match what
    # the gateway and the services verify.
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=60)
    # client_id of tokens from the password login (the first-party apps behind the gateway).
    first_party_client_id: str = Field(default="mercato-web", min_length=1, max_length=128)

    # Signing keys.
    signing_algorithm: Literal["EdDSA", "ES256"] = "EdDSA"
    # Base64 of 32 random bytes (`openssl rand -base64 32`): encrypts the private keys at rest.
    signing_key_kek: SecretStr
    # Older KEKs, comma separated, still accepted for decryption (KEK rotation).
    signing_key_previous_keks: SecretStr | None = None
    signing_key_rotation_days: float = Field(default=30.0, gt=0)
    # How often each replica reloads the active key and checks whether rotation is due.
    signing_key_refresh_seconds: float = Field(default=30.0, gt=0)

    # argon2id parameters; changing them rehashes each password at its next login.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_cost_kib: int = Field(default=65_536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)
    password_hash_concurrency: int = Field(default=4, ge=1)

    # Brute-force throttling of failed logins and client authentications.
    # Failures before a lock: an account from one address; every account from one address; an
    # account from anywhere (its lock lasts THROTTLE_ACCOUNT_CEILING_DELAY_SECONDS and never
    # grows, so its owner is never locked out for longer).
    throttle_account_max_failures: int = Field(default=5, ge=1)
    throttle_address_max_failures: int = Field(default=20, ge=1)
    throttle_account_ceiling_failures: int = Field(default=50, ge=1)
    throttle_account_ceiling_delay_seconds: float = Field(default=60.0, gt=0)
    throttle_window_seconds: float = Field(default=900.0, gt=0)
    throttle_base_delay_seconds: float = Field(default=30.0, gt=0)
    throttle_max_delay_seconds: float = Field(default=900.0, gt=0)
    # Take the client address from `x-forwarded-for` (set by the gateway); else the gRPC peer.
    trust_forwarded_for: bool = True

    # The admin ensured at start (both or neither).
    bootstrap_admin_email: str | None = Field(
        default=None, validation_alias="MERCATO_BOOTSTRAP_ADMIN_EMAIL"
    )
    bootstrap_admin_password: SecretStr | None = Field(
        default=None, validation_alias="MERCATO_BOOTSTRAP_ADMIN_PASSWORD"
    )
    # Service clients ensured at start, JSON:
    # [{"client_id": "orders", "secret": "...", "scopes": ["catalog:reserve"]}]
    service_clients: tuple[ServiceClientSeed, ...] = ()

    # Housekeeping: expired refresh tokens, stale throttle rows, long-retired keys.
    housekeeping_interval_seconds: float = Field(default=300.0, gt=0)

    @field_validator("service_clients", mode="before")
    @classmethod
    def _clients_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else ()
            except json.JSONDecodeError:
                raise ValueError("must be a JSON list of clients") from None
        return value

    @field_validator("signing_key_kek")
    @classmethod
    def _kek(cls, value: SecretStr) -> SecretStr:
        parse_kek(value.get_secret_value())
        return value

    @field_validator("signing_key_previous_keks")
    @classmethod
    def _previous_keks(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            for part in value.get_secret_value().split(","):
                if part.strip():
                    parse_kek(part)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.bootstrap_admin_email is None) != (self.bootstrap_admin_password is None):
            raise ValueError(
                "MERCATO_BOOTSTRAP_ADMIN_EMAIL and MERCATO_BOOTSTRAP_ADMIN_PASSWORD go together"
            )
        if self.argon2_memory_cost_kib < 8 * self.argon2_parallelism:
            raise ValueError("ARGON2_MEMORY_COST_KIB must be at least 8 x ARGON2_PARALLELISM")
        if self.throttle_max_delay_seconds < self.throttle_base_delay_seconds:
            raise ValueError("THROTTLE_MAX_DELAY_SECONDS must be >= THROTTLE_BASE_DELAY_SECONDS")
        ids = [client.client_id for client in self.service_clients]
        if len(ids) != len(set(ids)) or self.first_party_client_id in ids:
            raise ValueError("service client ids must be unique and differ from the first-party id")
        return self

    # Derived values -------------------------------------------------------------------------

    @property
    def argon2(self) -> Argon2Params:
        return Argon2Params(
            time_cost=self.argon2_time_cost,
            memory_cost_kib=self.argon2_memory_cost_kib,
            parallelism=self.argon2_parallelism,
        )

    @property
    def kek(self) -> bytes:
        return parse_kek(self.signing_key_kek.get_secret_value())

    @property
    def previous_keks(self) -> tuple[bytes, ...]:
        if self.signing_key_previous_keks is None:
            return ()
        parts = self.signing_key_previous_keks.get_secret_value().split(",")
        return tuple(parse_kek(part) for part in parts if part.strip())

    @property
    def access_token_ttl(self) -> timedelta:
        return timedelta(seconds=self.access_token_ttl_seconds)

    @property
    def refresh_token_ttl(self) -> timedelta:
        return timedelta(seconds=self.refresh_token_ttl_seconds)

    def throttle_policy(self, max_failures: int) -> ThrottlePolicy:
        return ThrottlePolicy(
            max_failures=max_failures,
            window=timedelta(seconds=self.throttle_window_seconds),
            base_delay=timedelta(seconds=self.throttle_base_delay_seconds),
            max_delay=timedelta(seconds=self.throttle_max_delay_seconds),
        )

    @property
    def throttle_account_ceiling(self) -> ThrottlePolicy:
        """The account from anywhere: a fixed, short lock (never growing)."""
        delay = timedelta(seconds=self.throttle_account_ceiling_delay_seconds)
        return ThrottlePolicy(
            max_failures=self.throttle_account_ceiling_failures,
            window=timedelta(seconds=self.throttle_window_seconds),
            base_delay=delay,
            max_delay=delay,
        )
