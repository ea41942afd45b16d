"""Create the missing Kafka topics of the chart's declaration (the topic hook Job).

    python create_topics.py topics.json      (KAFKA_BOOTSTRAP_SERVERS in the environment)

The connection takes the services' Kafka security settings, without a service prefix:
KAFKA_SECURITY_PROTOCOL (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), KAFKA_SSL_CA_FILE,
KAFKA_SSL_CERT_FILE, KAFKA_SSL_KEY_FILE, KAFKA_SSL_CHECK_HOSTNAME, KAFKA_SASL_MECHANISM,
KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (the chart sets them from kafka.security).

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
import ssl
import sys
from collections.abc import Mapping
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


def client_options(env: Mapping[str, str]) -> dict[str, Any]:
    """The admin client's connection options from the Kafka settings in ``env`` (see above)."""
    protocol = env.get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT"
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ValueError(
            f"KAFKA_SECURITY_PROTOCOL={protocol!r}: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
        )
    options: dict[str, Any] = {
        "bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"],
        "security_protocol": protocol,
    }
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=env.get("KAFKA_SSL_CA_FILE") or None)
        context.check_hostname = env.get("KAFKA_SSL_CHECK_HOSTNAME", "true").lower() != "false"
        if env.get("KAFKA_SSL_CERT_FILE"):
            context.load_cert_chain(env["KAFKA_SSL_CERT_FILE"], env.get("KAFKA_SSL_KEY_FILE"))
        options["ssl_context"] = context
    if protocol.startswith("SASL_"):
        options["sasl_mechanism"] = env.get("KAFKA_SASL_MECHANISM") or "SCRAM-SHA-512"
        options["sasl_plain_username"] = env.get("KAFKA_SASL_USERNAME", "")
        options["sasl_plain_password"] = env.get("KAFKA_SASL_PASSWORD", "")
    return options


async def run(path: str, options: dict[str, Any]) -> int:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    declared = json.loads(Path(path).read_text(encoding="utf-8"))  # noqa: ASYNC240 - tiny file, once
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=30_000)
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
    return asyncio.run(run(sys.argv[1], client_options(os.environ)))


if __name__ == "__main__":
    raise SystemExit(main())
