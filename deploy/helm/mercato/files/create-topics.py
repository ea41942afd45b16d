"""Create the missing Kafka topics of the chart's declaration (the topic hook Job).

    python create_topics.py topics.json      (KAFKA_BOOTSTRAP_SERVERS in the environment)

topics.json is rendered by the chart from files/topics.yaml: a list of
{name, partitions, replicas, config}. Existing topics are left as they are (a different
partition count is reported, never changed); the replication factor is capped at the broker
count and min.insync.replicas at the replication factor. Runs with the service images' Python
and aiokafka; no other dependency.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

TOPIC_ALREADY_EXISTS = 36


def plan(
    declared: list[dict[str, Any]], existing: dict[str, int], brokers: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """The topics to create (as declared, fitted to `brokers`) and warnings about the others.

    `existing` maps the names of existing topics to their partition counts.
    """
    create, warnings = [], []
    for topic in declared:
        name = topic["name"]
        if name in existing:
            if existing[name] != topic["partitions"]:
                warnings.append(
                    f"topic {name} has {existing[name]} partitions, declared "
                    f"{topic['partitions']} (left as is)"
                )
            continue
        replicas = max(1, min(int(topic["replicas"]), brokers))
        config = {key: str(value) for key, value in topic.get("config", {}).items()}
        if "min.insync.replicas" in config:
            config["min.insync.replicas"] = str(min(int(config["min.insync.replicas"]), replicas))
        create.append(
            {
                "name": name,
                "partitions": int(topic["partitions"]),
                "replicas": replicas,
                "config": config,
            }
        )
    return create, warnings


async def run(path: str, bootstrap: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    declared = json.loads(Path(path).read_text(encoding="utf-8"))  # noqa: ASYNC240 - tiny file, once
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        brokers = max(1, len(cluster.get("brokers", [])))
        existing = {
            topic["topic"]: len(topic.get("partitions", []))
            for topic in await admin.describe_topics()
        }
        create, warnings = plan(declared, existing, brokers)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if not create:
            print("all declared topics exist")
            return 0
        response = await admin.create_topics(
            [
                NewTopic(t["name"], t["partitions"], t["replicas"], topic_configs=t["config"])
                for t in create
            ],
            timeout_ms=30_000,
        )
        failed = 0
        for name, code, *rest in response.topic_errors:
            if code == 0:
                print(f"created topic {name}")
            elif code != TOPIC_ALREADY_EXISTS:
                failed += 1
                print(f"cannot create topic {name}: error {code} {rest[0] if rest else ''}")
        return 1 if failed else 0
    finally:
        await admin.close()


def main() -> int:
    if len(sys.argv) != 2 or not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        print("usage: KAFKA_BOOTSTRAP_SERVERS=host:port python create_topics.py topics.json")
        return 2
    return asyncio.run(run(sys.argv[1], os.environ["KAFKA_BOOTSTRAP_SERVERS"]))


if __name__ == "__main__":
    raise SystemExit(main())
