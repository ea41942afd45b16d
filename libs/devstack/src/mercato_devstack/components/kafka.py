"""Apache Kafka 4.1 in KRaft mode, one node, from Maven Central jars on the installed JDK.

Three client listeners: plain (``kafka_port``, what `make run` and the tests use), TLS with
SASL PLAIN/SCRAM (``kafka_sasl_ssl_port``, the shape of a managed Kafka) and TLS requiring a
client certificate (``kafka_mtls_port``). The TLS material is a local CA made on the first `up`
(``kafka_tls_dir``); the SASL user is :data:`~mercato_devstack.config.KAFKA_SASL_USER`.
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import uuid
from pathlib import Path

from mercato_devstack import install, pki, probes, process
from mercato_devstack.components.base import Component, log
from mercato_devstack.config import KAFKA_SASL_PASSWORD, KAFKA_SASL_USER

# The SASL mechanisms the secure listener offers (all with the one local user).
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
# Left in the data folder once the SCRAM credentials exist there.
SCRAM_MARKER = "mercato-scram-users"


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (as Uuid prints)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class Kafka(Component):
    name = "kafka"
    stop_timeout = 60.0

    @property
    def port(self) -> int:
        return self.config.kafka_port

    @property
    def ports(self) -> tuple[int, ...]:
        return (
            self.config.kafka_port,
            self.config.kafka_controller_port,
            self.config.kafka_sasl_ssl_port,
            self.config.kafka_mtls_port,
        )

    @property
    def bootstrap(self) -> str:
        return self.config.kafka_bootstrap

    # Inputs and cache -------------------------------------------------------------------------

    @property
    def pom(self) -> Path:
        return self.config.local_dir / "kafka" / "pom.xml"

    @property
    def log4j_config(self) -> Path:
        return self.config.local_dir / "kafka" / "log4j2.xml"

    @property
    def lib_dir(self) -> Path:
        return self.config.cache_dir / "kafka" / "lib"

    @property
    def lib_stamp(self) -> Path:
        return self.config.cache_dir / "kafka" / "lib.sha256"

    def _java(self) -> str | None:
        java_home = os.environ.get("JAVA_HOME")
        extra = [Path(java_home) / "bin"] if java_home else []
        return process.which("java", *extra)

    def _jars_fresh(self) -> bool:
        return install.is_fresh(self.lib_stamp, install.digest(self.pom), self.lib_dir)

    def apt_packages(self) -> list[str]:
        packages = []
        if self._java() is None:
            packages.append("openjdk-17-jre-headless")
        if not self._jars_fresh() and process.which("mvn") is None:
            packages.append("maven")
        return packages

    def prepare(self) -> None:
        """Resolve the broker's runtime classpath with Maven into the cache, once."""
        expected = install.digest(self.pom)
        if install.is_fresh(self.lib_stamp, expected, self.lib_dir):
            return
        log.info("kafka: resolving jars with Maven (%s)", self.pom)
        staging = self.lib_dir.with_name("lib.partial")
        shutil.rmtree(staging, ignore_errors=True)
        process.run(
            [
                "mvn",
                "-q",
                "-B",
                "-Dstyle.color=never",
                "-f",
                str(self.pom),
                f"-Dmaven.repo.local={self.config.cache_dir / 'm2'}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            what="kafka: mvn dependency:copy-dependencies",
            timeout=1800,
        )
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise self.fail(f"Maven resolved no kafka_2.13 jar into {staging}")
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        staging.rename(self.lib_dir)
        self.lib_stamp.write_text(expected + "\n")

    # Configuration ----------------------------------------------------------------------------

    def _ensure_tls(self) -> Path:
        """The local CA, the broker's certificate (key and chain in one PEM file, Kafka's PEM
        keystore) and a client certificate; made again when missing or about to expire."""
        folder = self.config.kafka_tls_dir
        if not pki.still_valid(folder, ("broker", "client")):
            log.info("kafka: issuing the local TLS certificates in %s", folder)
            pki.issue(folder, {"broker": [self.config.host, "localhost"], "client": []})
            keystore = folder / "broker.pem"
            keystore.write_bytes(
                (folder / "broker.key").read_bytes() + (folder / "broker.crt").read_bytes()
            )
            keystore.chmod(0o600)
        return folder

    def _security_settings(self) -> dict[str, str]:
        """The secure listeners' TLS and SASL configuration."""
        tls = self._ensure_tls()
        settings: dict[str, str] = {}
        for listener in ("sasl_ssl", "mtls"):
            prefix = f"listener.name.{listener}."
            settings[prefix + "ssl.keystore.type"] = "PEM"
            settings[prefix + "ssl.keystore.location"] = str(tls / "broker.pem")
        settings["listener.name.mtls.ssl.truststore.type"] = "PEM"
        settings["listener.name.mtls.ssl.truststore.location"] = str(tls / "ca.crt")
        settings["listener.name.mtls.ssl.client.auth"] = "required"
        settings["listener.name.sasl_ssl.sasl.enabled.mechanisms"] = ",".join(SASL_MECHANISMS)
        settings["listener.name.sasl_ssl.plain.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{KAFKA_SASL_USER}="{KAFKA_SASL_PASSWORD}";'
        )
        for mechanism in SCRAM_MECHANISMS:
            # The broker side of SCRAM needs a login module; the users are in the metadata.
            settings[f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        return settings

    def _write_properties(self) -> Path:
        host = self.config.host
        controller = f"{host}:{self.config.kafka_controller_port}"
        clients = (
            f"PLAINTEXT://{host}:{self.port},"
            f"SASL_SSL://{host}:{self.config.kafka_sasl_ssl_port},"
            f"MTLS://{host}:{self.config.kafka_mtls_port}"
        )
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{controller}",
            "listeners": f"{clients},CONTROLLER://{controller}",
            "advertised.listeners": clients,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": (
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL"
            ),
            **self._security_settings(),
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a kill -9 the restarted broker may only register once the controller has
            # expired its previous session: keep that short (defaults 9 s / 2 s).
            "broker.session.timeout.ms": "2000",
            "broker.heartbeat.interval.ms": "500",
            # The active controller appends a no-op record to the metadata log this often when
            # nothing else changes (default 500 ms: a log append and its replay by the broker,
            # twice a second forever); one node needs no such liveness signal so often.
            "metadata.max.idle.interval.ms": "5000",
            # Topics come from deploy/helm/mercato/files/topics.yaml (or a test's fixture).
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            # Two cores: few threads.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "4",
        }
        return self.write_generated(
            "server.properties", "".join(f"{key}={value}\n" for key, value in settings.items())
        )

    def _classpath(self) -> list[str]:
        java = self._java()
        if java is None:
            raise self.fail("java not found (install a JDK 17 or set JAVA_HOME)")
        if not self._jars_fresh():
            raise self.fail(f"the Kafka jars are not in {self.lib_dir}: run `up` to fetch them")
        return [java, "-cp", f"{self.lib_dir}/*"]

    def _format_storage(self, properties: Path) -> None:
        if (self.data_dir / "meta.properties").is_file():
            return
        id_file = self.dir / "cluster.id"
        if not id_file.is_file():
            id_file.write_text(new_cluster_id() + "\n")
        cluster_id = id_file.read_text().strip()
        log.info("kafka: formatting storage %s (cluster %s)", self.data_dir, cluster_id)
        java, *classpath = self._classpath()
        process.run(
            [
                java,
                "-Xmx256m",
                f"-Dlog4j2.configurationFile={self.log4j_config}",
                *classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(properties),
                "--ignore-formatted",
                *self._scram_arguments("--add-scram"),
            ],
            what="kafka: StorageTool format",
            timeout=120,
        )
        (self.data_dir / SCRAM_MARKER).write_text(",".join(SCRAM_MECHANISMS) + "\n")

    @staticmethod
    def _scram_arguments(flag: str) -> list[str]:
        out: list[str] = []
        for mechanism in SCRAM_MECHANISMS:
            out += [flag, f"{mechanism}=[name={KAFKA_SASL_USER},password={KAFKA_SASL_PASSWORD}]"]
        return out

    def after_ready(self) -> None:
        """Data formatted before the secure listener existed gets its SCRAM user now, once."""
        marker = self.data_dir / SCRAM_MARKER
        if marker.is_file():
            return
        log.info("kafka: adding the SCRAM user %s", KAFKA_SASL_USER)
        java, *classpath = self._classpath()
        # One request per mechanism: the broker refuses two changes of one user's credentials
        # in a single request.
        for mechanism in SCRAM_MECHANISMS:
            process.run(
                [
                    java,
                    "-Xmx256m",
                    f"-Dlog4j2.configurationFile={self.log4j_config}",
                    *classpath,
                    "kafka.admin.ConfigCommand",
                    "--bootstrap-server",
                    self.bootstrap,
                    "--alter",
                    "--add-config",
                    f"{mechanism}=[password={KAFKA_SASL_PASSWORD}]",
                    "--entity-type",
                    "users",
                    "--entity-name",
                    KAFKA_SASL_USER,
                ],
                what=f"kafka: ConfigCommand add {mechanism} user",
                timeout=120,
            )
        marker.write_text(",".join(SCRAM_MECHANISMS) + "\n")

    # Lifecycle --------------------------------------------------------------------------------

    def jvm_options(self) -> list[str]:
        """The broker's JVM options; ``MERCATO_KAFKA_JVM_OPTS`` comes last, so it can override
        any of them (HotSpot takes the last value of a ``-XX`` flag)."""
        return [
            *shlex.split(self.config.kafka_heap_opts),
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            # The C1 compiler only: this broker lives for a test run or a bench, minutes, and
            # C2's compilations cost more CPU in that time than its faster code gives back
            # (less broker CPU per order and a quieter idle in each of three A/B pairs,
            # docs/local-stack.md). `-XX:TieredStopAtLevel=4` restores C2.
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_config}",
            f"-Dkafka.logs.dir={self.dir}",
            *shlex.split(os.environ.get("MERCATO_KAFKA_JVM_OPTS", "")),
        ]

    def launch(self) -> None:
        properties = self._write_properties()
        self._format_storage(properties)
        java, *classpath = self._classpath()
        pid = process.spawn(
            [java, *self.jvm_options(), *classpath, "kafka.Kafka", str(properties)],
            log_path=self.log_path,
            cwd=self.dir,
        )
        process.write_pidfile(self.pid_path, pid)

    def probe(self) -> str | None:
        return probes.kafka_ping(self.bootstrap, timeout=5.0)
