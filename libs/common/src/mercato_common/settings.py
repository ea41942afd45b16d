"""Typed settings from environment variables (12-factor).

The environment is read in exactly one place: a service's ``__main__`` passes
``os.environ`` to :func:`load_settings`. Everything else receives the typed
settings object. A missing or malformed variable fails at start, listing every
problem at once, so an operator fixes a deployment in one round trip.

Each field is read from ``<PREFIX><FIELD_NAME_UPPER>``; a field may name a
different variable with ``Field(validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")``
for names fixed by a standard. Secrets use :class:`pydantic.SecretStr` so they
never appear in ``repr``, logs or error messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from mercato_common.tls import ClientTls

__all__ = [
    "BaseServiceSettings",
    "KafkaSaslMechanism",
    "KafkaSecurityProtocol",
    "KafkaSettings",
    "MongoSettings",
    "OutboxSettings",
    "PostgresSettings",
    "RedisSettings",
    "ServiceTlsSettings",
    "Settings",
    "SettingsError",
    "TlsSettings",
    "load_settings",
]


class SettingsError(Exception):
    """The environment does not describe a valid configuration; lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class Settings(BaseModel):
    """Base of every settings model: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    # Prefix of the variables this model reads, e.g. "MERCATO_CATALOG_".
    env_prefix: ClassVar[str] = "MERCATO_"


class TlsSettings(BaseModel):
    """Certificate files for TLS or mutual TLS without a mesh."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cert_file: Path
    key_file: Path
    # When set, peers must present a certificate signed by this CA (mutual TLS).
    client_ca_file: Path | None = None


class ServiceTlsSettings(Settings):
    """Certificate files of a process that serves and calls over TLS without a mesh.

    ``tls_cert_file``/``tls_key_file`` are the process's own certificate: served to its
    callers and, when ``tls_ca_file`` is set, presented as its client certificate on outgoing
    calls (mutual TLS). ``tls_ca_file`` holds the trust roots for outgoing calls; when it is
    set every outgoing channel uses TLS (see :attr:`client_tls`).
    """

    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None

    @model_validator(mode="after")
    def _tls_cert_and_key(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        return self

    @property
    def client_tls(self) -> ClientTls | None:
        """TLS for outgoing channels (``create_channel(tls=...)``); None means plaintext."""
        if self.tls_ca_file is None:
            return None
        return ClientTls(
            ca_file=self.tls_ca_file, cert_file=self.tls_cert_file, key_file=self.tls_key_file
        )


class RedisSettings(Settings):
    """The Redis group: the same variable names in every process (one Redis per deployment:
    the token revocation list, the gateway's rate limits, the catalog's read cache)."""

    # An empty URL: no Redis (no revocation checks, no shared rate limits, no cache).
    redis_url: str = "redis://127.0.0.1:16379/0"
    redis_timeout_ms: int = Field(default=100, gt=0)


class TokenSettings(RedisSettings):
    """How a process verifies access tokens (auth's RFC 9068 JWTs, see JwksTokenVerifier)."""

    token_issuer: str = Field(default="http://127.0.0.1:8080", min_length=1)
    token_audience: str = Field(default="mercato", min_length=1)
    token_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    # A verified token is answered from memory this long (0: every call checks the signature).
    token_cache_seconds: float = Field(default=60.0, ge=0, le=900)
    # The revocation list in Redis (mercato_common.revocation): the same prefix in every
    # process; a token found clean is not asked about again for this long (0: every call asks).
    token_revocation_prefix: str = Field(default="mercato:revoked:", min_length=1)
    token_revocation_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # While Redis is unreachable: "open" accepts otherwise valid tokens, "closed" refuses them
    # (UNAVAILABLE). Redis is skipped for the breaker's seconds after a failure.
    token_revocation_on_error: Literal["open", "closed"] = "open"  # noqa: S105 - not a secret
    token_revocation_breaker_seconds: float = Field(default=2.0, ge=0)


class BaseServiceSettings(ServiceTlsSettings, TokenSettings):
    """Settings every gRPC service process has."""

    service_name: str = Field(min_length=1)
    service_version: str = "0.1.0"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    # gRPC server reflection lists every service and message: development tooling (grpcurl),
    # off unless asked for (`make run` turns it on; the chart's config.grpcReflection).
    grpc_reflection: bool = False
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    # Loopback unless told: the chart binds all interfaces so that Prometheus can scrape pods.
    metrics_host: str = "127.0.0.1"
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # The asyncio event loop implementation serving the process (make bench measures both).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Seconds in-flight calls get to finish after SIGTERM, and the pause after
    # health turns NOT_SERVING so load balancers stop sending new calls.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    shutdown_drain_seconds: float = Field(default=2.0, ge=0)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # Health: every dependency the service needs is checked this often; one unreachable longer
    # than the grace turns the gRPC health NOT_SERVING (a single blip does not flap it).
    health_check_interval_seconds: float = Field(default=5.0, gt=0)
    health_grace_seconds: float = Field(default=10.0, ge=0)
    otlp_endpoint: str | None = Field(default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    # "otlp": log records are also exported over OTLP to that endpoint (redacted like stdout).
    logs_exporter: Literal["none", "otlp"] = Field(
        default="none", validation_alias="OTEL_LOGS_EXPORTER"
    )
    # Mutual TLS when serving: callers must present a certificate signed by this CA.
    tls_client_ca_file: Path | None = None

    @model_validator(mode="after")
    def _tls_client_ca(self) -> Self:
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        return self

    @property
    def tls(self) -> TlsSettings | None:
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return TlsSettings(
            cert_file=self.tls_cert_file,
            key_file=self.tls_key_file,
            client_ca_file=self.tls_client_ca_file,
        )


class PostgresSettings(Settings):
    """The PostgreSQL group: the same variable names in every service that owns a database."""

    # asyncpg DSN; may hold a password.
    database_url: SecretStr
    database_pool_min_size: int = Field(default=2, ge=1)
    database_pool_max_size: int = Field(default=10, ge=2)
    database_command_timeout_seconds: float = Field(default=10.0, gt=0)
    # Apply pending migrations at start (otherwise run `python -m mercato_<name> migrate` first).
    migrate_on_start: bool = True

    @model_validator(mode="after")
    def _pool_sizes(self) -> Self:
        if self.database_pool_min_size > self.database_pool_max_size:
            raise ValueError("DATABASE_POOL_MIN_SIZE must not exceed DATABASE_POOL_MAX_SIZE")
        return self


class MongoSettings(Settings):
    """The MongoDB group (FerretDB locally): the same variable names in every service."""

    mongo_uri: str = Field(default="mongodb://127.0.0.1:27018/", min_length=1)
    mongo_database: str = Field(min_length=1)
    # Server selection and connection timeout.
    mongo_timeout_ms: int = Field(default=5000, gt=0)
    # Upper bound of any one operation (a hung server becomes an error, not a stuck call).
    mongo_operation_timeout_ms: int = Field(default=15000, gt=0)
    # Connections, and so operations in flight, per process (PyMongo's default is 100): a bound
    # on what one replica asks of the server (FerretDB serves each operation on connections of
    # its PostgreSQL pool, 80 locally; a managed MongoDB counts connections against a quota).
    mongo_max_pool_size: int = Field(default=20, gt=0)


KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
# The SASL mechanisms aiokafka speaks with a username and a password.
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(Settings):
    """The Kafka group: where the broker is, how this process names itself to it and how it
    proves who it is (TLS, SASL): what a managed Kafka (MSK, Confluent Cloud, Aiven, a Strimzi
    TLS/SCRAM listener) asks for. Every producer, consumer, relay and admin client of the
    service connects the same way (:func:`mercato_common.kafka.kafka_connection`)."""

    kafka_bootstrap_servers: str = Field(min_length=1)
    # Empty: "mercato-<service name>".
    kafka_client_id: str = ""
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    # TLS (SSL, SASL_SSL): the CA bundle that signs the brokers' certificates (unset: the
    # system's trust store), and a client certificate and key for brokers that require one.
    kafka_ssl_ca_file: Path | None = None
    kafka_ssl_cert_file: Path | None = None
    kafka_ssl_key_file: Path | None = None
    # Off only for brokers whose certificates do not name the address used to reach them.
    kafka_ssl_check_hostname: bool = True
    # SASL (SASL_PLAINTEXT, SASL_SSL).
    kafka_sasl_mechanism: KafkaSaslMechanism = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _kafka_security(self) -> Self:
        protocol = self.kafka_security_protocol
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE must be set together")
        uses_tls = protocol in ("SSL", "SASL_SSL")
        tls_files = (self.kafka_ssl_ca_file, self.kafka_ssl_cert_file)
        if not uses_tls and any(path is not None for path in tls_files):
            raise ValueError(
                f"KAFKA_SSL_* files are set but KAFKA_SECURITY_PROTOCOL is {protocol} "
                "(SSL or SASL_SSL uses them)"
            )
        uses_sasl = protocol.startswith("SASL_")
        credentials = bool(self.kafka_sasl_username or self.kafka_sasl_password.get_secret_value())
        if uses_sasl and not (
            self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()
        ):
            raise ValueError(f"{protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        if not uses_sasl and credentials:
            raise ValueError(
                f"KAFKA_SASL_USERNAME/PASSWORD are set but KAFKA_SECURITY_PROTOCOL is {protocol} "
                "(SASL_PLAINTEXT or SASL_SSL uses them)"
            )
        return self


class OutboxSettings(KafkaSettings):
    """The outbox group of a service that publishes events: its topic and its relay."""

    events_topic: str = Field(min_length=1)
    # False: events stay in the outbox (another replica or process relays them).
    outbox_relay_enabled: bool = True
    # The relay's fallback poll, for what no wake-up announced (rows left by a process that
    # crashed, a missed notification): new rows wake it at once (PostgreSQL LISTEN/NOTIFY, the
    # MongoDB outbox's in-process wake-up), so this only bounds the repair delay. Each poll is a
    # query of the store: kept well above once a second.
    outbox_poll_interval_seconds: float = Field(default=5.0, gt=0)


def _variable_name(model: type[Settings], name: str, alias: object) -> str:
    if isinstance(alias, str):
        return alias
    return f"{model.env_prefix}{name.upper()}"


S = TypeVar("S", bound="Settings")


def load_settings(model: type[S], environ: Mapping[str, str]) -> S:
    """Build ``model`` from ``environ``; raise :class:`SettingsError` naming every bad variable."""
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name, field in model.model_fields.items():
        variable = _variable_name(model, name, field.validation_alias)
        names[name] = variable
        names[variable] = variable
        if variable in environ:
            values[name] = environ[variable]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            location = ".".join(str(part) for part in error["loc"])
            variable = names.get(location, location or model.env_prefix + "*")
            kind = "is required" if error["type"] == "missing" else error["msg"]
            problems.append(f"{variable}: {kind}")
        raise SettingsError(problems) from None
