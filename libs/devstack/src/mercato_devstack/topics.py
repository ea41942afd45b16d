"""The topic declarations (deploy/helm/mercato/files/topics.yaml) and creating them in Kafka."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mercato_devstack.errors import StackError

log = logging.getLogger("mercato_devstack")

#: Kafka error codes met when creating topics.
TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replicas: int
    config: Mapping[str, str] = field(default_factory=dict)
    owner: str = ""
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    key: str = ""
    description: str = ""

    def for_brokers(self, brokers: int, prefix: str = "") -> TopicSpec:
        """This topic as a cluster of `brokers` nodes can hold it, named with `prefix`.

        The replication factor is capped at the broker count and min.insync.replicas at the
        replication factor (else every acks=all write would fail on a one-node cluster).
        """
        replicas = max(1, min(self.replicas, brokers))
        config = dict(self.config)
        if "min.insync.replicas" in config:
            config["min.insync.replicas"] = str(min(int(config["min.insync.replicas"]), replicas))
        return replace(self, name=prefix + self.name, replicas=replicas, config=config)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise StackError(f"{where} must be a list of names")
    return tuple(value)


def _config(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StackError(f"{where} must be a mapping of Kafka topic settings")
    return {str(key): str(item) for key, item in value.items()}


def _positive(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise StackError(f"{where} must be a positive integer, not {value!r}")
    return value


def parse_topics(document: Any, source: str = "topics.yaml") -> list[TopicSpec]:
    if not isinstance(document, dict) or document.get("version") != 1:
        raise StackError(f"{source}: expected a mapping with `version: 1`")
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise StackError(f"{source}: `defaults` must be a mapping")
    default_config = _config(defaults.get("config"), f"{source}: defaults.config")
    entries = document.get("topics")
    if not isinstance(entries, list) or not entries:
        raise StackError(f"{source}: `topics` must be a non-empty list")
    specs: list[TopicSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{source}: topics[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise StackError(f"{where} needs a `name`")
        name = entry["name"]
        if name in seen:
            raise StackError(f"{where}: topic {name} is declared twice")
        seen.add(name)
        specs.append(
            TopicSpec(
                name=name,
                partitions=_positive(
                    entry.get("partitions", defaults.get("partitions", 1)), f"{where}.partitions"
                ),
                replicas=_positive(
                    entry.get("replicas", defaults.get("replicas", 1)), f"{where}.replicas"
                ),
                config={**default_config, **_config(entry.get("config"), f"{where}.config")},
                owner=str(entry.get("owner", "")),
                producers=_strings(entry.get("producers"), f"{where}.producers"),
                consumers=_strings(entry.get("consumers"), f"{where}.consumers"),
                key=str(entry.get("key", "")),
                description=str(entry.get("description", "")),
            )
        )
    return specs


def load_topics(path: Path) -> list[TopicSpec]:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise StackError(f"cannot read the topic declarations {path}: {exc}") from exc
    return parse_topics(document, str(path))


async def ensure_topics(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    *,
    prefix: str = "",
    request_timeout: float = 30.0,
) -> list[str]:
    """Create the topics of `specs` (named `prefix + name`) that do not exist yet.

    Idempotent: existing topics are left alone (a partition count that differs from the
    declaration is only logged). Returns the names of the topics it created.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # lazy: not a dependency here

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(request_timeout * 1000)
    )
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        brokers = max(1, len(cluster.get("brokers", [])))
        wanted = [spec.for_brokers(brokers, prefix) for spec in specs]
        existing = {topic["topic"]: topic for topic in await admin.describe_topics()}
        for spec in wanted:
            if spec.name in existing:
                partitions = len(existing[spec.name].get("partitions", []))
                if partitions and partitions != spec.partitions:
                    log.warning(
                        "topic %s has %d partitions, declared %d (left as is)",
                        spec.name,
                        partitions,
                        spec.partitions,
                    )
        missing = [spec for spec in wanted if spec.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(spec.name, spec.partitions, spec.replicas, topic_configs=dict(spec.config))
                for spec in missing
            ],
            timeout_ms=int(request_timeout * 1000),
        )
        created = []
        for name, code, *rest in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != TOPIC_ALREADY_EXISTS:
                message = rest[0] if rest else ""
                raise StackError(f"cannot create topic {name}: error {code} {message}")
        for name in created:
            log.info("kafka: created topic %s", name)
        await _wait_until_described(
            admin, {spec.name: spec.partitions for spec in missing}, request_timeout
        )
        return created
    finally:
        await admin.close()


async def _wait_until_described(
    admin: Any, partitions: dict[str, int], wait_seconds: float
) -> None:
    """Wait until every topic shows all its partitions with a leader.

    CreateTopics returns before the metadata has reached every listener, so a client that
    describes or produces right away can still see an empty topic.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        described = await admin.describe_topics(list(partitions))
        ready = {
            topic["topic"]
            for topic in described
            if topic.get("error_code", 0) == 0
            and len(topic.get("partitions", [])) == partitions.get(topic["topic"])
            and all(p.get("leader", -1) >= 0 for p in topic["partitions"])
        }
        if ready >= set(partitions):
            return
        if time.monotonic() > deadline:
            raise StackError(
                f"topics not ready after {wait_seconds:.0f} s: {sorted(set(partitions) - ready)}"
            )
        await asyncio.sleep(0.1)


async def delete_topics(
    bootstrap: str, names: Sequence[str], *, request_timeout: float = 30.0
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient  # lazy: not a dependency here

    if not names:
        return
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(request_timeout * 1000)
    )
    await admin.start()
    try:
        await admin.delete_topics(list(names), timeout_ms=int(request_timeout * 1000))
    finally:
        await admin.close()
