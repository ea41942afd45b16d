"""Kafka with TLS and SASL, as a managed Kafka asks for, against the local broker's secure
listeners: the kit's settings reach it through the same producer, consumer group runner, health
probe and topic-creation script every service and the chart's topics Job use; wrong credentials,
an unknown CA or a missing client certificate are refused and write nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from google.protobuf.struct_pb2 import Struct
from prometheus_client import CollectorRegistry

from mercato_common.kafka import (
    ConsumedEvent,
    ConsumerRunner,
    EventProducer,
    KafkaCertificates,
    KafkaConnection,
    kafka_connection,
    new_envelope,
)
from mercato_common.kit import BrokerProbe
from mercato_common.settings import KafkaSettings, load_settings
from mercato_devstack import pki as local_pki
from mercato_devstack.config import StackConfig
from mercato_devstack.testing import Backends, TopicFactory

pytestmark = pytest.mark.integration

CHART_FILES = StackConfig.from_env().repo_root / "deploy" / "helm" / "mercato" / "files"


class _Settings(KafkaSettings):
    env_prefix = "MERCATO_TEST_"


@pytest.fixture
def stack_config(backends: Backends) -> StackConfig:
    if backends.stack is None:
        pytest.skip("the secure listeners are the local stack's (here Kafka is external)")
    return backends.stack.config


def connect(
    config: StackConfig, security: str, *, drop: tuple[str, ...] = (), **overrides: str
) -> tuple[KafkaSettings, KafkaConnection]:
    """The settings a service would read for ``security`` (without the variables in ``drop``,
    with ``overrides``), and the connection the kit builds from them."""
    values = {**config.kafka_client_settings(security), **overrides}
    for name in drop:
        del values[name]
    settings = load_settings(_Settings, {f"MERCATO_TEST_{k}": v for k, v in values.items()})
    return settings, kafka_connection(settings, client_id="mercato-test")


async def end_offset(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([partition]))[partition])
    finally:
        await consumer.stop()


async def publish_and_consume(connection: KafkaConnection, topic: str, group: str) -> list[str]:
    """Publish three events and read them back with a consumer group runner; their ids."""
    sent = [new_envelope(Struct(), source="test", subject=f"s-{i}") for i in range(3)]
    producer = EventProducer(connection, request_timeout_ms=10_000)
    await producer.start()
    received: list[str] = []
    all_received = asyncio.Event()

    async def handler(event: ConsumedEvent) -> None:
        received.append(event.event_id)
        if len(received) >= len(sent):
            all_received.set()

    try:
        for envelope in sent:
            await producer.publish(topic, envelope)
        runner = ConsumerRunner(
            connection,
            group_id=group,
            topics=[topic],
            handler=handler,
            dead_letter_topic=topic,
            dead_letter_producer=producer,
            registry=CollectorRegistry(),
            poll_timeout_ms=200,
        )
        task = asyncio.create_task(runner.run())
        try:
            await asyncio.wait_for(all_received.wait(), 60)
        finally:
            await runner.stop(grace=15)
            await asyncio.wait_for(task, 15)
    finally:
        await producer.stop()
    assert sorted(received) == sorted(envelope.id for envelope in sent)
    return received


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
async def test_tls_and_sasl_publish_and_consume(
    stack_config: StackConfig, kafka_topics: TopicFactory, mechanism: str
) -> None:
    topic = await kafka_topics.create("secure")
    settings, connection = connect(stack_config, "sasl_ssl", KAFKA_SASL_MECHANISM=mechanism)
    assert settings.kafka_security_protocol == "SASL_SSL"
    await publish_and_consume(connection, topic, kafka_topics.name("group"))
    assert await end_offset(stack_config.kafka_bootstrap, topic) == 3
    probe = BrokerProbe(connection)
    try:
        await probe()  # the health watch's broker check passes over the secure listener
    finally:
        await probe.close()


async def test_client_certificate_publish_and_consume(
    stack_config: StackConfig, kafka_topics: TopicFactory
) -> None:
    topic = await kafka_topics.create("mtls")
    _, connection = connect(stack_config, "mtls")
    await publish_and_consume(connection, topic, kafka_topics.name("group"))


@pytest.mark.parametrize(
    ("security", "drop", "overrides", "why"),
    [
        ("sasl_ssl", (), {"KAFKA_SASL_PASSWORD": "not-the-password"}, "SaslAuthenticationFailed"),
        ("sasl_ssl", (), {"KAFKA_SASL_USERNAME": "intruder"}, "SaslAuthenticationFailed"),
        # No CA named: the system's trust store, which does not know the local CA.
        ("sasl_ssl", ("KAFKA_SSL_CA_FILE",), {}, "CERTIFICATE_VERIFY_FAILED"),
        ("mtls", ("KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE"), {}, "closed"),
    ],
)
async def test_refused_connections_write_nothing(
    stack_config: StackConfig,
    kafka_topics: TopicFactory,
    caplog: pytest.LogCaptureFixture,
    security: str,
    drop: tuple[str, ...],
    overrides: dict[str, str],
    why: str,
) -> None:
    topic = await kafka_topics.create("refused")
    _, connection = connect(stack_config, security, drop=drop, **overrides)
    producer = EventProducer(connection, request_timeout_ms=5_000)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
    assert why in caplog.text
    assert "not-the-password" not in caplog.text
    assert await end_offset(stack_config.kafka_bootstrap, topic) == 0
    probe = BrokerProbe(connection)
    try:
        with pytest.raises(KafkaConnectionError):
            await probe()
    finally:
        await probe.close()


def run_topics_job(env: Mapping[str, str], declaration: Any, tmp_path: Any) -> str:
    """The chart's topics Job script, as the Job runs it, with ``env``; its output."""
    topics = tmp_path / "topics.json"
    topics.write_text(declaration)
    result = subprocess.run(
        [sys.executable, str(CHART_FILES / "create-topics.py"), str(topics)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return f"rc={result.returncode}\n{result.stdout}{result.stderr}"


async def test_the_topics_job_creates_topics_over_tls_and_scram(
    stack_config: StackConfig, kafka_topics: TopicFactory, tmp_path: Any
) -> None:
    name = kafka_topics.name("job")
    kafka_topics.created.append(name)  # deleted after the test like the others
    declaration = f'[{{"name": "{name}", "partitions": 2, "replicas": 1, "config": {{}}}}]'
    env = stack_config.kafka_client_settings("sasl_ssl")
    refused = await asyncio.to_thread(
        run_topics_job, {**env, "KAFKA_SASL_PASSWORD": "not-the-password"}, declaration, tmp_path
    )
    assert not refused.startswith("rc=0"), refused
    assert "not-the-password" not in refused
    created = await asyncio.to_thread(run_topics_job, env, declaration, tmp_path)
    assert created.startswith("rc=0"), created
    assert f"created topic {name}" in created, created
    again = await asyncio.to_thread(run_topics_job, env, declaration, tmp_path)
    assert again.startswith("rc=0"), again
    assert "all declared topics exist" in again, again


async def test_a_renewed_client_certificate_is_used_without_a_restart(
    stack_config: StackConfig, kafka_topics: TopicFactory, tmp_path: Path
) -> None:
    """The client certificate files are renewed in place: the connection's TLS context takes
    them (KafkaCertificates, run every few seconds by the kit), and the next connection to the
    broker presents the new certificate. First the files hold a certificate of a CA the broker
    does not trust (refused), then one of the local CA (accepted)."""
    topic = await kafka_topics.create("renewed")
    stack_tls = stack_config.kafka_tls_dir
    foreign = tmp_path / "foreign"
    local_pki.issue(foreign, {"client": []}, days=1, common_name="foreign CA")
    live = tmp_path / "live"
    live.mkdir()
    for name in ("client.crt", "client.key"):
        shutil.copy(foreign / name, live / name)
    settings, connection = connect(
        stack_config,
        "mtls",
        KAFKA_SSL_CERT_FILE=str(live / "client.crt"),
        KAFKA_SSL_KEY_FILE=str(live / "client.key"),
    )
    assert connection.ssl_context is not None
    certificates = KafkaCertificates(connection.ssl_context, settings)
    producer = EventProducer(connection, request_timeout_ms=5_000)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()

    renewed = tmp_path / "renewed"
    renewed.mkdir()
    for name in ("ca.crt", "ca.key"):
        shutil.copy(stack_tls / name, renewed / name)
    local_pki.sign(renewed, "client", [], days=1)
    os.replace(renewed / "client.crt", live / "client.crt")
    assert not certificates.reload_if_changed()  # the key does not match yet: kept
    os.replace(renewed / "client.key", live / "client.key")
    assert certificates.reload_if_changed()
    assert not certificates.reload_if_changed()  # nothing new since
    await publish_and_consume(connection, topic, kafka_topics.name("group"))
