"""kafka.security: every Kafka client of the release (each service and the topics Job) gets the
same TLS and SASL settings, the Secrets they name are mounted or referenced (never inlined), the
services' settings accept what the chart sets, and combinations that cannot work are refused."""

from __future__ import annotations

from typing import Any

import pytest

from mercato_common.settings import KafkaSettings, load_settings

from .conftest import MANIFEST, REQUIRED, component_of, settings_model

SECURE = (
    "--set", "kafka.security.protocol=SASL_SSL",
    "--set", "kafka.security.tls.caSecret=kafka-ca-bundle",
    "--set", "kafka.security.tls.caKey=bundle.pem",
    "--set", "kafka.security.tls.clientCertSecret=kafka-client-cert",
    "--set", "kafka.security.sasl.mechanism=SCRAM-SHA-256",
    "--set", "kafka.security.sasl.existingSecret=kafka-user",
)  # fmt: skip

KAFKA_CLIENTS = [service.name for service in MANIFEST.services if service.uses_kafka]


def _deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment" and component_of(d) == component)


def _config(docs: list[dict[str, Any]], component: str) -> dict[str, str]:
    return next(
        d["data"] for d in docs if d["kind"] == "ConfigMap" and component_of(d) == component
    )


def _topics_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Job" and component_of(d) == "kafka-topics")


def _tls_volumes(pod: dict[str, Any]) -> dict[str, str]:
    return {
        v["name"]: v["secret"]["secretName"]
        for v in pod["volumes"]
        if v["name"] in ("kafka-ca", "kafka-client")
    }


def _tls_mounts(container: dict[str, Any]) -> dict[str, str]:
    return {
        m["name"]: m["mountPath"]
        for m in container["volumeMounts"]
        if m["name"] in ("kafka-ca", "kafka-client")
    }


EXPECTED_MOUNTS = {"kafka-ca": "/etc/mercato/kafka/ca", "kafka-client": "/etc/mercato/kafka/client"}
EXPECTED_VOLUMES = {"kafka-ca": "kafka-ca-bundle", "kafka-client": "kafka-client-cert"}


@pytest.mark.parametrize("component", KAFKA_CLIENTS)
def test_every_kafka_client_gets_the_security_settings(render: Any, component: str) -> None:
    docs = render("default", *SECURE)
    prefix = MANIFEST.service(component).env_prefix
    config = _config(docs, component)
    assert config[f"{prefix}KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config[f"{prefix}KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-256"
    assert config[f"{prefix}KAFKA_SSL_CA_FILE"] == "/etc/mercato/kafka/ca/bundle.pem"
    assert config[f"{prefix}KAFKA_SSL_CERT_FILE"] == "/etc/mercato/kafka/client/tls.crt"
    assert config[f"{prefix}KAFKA_SSL_KEY_FILE"] == "/etc/mercato/kafka/client/tls.key"
    assert config[f"{prefix}KAFKA_SSL_CHECK_HOSTNAME"] == "true"
    assert not any("PASSWORD" in key or "USERNAME" in key for key in config), "secret inlined"

    pod = _deployment(docs, component)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    secret_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
    }
    assert secret_env[f"{prefix}KAFKA_SASL_USERNAME"] == {"name": "kafka-user", "key": "username"}
    assert secret_env[f"{prefix}KAFKA_SASL_PASSWORD"] == {"name": "kafka-user", "key": "password"}
    assert _tls_volumes(pod) == EXPECTED_VOLUMES
    assert _tls_mounts(container) == EXPECTED_MOUNTS

    # What the pod's environment holds is a valid Kafka group of the service's settings.
    assert issubclass(settings_model(component), KafkaSettings)
    group = type("Group", (KafkaSettings,), {"env_prefix": prefix})
    environ = {**config, f"{prefix}KAFKA_SASL_USERNAME": "u", f"{prefix}KAFKA_SASL_PASSWORD": "p"}
    settings = load_settings(group, environ)
    assert isinstance(settings, KafkaSettings)
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-256"
    assert settings.kafka_sasl_password.get_secret_value() == "p"
    assert str(settings.kafka_ssl_ca_file) == "/etc/mercato/kafka/ca/bundle.pem"


def test_components_without_kafka_get_nothing(render: Any) -> None:
    """A component whose Kafka is switched off (the gateway: its subscriptions are the only
    reason it reads Kafka) gets no Kafka setting, file or topic prefix."""
    docs = render(
        "default",
        *SECURE,
        "--set", "components.gateway.kafka.bootstrapEnv=",
        "--set", "components.gateway.kafka.topicPrefixEnv=",
    )  # fmt: skip
    assert not any("KAFKA" in key for key in _config(docs, "gateway"))
    pod = _deployment(docs, "gateway")["spec"]["template"]["spec"]
    assert not _tls_volumes(pod)
    with_kafka = _config(render("default", *SECURE), "gateway")
    assert with_kafka["MERCATO_GATEWAY_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert with_kafka["MERCATO_GATEWAY_KAFKA_TOPIC_PREFIX"] == ""


def test_the_topics_job_connects_the_same_way(render: Any, helpers: Any) -> None:
    job = _topics_job(render("default", *SECURE))
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SSL_CA_FILE"] == "/etc/mercato/kafka/ca/bundle.pem"
    assert env["KAFKA_SASL_PASSWORD"] == {"secretKeyRef": {"name": "kafka-user", "key": "password"}}
    assert _tls_volumes(pod) == EXPECTED_VOLUMES
    assert _tls_mounts(container) == EXPECTED_MOUNTS

    script = helpers.load_module(helpers.CHART / "files" / "create-topics.py", "create_topics")
    plain = script.client_options({"KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    assert plain == {"bootstrap_servers": "k:9092", "security_protocol": "PLAINTEXT"}
    sasl = script.client_options(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k:9096",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
            "KAFKA_SSL_CHECK_HOSTNAME": "false",
        }
    )
    assert sasl["ssl_context"].check_hostname is False
    assert (sasl["sasl_mechanism"], sasl["sasl_plain_username"]) == ("PLAIN", "u")
    with pytest.raises(ValueError, match="KAFKA_SECURITY_PROTOCOL"):
        script.client_options({"KAFKA_BOOTSTRAP_SERVERS": "k:1", "KAFKA_SECURITY_PROTOCOL": "TLS"})


def test_plaintext_by_default(render: Any) -> None:
    docs = render("default")
    for component in KAFKA_CLIENTS:
        prefix = MANIFEST.service(component).env_prefix
        config = _config(docs, component)
        assert config[f"{prefix}KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
        assert not any(key.startswith(f"{prefix}KAFKA_SSL_") for key in config)
        assert not _tls_volumes(_deployment(docs, component)["spec"]["template"]["spec"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "kafka.security.protocol=SASL_SSL"], "kafka.security.sasl.existingSecret"),
        (
            ["--set", "kafka.security.tls.caSecret=ca"],
            "kafka.security.tls secrets are set but kafka.security.protocol is PLAINTEXT",
        ),
        (
            [
                "--set",
                "kafka.strimzi.enabled=true",
                "--set",
                "kafka.security.protocol=SSL",
            ],
            "kafka.security is for an external Kafka",
        ),
        (
            [
                "--set",
                "keda.enabled=true",
                "--set",
                "kafka.security.protocol=SSL",
                "--api-versions",
                "keda.sh/v1alpha1/ScaledObject",
            ],
            "keda.authenticationRef is required with kafka.security",
        ),
        (["--set", "kafka.security.protocol=TLS"], "kafka.security.protocol"),
        (["--set", "kafka.security.sasl.mechanism=GSSAPI"], "kafka.security.sasl.mechanism"),
    ],
)
def test_impossible_security_values_are_refused(
    helm: Any, helpers: Any, args: list[str], message: str
) -> None:
    result = helm("template", "x", str(helpers.CHART), *REQUIRED, *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr.replace("/", "."), result.stderr
