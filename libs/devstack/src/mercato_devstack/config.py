"""Where the stack keeps its state and which ports it uses, read from environment variables."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mercato_devstack.errors import StackError

#: Address every component binds to by default: loopback only. MERCATO_STACK_HOST moves a
#: stack to another local address, e.g. the bridge of a local Kubernetes node (tests/pods), whose
#: pods cannot reach the host's loopback.
HOST = "127.0.0.1"

#: Login role (a superuser) and password of the local PostgreSQL, for local use only.
PG_USER = "mercato"
PG_PASSWORD = "mercato"  # noqa: S105 - a local development server on loopback
#: The local Kafka's SASL user (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512) on its SASL_SSL listener.
KAFKA_SASL_USER = "mercato"
KAFKA_SASL_PASSWORD = "mercato-local"  # noqa: S105 - a local development broker on loopback
#: FerretDB's storage database; `up` also creates one per postgres service of the manifest.
FERRETDB_DATABASE = "ferretdb"


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise StackError(f"{name}={raw!r} is not a port number")
    return port


def find_repo_root(env: Mapping[str, str] | None = None) -> Path:
    """The repository root: $MERCATO_REPO_ROOT, else the nearest folder with deploy/local."""
    env = os.environ if env is None else env
    if env.get("MERCATO_REPO_ROOT"):
        return Path(env["MERCATO_REPO_ROOT"]).resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "deploy" / "local").is_dir() and (folder / "pyproject.toml").is_file():
                return folder
    raise StackError(
        "cannot find the mercato repository (a folder with deploy/local); set MERCATO_REPO_ROOT"
    )


@dataclass(frozen=True)
class StackConfig:
    """Paths and ports of the local stack.

    Every field has an environment variable (see :meth:`from_env`); the defaults keep clear of
    the usual ports so a system PostgreSQL, Kafka, MongoDB or Redis can run beside the stack.
    """

    repo_root: Path
    state_dir: Path
    host: str = HOST
    pg_port: int = 15432
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    mongo_port: int = 27018
    redis_port: int = 16379
    #: `make observe`: Prometheus's HTTP port, Jaeger's UI/query port and its OTLP/gRPC receiver.
    prometheus_port: int = 9090
    jaeger_port: int = 16686
    jaeger_otlp_port: int = 4317
    #: stripe-mock (the Stripe API for the payment tests); 12111 is its usual port.
    stripe_mock_port: int = 12111
    #: Seconds each component gets to become ready.
    timeout: float = 120.0
    kafka_heap_opts: str = "-Xms128m -Xmx512m"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env
        root = find_repo_root(env)
        state = Path(env.get("MERCATO_STATE_DIR") or root / ".state")
        try:
            timeout = float(env.get("MERCATO_STACK_TIMEOUT") or cls.timeout)
        except ValueError:
            raise StackError("MERCATO_STACK_TIMEOUT must be a number of seconds") from None
        host = env.get("MERCATO_STACK_HOST") or cls.host
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise StackError(f"MERCATO_STACK_HOST={host!r} is not an IP address") from None
        if address.version != 4:
            raise StackError(f"MERCATO_STACK_HOST={host!r}: an IPv4 address of this machine")
        return cls(
            repo_root=root,
            state_dir=state.resolve(),
            host=host,
            pg_port=_port(env, "MERCATO_PG_PORT", cls.pg_port),
            kafka_port=_port(env, "MERCATO_KAFKA_PORT", cls.kafka_port),
            kafka_controller_port=_port(
                env, "MERCATO_KAFKA_CONTROLLER_PORT", cls.kafka_controller_port
            ),
            mongo_port=_port(env, "MERCATO_MONGO_PORT", cls.mongo_port),
            redis_port=_port(env, "MERCATO_REDIS_PORT", cls.redis_port),
            prometheus_port=_port(env, "MERCATO_PROMETHEUS_PORT", cls.prometheus_port),
            jaeger_port=_port(env, "MERCATO_JAEGER_PORT", cls.jaeger_port),
            jaeger_otlp_port=_port(env, "MERCATO_JAEGER_OTLP_PORT", cls.jaeger_otlp_port),
            stripe_mock_port=_port(env, "MERCATO_STRIPE_MOCK_PORT", cls.stripe_mock_port),
            timeout=timeout,
            kafka_heap_opts=env.get("MERCATO_KAFKA_HEAP_OPTS") or cls.kafka_heap_opts,
        )

    # Layout of the state folder -------------------------------------------------------------

    @property
    def stack_dir(self) -> Path:
        """Data, logs and pid files, one sub-folder per component."""
        return self.state_dir / "stack"

    @property
    def cache_dir(self) -> Path:
        """Downloads and builds: kept by `down`, reused by every later `up`."""
        return self.state_dir / "cache"

    @property
    def local_dir(self) -> Path:
        """The committed inputs: Kafka's POM and log4j2 config, FerretDB's Go main."""
        return self.repo_root / "deploy" / "local"

    @property
    def manifest_file(self) -> Path:
        """The service manifest (services/services.toml)."""
        return self.repo_root / "services" / "services.toml"

    @property
    def topics_file(self) -> Path:
        return self.repo_root / "deploy" / "helm" / "mercato" / "files" / "topics.yaml"

    # Connection settings ----------------------------------------------------------------------

    def postgres_dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@{self.host}:{self.pg_port}/{database}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def kafka_sasl_ssl_port(self) -> int:
        """The listener with TLS and SASL (PLAIN, SCRAM), as a managed Kafka asks for: two above
        the plain port, so every stack (make run, the e2e and bench suites) has its own."""
        return self.kafka_port + 2

    @property
    def kafka_mtls_port(self) -> int:
        """The listener with TLS that requires a client certificate signed by the local CA."""
        return self.kafka_port + 3

    def kafka_client_settings(self, security: str) -> dict[str, str]:
        """The kit's Kafka settings (``KAFKA_*``, without a service prefix) that reach this
        stack's broker by ``security``: ``plaintext``, ``sasl_ssl`` (TLS with the local CA and
        SCRAM-SHA-512) or ``mtls`` (TLS with the local client certificate)."""
        if security == "plaintext":
            return {"KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap}
        tls = self.kafka_tls_dir
        if security == "sasl_ssl":
            return {
                "KAFKA_BOOTSTRAP_SERVERS": f"{self.host}:{self.kafka_sasl_ssl_port}",
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SSL_CA_FILE": str(tls / "ca.crt"),
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SASL_USERNAME": KAFKA_SASL_USER,
                "KAFKA_SASL_PASSWORD": KAFKA_SASL_PASSWORD,
            }
        if security == "mtls":
            return {
                "KAFKA_BOOTSTRAP_SERVERS": f"{self.host}:{self.kafka_mtls_port}",
                "KAFKA_SECURITY_PROTOCOL": "SSL",
                "KAFKA_SSL_CA_FILE": str(tls / "ca.crt"),
                "KAFKA_SSL_CERT_FILE": str(tls / "client.crt"),
                "KAFKA_SSL_KEY_FILE": str(tls / "client.key"),
            }
        raise StackError(f"Kafka security {security!r}: plaintext, sasl_ssl or mtls")

    @property
    def kafka_tls_dir(self) -> Path:
        """The local Kafka's CA (ca.crt), its broker certificate and a client certificate
        (client.crt, client.key), made on the first `up`."""
        return self.stack_dir / "kafka" / "tls"

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://{self.host}:{self.mongo_port}/"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"
