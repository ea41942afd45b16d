"""A new service is cheap: one RPC, a PostgreSQL store with its outbox and one consumer, declared
from the kit alone in this file, run against the real stack; its event is published and
consumed exactly once.

The service is the part from ``CONTRACT`` to ``build`` (under 80 lines); the rest is the test:
it compiles the contract with grpcio-tools, calls the RPC, and counts what reached the topic
and what the consumer applied.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf.wrappers_pb2 import StringValue
from prometheus_client import CollectorRegistry

from mercato_common.kafka import ConsumedEvent, new_envelope, unpack_data
from mercato_common.kit import Service
from mercato_common.outbox import Outbox
from mercato_common.postgres import Database
from mercato_common.runtime import start_all, stop_all
from mercato_common.settings import BaseServiceSettings, OutboxSettings, PostgresSettings
from mercato_devstack.testing import TopicFactory, compile_contract

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# --- the service ------------------------------------------------------------------------------

CONTRACT = """syntax = "proto3";
package mercato.notes.v1;
import "mercato/api/v1/access.proto";
message AddNoteRequest { string text = 1; }
message Note { string id = 1; string text = 2; }
service NotesService {
  rpc AddNote(AddNoteRequest) returns (Note) {
    option (mercato.api.v1.access) = { audience: AUDIENCE_PUBLIC };
  }
}
"""
SCHEMA = """CREATE TABLE notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), text text NOT NULL);
CREATE TABLE noted (event_id uuid PRIMARY KEY, note_id uuid NOT NULL);
"""


class NotesSettings(BaseServiceSettings, PostgresSettings, OutboxSettings):
    env_prefix = "MERCATO_NOTES_"
    service_name: str = "notes"
    consumer_group: str


class NotesServicer:
    """The one RPC: the note and its event in one transaction (the outbox)."""

    def __init__(self, contract: ModuleType, database: Database, topic: str) -> None:
        self._contract, self._database, self._topic = contract, database, topic

    async def AddNote(self, request: Any, context: Any) -> Any:
        async with self._database.transaction() as tx:
            note_id = str(
                await tx.fetchval("INSERT INTO notes (text) VALUES ($1) RETURNING id", request.text)
            )
            event = new_envelope(StringValue(value=request.text), source="notes", subject=note_id)
            await Outbox(tx, self._topic).add(event)
        return self._contract.Note(id=note_id, text=request.text)


class NoteCounter:
    """The one consumer: idempotent (the event id stored with the effect)."""

    def __init__(self, database: Database) -> None:
        self.database, self.calls = database, 0

    async def __call__(self, event: ConsumedEvent) -> None:
        self.calls += 1
        unpack_data(event.envelope, StringValue)
        async with self.database.transaction() as tx:
            await tx.execute(
                "INSERT INTO noted VALUES ($1, $2) ON CONFLICT DO NOTHING",
                event.envelope.id,
                event.envelope.subject,
            )


def build(
    settings: NotesSettings, contract: ModuleType, grpc_module: ModuleType, migrations: Path
) -> tuple[Service, NoteCounter]:
    kit = Service(settings, registry=CollectorRegistry())
    database = kit.postgres(
        settings, package="notes.store", migrations=migrations, outbox_migration=2
    )
    kit.postgres_outbox(database, settings)
    counter = NoteCounter(database)
    kit.consume_events(
        settings, group_id=settings.consumer_group, topics=[settings.events_topic], handler=counter
    )
    kit.serve(
        grpc_module.add_NotesServiceServicer_to_server,
        NotesServicer(contract, database, settings.events_topic),
        "mercato.notes.v1.NotesService",
    )
    return kit, counter


# --- the test ---------------------------------------------------------------------------------


async def messages_in(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        (described,) = await admin.describe_topics([topic])
        parts = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        ends, starts = await consumer.end_offsets(parts), await consumer.beginning_offsets(parts)
        return sum(ends[p] - starts[p] for p in parts)
    finally:
        await consumer.stop()
        await admin.close()


@pytest.fixture(scope="module")
def notes_contract(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    return compile_contract(CONTRACT, "notes", tmp_path_factory.mktemp("notes_contract"))


async def test_a_service_from_the_kit_publishes_and_consumes_exactly_once(
    notes_contract: tuple[ModuleType, ModuleType],
    postgres_dsn: str,
    kafka_bootstrap: str,
    kafka_topics: TopicFactory,
    tmp_path: Path,
) -> None:
    contract, grpc_module = notes_contract
    (tmp_path / "0001_notes.sql").write_text(SCHEMA)
    topic = await kafka_topics.create("mercato.notes.events.v1")
    settings = NotesSettings(
        grpc_port=0,
        database_url=postgres_dsn,
        kafka_bootstrap_servers=kafka_bootstrap,
        events_topic=topic,
        consumer_group=f"{topic}.group",
        outbox_poll_interval_seconds=0.1,
        shutdown_drain_seconds=0,
        shutdown_grace_seconds=1,
    )
    kit, counter = build(settings, contract, grpc_module, tmp_path)
    started = await start_all(kit.parts)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{kit.server.port}") as channel:
            add = channel.unary_unary(
                "/mercato.notes.v1.NotesService/AddNote",
                request_serializer=contract.AddNoteRequest.SerializeToString,
                response_deserializer=contract.Note.FromString,
            )
            notes = [
                await add(contract.AddNoteRequest(text=f"note {i}"), timeout=5) for i in range(3)
            ]
        conn = await asyncpg.connect(postgres_dsn)
        try:
            for _ in range(200):  # bounded: 20 s
                if await conn.fetchval("SELECT count(*) FROM noted") == len(notes):
                    break
                await asyncio.sleep(0.1)
            noted = {str(row["note_id"]) for row in await conn.fetch("SELECT note_id FROM noted")}
            unsent = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        finally:
            await conn.close()
        assert noted == {note.id for note in notes}
        assert unsent == 0
        await asyncio.sleep(1.0)  # time for a duplicate delivery to show
        assert counter.calls == len(notes)
        assert await messages_in(kafka_bootstrap, topic) == len(notes)
    finally:
        await stop_all(started)
