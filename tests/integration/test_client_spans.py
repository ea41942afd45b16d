"""The spans of the PostgreSQL, MongoDB, Redis and Kafka clients come from OpenTelemetry's
instrumentation packages, turned on by the kit where it creates each client, once the process
exports traces: stable semantic-convention attributes, and neither values nor error messages.

The instrumentations patch their libraries for the whole process and read the global tracer
provider, so the check runs in a fresh interpreter (as a service process would) and prints the
spans it exported as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SECRET = "secret-hunter2@example.com"

SCRIPT = r"""
import asyncio, json, sys
from importlib.resources import files

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mercato_common.kafka import EventProducer
from mercato_common.mongo import MongoStore
from mercato_common.postgres import Database
from mercato_common.redis_client import fail_fast_redis
from mercato_common.settings import MongoSettings
from mercato_common.telemetry import setup_telemetry

dsn, mongo_uri, mongo_db, redis_url, bootstrap, topic, secret = sys.argv[1:]


async def main() -> None:
    database = Database(dsn, logger_name="spans", migrations=files("mercato_common"),
                        migrate_on_start=False)
    await database.start()
    try:
        async with database.connection() as conn:
            assert await conn.fetchval("SELECT $1::text", secret) == secret
            try:
                await conn.fetchval("SELECT $1::uuid", secret)
            except Exception:
                pass
    finally:
        await database.stop()
    store = MongoStore(MongoSettings(mongo_uri=mongo_uri, mongo_database=mongo_db),
                       appname="spans", indexes={})
    await store.db["things"].insert_one({"email": secret})
    assert await store.db["things"].find_one({"email": secret}) is not None
    await store.client.drop_database(mongo_db)
    await store.client.close()
    redis = fail_fast_redis(redis_url, timeout_ms=2000)
    await redis.set("spans:" + secret, "1", ex=5)
    await redis.aclose()
    producer = EventProducer(bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, secret.encode(), key=b"k")
    finally:
        await producer.stop()


exporter = InMemorySpanExporter()
telemetry = setup_telemetry(service="spans", version="0", span_exporter=exporter)
asyncio.run(main())
telemetry.tracer_provider.force_flush()
print(json.dumps([
    {
        "name": span.name,
        "kind": span.kind.name,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "status": [span.status.status_code.name, span.status.description],
    }
    for span in exporter.get_finished_spans()
]))
"""


def _exported(*args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    spans: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return spans


async def test_client_spans_come_from_the_instrumentations_without_values(
    postgres_dsn: str,
    mongo_uri: str,
    mongo_db_name: str,
    redis_url: str,
    kafka_bootstrap: str,
    kafka_topics: Any,
) -> None:
    topic = await kafka_topics.create("spans")
    spans = _exported(
        postgres_dsn, mongo_uri, mongo_db_name, redis_url, kafka_bootstrap, topic, SECRET
    )

    def client(system: str) -> list[dict[str, Any]]:
        return [
            s
            for s in spans
            if s["kind"] == "CLIENT" and s["attributes"].get("db.system.name") == system
        ]

    postgres = client("postgresql")
    assert [s["attributes"]["db.query.text"] for s in postgres] == [
        "SELECT $1::text",
        "SELECT $1::uuid",
    ]
    ok, failed = postgres
    assert ok["status"][0] == "UNSET"
    assert failed["status"][0] == "ERROR"
    assert failed["attributes"]["error.type"]
    mongo = client("mongodb")
    assert {s["attributes"].get("db.collection.name") for s in mongo} >= {"things"}
    assert client("redis")
    (send,) = [s for s in spans if s["kind"] == "PRODUCER"]
    assert send["attributes"]["messaging.system"] == "kafka"
    assert send["attributes"]["messaging.destination.name"] == topic
    # No value, no error message: not in an attribute, an event or a status.
    assert SECRET not in json.dumps(spans)
    assert "hunter2" not in json.dumps(spans)
