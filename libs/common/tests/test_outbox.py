"""Unit tests of mercato_common.outbox: publishing rules, SQL, update builders, relay loops."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from google.protobuf.struct_pb2 import Struct
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from mercato_common.kafka import Backoff, Envelope, new_envelope
from mercato_common.outbox import (
    MongoOutboxRelay,
    OutboxMessage,
    OutboxRelay,
    PostgresOutboxRelay,
    PublishFailedError,
    enqueue,
    enqueue_many,
    event_headers,
    outbox_ddl,
    outbox_event,
    outbox_fields,
    outbox_index_specs,
    publish_messages,
    settle,
    with_outbox,
)
from mercato_common.outbox._base import NotAttemptedError
from mercato_common.outbox.mongo import F_PENDING, F_WRITE_ID

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)


def envelope(subject: str = "agg-1") -> Envelope:
    payload = Struct()
    payload.update({"x": 1})
    return new_envelope(payload, source="test", subject=subject)


def msg(i: int, key: str | None = "k", topic: str = "t") -> OutboxMessage:
    return OutboxMessage(
        id=str(i), topic=topic, key=key, payload=b"p%d" % i, headers={"ce_id": str(i)}
    )


@dataclass
class FakeProducer:
    """send_traced() outcomes scripted per message id (the ``ce_id`` header): None = ack,
    exception = failure, "hang" = never acknowledged, "send_error" = send() itself raises."""

    script: Mapping[str, Any] = field(default_factory=dict)
    sent: list[tuple[str, bytes, str | None, dict[str, str]]] = field(default_factory=list)
    started: bool = True
    restarts: int = 0
    starts: int = 0
    fail_start: bool = False

    async def send_traced(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | None,
        headers: Mapping[str, str],
        parent: Any = None,
    ) -> asyncio.Future[Any]:
        outcome = self.script.get(headers.get("ce_id", ""))
        if outcome == "send_error":
            raise KafkaTimeoutError()
        self.sent.append((topic, value, key, dict(headers)))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if outcome is None:
            future.set_result("meta")
        elif isinstance(outcome, BaseException):
            future.set_exception(outcome)
        return future

    async def start(self) -> None:
        self.starts += 1
        if self.fail_start:
            raise KafkaConnectionError("no broker")
        self.started = True

    async def restart(self) -> None:
        self.restarts += 1
        self.started = False
        await self.start()


# -- publishing rules -----------------------------------------------------------------------


def test_settle_marks_acknowledged_messages() -> None:
    messages = [msg(1), msg(2, key="other"), msg(3)]
    done, errors = settle(messages, [None, None, None])
    assert done == messages
    assert errors == []


def test_settle_keeps_later_messages_of_a_failed_key_pending() -> None:
    boom = RuntimeError("x")
    messages = [msg(1, "a"), msg(2, "a"), msg(3, "b"), msg(4, "a", topic="u"), msg(5, None)]
    done, errors = settle(messages, [boom, None, None, None, None])
    # 2 shares topic+key with the failed 1; 4 has the same key on another topic.
    assert [m.id for m in done] == ["3", "4", "5"]
    assert errors == [boom]


def test_settle_unkeyed_failures_block_nothing() -> None:
    boom = RuntimeError("x")
    done, _ = settle([msg(1, None), msg(2, None)], [boom, None])
    assert [m.id for m in done] == ["2"]


def test_settle_needs_one_outcome_per_message() -> None:
    with pytest.raises(ValueError, match="one outcome"):
        settle([msg(1)], [])


async def test_publish_messages_reports_each_outcome() -> None:
    failure = KafkaConnectionError("gone")
    producer = FakeProducer(script={"2": failure, "3": "hang"})
    outcomes = await publish_messages(
        producer,  # type: ignore[arg-type]
        [msg(1), msg(2), msg(3)],
        within=0.05,
    )
    assert outcomes[0] is None
    assert outcomes[1] is failure
    assert isinstance(outcomes[2], TimeoutError)


async def test_publish_messages_stops_feeding_after_a_send_error() -> None:
    producer = FakeProducer(script={"2": "send_error"})
    outcomes = await publish_messages(
        producer,  # type: ignore[arg-type]
        [msg(1), msg(2), msg(3)],
        within=1,
    )
    assert outcomes[0] is None
    assert isinstance(outcomes[1], KafkaTimeoutError)
    assert isinstance(outcomes[2], NotAttemptedError)
    assert len(producer.sent) == 1


def test_event_headers_capture_envelope_and_trace_context() -> None:
    env = envelope()
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("req"):
        headers = event_headers(env, {"x": "1", "ce_id": "spoofed"})
    assert headers["ce_id"] == env.id  # envelope attributes win over extras
    assert headers["x"] == "1"
    assert "traceparent" in headers


# -- PostgreSQL: DDL and enqueue ------------------------------------------------------------


def test_outbox_ddl_has_the_table_indexes_and_trigger() -> None:
    ddl = outbox_ddl()
    for fragment in (
        "CREATE TABLE IF NOT EXISTS outbox",
        "seq         bigint GENERATED ALWAYS AS IDENTITY",
        "id          uuid PRIMARY KEY",
        "payload     bytea NOT NULL",
        "headers     jsonb NOT NULL",
        "sent_at     timestamptz",
        "outbox_unsent_idx ON outbox (seq) WHERE sent_at IS NULL",
        "pg_notify('outbox', '')",
        "CREATE OR REPLACE TRIGGER outbox_notify",
    ):
        assert fragment in ddl
    assert "events.outbox_notify()" in outbox_ddl("events.outbox")


@pytest.mark.parametrize("table", ["Outbox", "outbox; drop table x", "a.b.c", "", "1x"])
def test_outbox_ddl_refuses_odd_identifiers(table: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        outbox_ddl(table)


class FakeConn:
    def __init__(self, in_tx: bool = True) -> None:
        self.in_tx = in_tx
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.many: list[tuple[str, list[Any]]] = []

    def is_in_transaction(self) -> bool:
        return self.in_tx

    async def execute(self, query: str, *args: Any) -> str:
        self.calls.append((query, args))
        return "INSERT 0 1"

    async def executemany(self, command: str, args: Any) -> None:
        self.many.append((command, list(args)))


async def test_enqueue_writes_one_row_in_the_callers_transaction() -> None:
    conn = FakeConn()
    env = envelope("order-3")
    event_id = await enqueue(conn, env, "orders", headers={"x": "y"})
    assert event_id == uuid.UUID(env.id)
    ((query, args),) = conn.calls
    assert query.startswith("INSERT INTO outbox (id, topic, key, type, payload, headers)")
    assert args[:5] == (
        uuid.UUID(env.id),
        "orders",
        "order-3",
        env.type,
        env.SerializeToString(),
    )
    stored = json.loads(args[5])
    assert stored["ce_id"] == env.id
    assert stored["x"] == "y"


async def test_enqueue_refuses_to_run_outside_a_transaction() -> None:
    with pytest.raises(RuntimeError, match="transaction"):
        await enqueue(FakeConn(in_tx=False), envelope(), "orders")


async def test_enqueue_many_keeps_order_in_one_round_trip() -> None:
    conn = FakeConn()
    envs = [envelope(f"a{i}") for i in range(3)]
    ids = await enqueue_many(conn, [(e, "t") for e in envs], table="s.box")
    assert ids == [uuid.UUID(e.id) for e in envs]
    ((command, rows),) = conn.many
    assert command.startswith("INSERT INTO s.box ")
    assert [row[2] for row in rows] == ["a0", "a1", "a2"]
    assert await enqueue_many(conn, []) == []


async def test_enqueue_rejects_empty_topic() -> None:
    with pytest.raises(ValueError, match="topic"):
        await enqueue(FakeConn(), envelope(), "")


# -- PostgreSQL relay, with a scripted pool --------------------------------------------------


class FakeRelayConn:
    def __init__(self, rows: list[dict[str, Any]], lock: bool = True) -> None:
        self.rows = rows
        self.lock = lock
        self.executed: list[tuple[str, tuple[Any, ...]]] = []
        self.committed = False

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        assert "FOR UPDATE SKIP LOCKED" in query
        assert "ORDER BY seq" in query
        if "pg_try_advisory_xact_lock($2)" in query and not self.lock:
            return []  # another replica has the turn: the lock gates the scan off
        return self.rows[: args[0]]

    async def execute(self, query: str, *args: Any) -> str:
        self.executed.append((query, args))
        return "UPDATE 1"

    @asynccontextmanager
    async def transaction(self) -> Any:
        yield
        self.committed = True


class FakePool:
    def __init__(self, conn: FakeRelayConn) -> None:
        self.conn = conn

    @asynccontextmanager
    async def acquire(self) -> Any:
        yield self.conn


def rows(n: int, key: str = "k") -> list[dict[str, Any]]:
    return [
        {
            "id": uuid.UUID(int=i + 1),
            "topic": "orders",
            "key": key,
            "payload": b"v%d" % i,
            "headers": json.dumps({"ce_id": str(uuid.UUID(int=i + 1))}),
        }
        for i in range(n)
    ]


def pg_relay(conn: FakeRelayConn, producer: FakeProducer, **kwargs: Any) -> PostgresOutboxRelay:
    kwargs.setdefault("registry", CollectorRegistry())
    return PostgresOutboxRelay(
        FakePool(conn),
        producer,  # type: ignore[arg-type]
        listen=False,
        **kwargs,
    )


async def test_pg_relay_marks_published_rows_sent() -> None:
    conn = FakeRelayConn(rows(3))
    producer = FakeProducer()
    registry = CollectorRegistry()
    relay = pg_relay(conn, producer, batch_size=10, registry=registry)
    assert await relay.run_once() == 3
    ((query, args),) = conn.executed
    assert query.startswith("UPDATE outbox SET sent_at")
    assert args == ([uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)],)
    assert [s[1] for s in producer.sent] == [b"v0", b"v1", b"v2"]
    assert producer.sent[0][2] == "k"
    labels = {"outbox": "outbox", "topic": "orders"}
    assert registry.get_sample_value("mercato_outbox_published_total", labels) == 3


async def test_pg_relay_marks_the_acknowledged_part_then_raises() -> None:
    conn = FakeRelayConn(rows(3))
    conn.rows[2]["key"] = "other"
    producer = FakeProducer(script={str(uuid.UUID(int=1)): KafkaConnectionError("x")})
    relay = pg_relay(conn, producer)
    with pytest.raises(PublishFailedError) as info:
        await relay.run_once()
    assert info.value.failed == 1
    # Row 2 shares the failed row's key and stays pending; row 3 (another key) is marked.
    ((_, args),) = conn.executed
    assert args == ([uuid.UUID(int=3)],)
    assert conn.committed


async def test_pg_relay_standby_does_nothing_without_the_lock() -> None:
    conn = FakeRelayConn(rows(2), lock=False)
    producer = FakeProducer()
    assert await pg_relay(conn, producer).run_once() == 0
    assert producer.sent == []


async def test_pg_relay_empty_outbox() -> None:
    conn = FakeRelayConn([])
    assert await pg_relay(conn, FakeProducer(), exclusive=False).run_once() == 0
    assert conn.executed == []


# -- the relay loop --------------------------------------------------------------------------


class ScriptedRelay(OutboxRelay):
    def __init__(self, producer: FakeProducer, script: list[Any], **kwargs: Any) -> None:
        super().__init__(
            producer,  # type: ignore[arg-type]
            name="scripted",
            batch_size=10,
            poll_interval=0.01,
            publish_timeout=1.0,
            backoff=Backoff(initial=0.001, maximum=0.001, jitter=0),
            housekeeping_interval=0.0,
            registry=CollectorRegistry(),
            **kwargs,
        )
        self.script = script
        self.cycles = 0
        self.housekeeping_runs = 0
        self.finished = asyncio.Event()

    async def run_once(self) -> int:
        self.cycles += 1
        if not self.script:
            self.finished.set()
            return 0
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return int(step)

    async def refresh_metrics(self) -> None:
        self.housekeeping_runs += 1


async def test_relay_loop_retries_and_restarts_the_producer_on_kafka_errors() -> None:
    producer = FakeProducer()
    relay = ScriptedRelay(
        producer,
        [
            PublishFailedError(1, 1, None),
            KafkaConnectionError("x"),
            RuntimeError("db down"),
            10,
            3,
        ],
    )
    task = asyncio.create_task(relay.run())
    await asyncio.wait_for(relay.finished.wait(), 5)
    await relay.stop(grace=5)
    await asyncio.wait_for(task, 5)
    # Two Kafka-side failures restart the producer; a database error does not.
    assert producer.restarts == 2
    assert relay.consecutive_failures == 0
    assert relay.housekeeping_runs >= 2


async def test_relay_loop_keeps_the_gauges_fresh_while_every_batch_fails() -> None:
    producer = FakeProducer()
    relay = ScriptedRelay(producer, [KafkaConnectionError("broker down")] * 20)
    task = asyncio.create_task(relay.run())
    await asyncio.wait_for(relay.finished.wait(), 5)
    await relay.stop(grace=5)
    await asyncio.wait_for(task, 5)
    # 20 failed batches, then one empty one: the gauges were refreshed during the outage.
    assert relay.housekeeping_runs >= 20


async def test_relay_loop_starts_a_stopped_producer_and_keeps_trying() -> None:
    producer = FakeProducer(started=False, fail_start=True)
    relay = ScriptedRelay(producer, [])
    task = asyncio.create_task(relay.run())
    for _ in range(500):
        if producer.starts >= 3:
            break
        await asyncio.sleep(0.01)
    assert relay.cycles == 0  # nothing published without a producer
    producer.fail_start = False
    await asyncio.wait_for(relay.finished.wait(), 5)
    await relay.stop(grace=5)
    await asyncio.wait_for(task, 5)
    assert producer.started


async def test_relay_wake_skips_the_poll_wait() -> None:
    producer = FakeProducer()
    relay = ScriptedRelay(producer, [])
    relay._poll_interval = 3600
    task = asyncio.create_task(relay.run())
    await asyncio.wait_for(relay.finished.wait(), 5)
    before = relay.cycles
    relay.wake()
    for _ in range(200):
        if relay.cycles > before:
            break
        await asyncio.sleep(0.01)
    assert relay.cycles > before
    await relay.stop(grace=5)
    await asyncio.wait_for(task, 5)


# -- MongoDB: update builders --------------------------------------------------------------------


def test_with_outbox_merges_with_the_callers_operators() -> None:
    env = envelope("sku-1")
    original = {"$inc": {"stock": -2}, "$set": {"updated_at": NOW}}
    update = with_outbox(original, [(env, "catalog")], now=NOW)
    assert original == {"$inc": {"stock": -2}, "$set": {"updated_at": NOW}}  # untouched
    assert update["$inc"] == {"stock": -2}
    assert update["$set"]["updated_at"] == NOW
    assert update["$set"][F_PENDING] is True
    write_id = update["$set"][F_WRITE_ID]
    assert len(write_id) == 32
    assert update["$min"] == {"outbox_pending_since": NOW}
    (element,) = update["$push"]["outbox"]["$each"]
    assert element["id"] == env.id
    assert element["topic"] == "catalog"
    assert element["key"] == "sku-1"
    assert element["payload"] == env.SerializeToString()
    assert element["headers"]["ce_id"] == env.id
    assert element["created_at"] == NOW
    # Every write gets its own id: the relay's "nothing changed since I read it" check.
    assert with_outbox(original, [(env, "catalog")])["$set"][F_WRITE_ID] != write_id


@pytest.mark.parametrize(
    "update",
    [
        {"$set": {"outbox_pending": False}},
        {"$push": {"outbox": 1}},
        {"$unset": {"outbox_write_id.x": ""}},
        {"stock": 1},
    ],
)
def test_with_outbox_refuses_updates_touching_outbox_fields(update: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        with_outbox(update, [(envelope(), "t")])


def test_with_outbox_needs_events() -> None:
    with pytest.raises(ValueError, match="no events"):
        with_outbox({"$set": {"a": 1}}, [])


def test_outbox_fields_for_a_new_document() -> None:
    env = envelope()
    element = outbox_event(env, "t", now=NOW)
    fields = outbox_fields([element], now=NOW)
    assert fields["outbox"] == [element]
    assert fields[F_PENDING] is True
    assert fields["outbox_pending_since"] == NOW
    assert len(fields[F_WRITE_ID]) == 32


def test_outbox_event_times_have_millisecond_precision() -> None:
    created = outbox_event(envelope(), "t")["created_at"]
    assert created.microsecond % 1000 == 0


def test_outbox_event_checks_header_names() -> None:
    with pytest.raises(ValueError, match="header name"):
        outbox_event(envelope(), "t", headers={"a.b": "1"})


def test_outbox_index() -> None:
    (spec,) = outbox_index_specs()
    assert spec.keys == (("outbox_pending", 1), ("outbox_pending_since", 1))


# -- MongoDB relay, with an in-memory collection ------------------------------------------------


@dataclass
class Result:
    matched_count: int
    modified_count: int


def _matches(doc: dict[str, Any], flt: Mapping[str, Any]) -> bool:
    for key, want in flt.items():
        have = doc.get(key)
        if isinstance(want, dict) and "$lte" in want:
            if have is None or have > want["$lte"]:
                return False
        elif isinstance(want, dict) and "$in" in want:
            if have not in want["$in"]:
                return False
        elif have != want:
            return False
    return True


class MemoryCollection:
    """The handful of operations the relay uses, with MongoDB's semantics for them."""

    def __init__(self, name: str, docs: list[dict[str, Any]] | None = None) -> None:
        self.name = name
        self.docs = {doc["_id"]: doc for doc in docs or []}
        self.updates: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.siblings: dict[str, MemoryCollection] = {name: self}
        self.on_read: Any = None
        self.calls: list[str] = []  # the round trips, by method

    @property
    def database(self) -> MemoryCollection:
        return self

    def __getitem__(self, name: str) -> MemoryCollection:
        if name not in self.siblings:
            sibling = MemoryCollection(name)
            sibling.siblings = self.siblings
            self.siblings[name] = sibling
        return self.siblings[name]

    async def _iter(self, docs: list[dict[str, Any]]) -> Any:
        for doc in docs:
            yield doc

    def find(self, flt: dict[str, Any], **kwargs: Any) -> Any:
        self.calls.append("find")
        found = []
        matching = [doc for doc in self.docs.values() if _matches(doc, flt)]
        for doc in matching[: kwargs.get("limit") or None]:
            found.append({**doc, "outbox": list(doc.get("outbox", []))})
            if self.on_read is not None and "projection" not in kwargs:
                self.on_read(doc)  # a whole document read, as the relay's after its lease
        return self._iter(found)

    async def find_one(self, flt: dict[str, Any], **kwargs: Any) -> Any:
        self.calls.append("find_one")
        for doc in self.docs.values():
            if _matches(doc, flt):
                copy = {**doc, "outbox": list(doc.get("outbox", []))}
                if self.on_read is not None:
                    self.on_read(doc)
                return copy
        return None

    async def insert_one(self, doc: dict[str, Any]) -> None:
        self.calls.append("insert_one")
        from pymongo.errors import DuplicateKeyError

        if doc["_id"] in self.docs:
            raise DuplicateKeyError("dup")
        self.docs[doc["_id"]] = dict(doc)

    async def insert_many(self, docs: list[dict[str, Any]], *, ordered: bool = True) -> None:
        self.calls.append("insert_many")
        from pymongo.errors import BulkWriteError

        assert not ordered, "the relay inserts its leases unordered"
        errors = []
        for index, doc in enumerate(docs):
            if doc["_id"] in self.docs:
                errors.append({"index": index, "code": 11000, "errmsg": "duplicate key"})
            else:
                self.docs[doc["_id"]] = dict(doc)
        if errors:
            raise BulkWriteError({"writeErrors": errors})

    async def bulk_write(self, requests: list[Any], *, ordered: bool = True) -> Result:
        self.calls.append("bulk_write")
        matched = 0
        for request in requests:  # pymongo's UpdateOne keeps its filter and update as _filter, _doc
            matched += self._update(request._filter, request._doc).matched_count
        return Result(matched, matched)

    async def update_one(self, flt: dict[str, Any], update: dict[str, Any]) -> Result:
        self.calls.append("update_one")
        return self._update(flt, update)

    def _update(self, flt: dict[str, Any], update: dict[str, Any]) -> Result:
        self.updates.append((flt, update))
        for doc in self.docs.values():
            if _matches(doc, flt):
                doc.update(update.get("$set", {}))
                for name in update.get("$unset", {}):
                    doc.pop(name, None)
                for name, gone in update.get("$pullAll", {}).items():
                    doc[name] = [e for e in doc[name] if e not in gone]
                return Result(1, 1)
        return Result(0, 0)

    async def delete_one(self, flt: dict[str, Any]) -> None:
        self.calls.append("delete_one")
        for key, doc in list(self.docs.items()):
            if _matches(doc, flt):
                del self.docs[key]
                return

    async def delete_many(self, flt: dict[str, Any]) -> None:
        self.calls.append("delete_many")
        for key, doc in list(self.docs.items()):
            if _matches(doc, flt):
                del self.docs[key]


def mongo_doc(doc_id: str, n: int, write_id: str = "w1") -> dict[str, Any]:
    events = [outbox_event(envelope(doc_id), "catalog", now=NOW) for _ in range(n)]
    return {"_id": doc_id, "outbox": events, F_PENDING: True, F_WRITE_ID: write_id}


def mongo_relay(coll: MemoryCollection, producer: FakeProducer, **kwargs: Any) -> MongoOutboxRelay:
    return MongoOutboxRelay(
        coll,  # type: ignore[arg-type]
        producer,  # type: ignore[arg-type]
        registry=CollectorRegistry(),
        publish_timeout=1.0,
        lease=timedelta(seconds=5),
        **kwargs,
    )


async def test_mongo_relay_publishes_and_clears_in_one_write_per_document() -> None:
    coll = MemoryCollection("products", [mongo_doc("a", 2), mongo_doc("b", 1)])
    producer = FakeProducer()
    assert await mongo_relay(coll, producer, relay_id="me").run_once() == 3
    assert len(producer.sent) == 3
    assert [flt for flt, _ in coll.updates] == [
        {"_id": "a", F_WRITE_ID: "w1"},
        {"_id": "b", F_WRITE_ID: "w1"},
    ]
    for doc in coll.docs.values():
        assert doc["outbox"] == []
        assert doc[F_PENDING] is False
    assert coll["products_outbox_leases"].docs == {}  # leases released


async def test_mongo_relay_takes_a_batch_in_five_round_trips() -> None:
    coll = MemoryCollection("products", [mongo_doc(f"d{i}", 1) for i in range(5)])
    leases = coll["products_outbox_leases"]
    assert await mongo_relay(coll, FakeProducer(), relay_id="me").run_once() == 5
    # The candidates, one read of the leased documents, all acknowledgements in one bulk write.
    assert coll.calls == ["find", "find", "bulk_write"]
    assert len(coll.updates) == 5  # one update per document in it
    assert leases.calls == ["insert_many", "delete_many"]  # all leases at once, then released
    assert leases.docs == {}


async def test_mongo_relay_resets_a_pending_marker_left_on_an_empty_outbox() -> None:
    doc = mongo_doc("a", 0)  # pending, but nothing in the array
    coll = MemoryCollection("products", [doc])
    assert await mongo_relay(coll, FakeProducer()).run_once() == 0
    assert coll.docs["a"][F_PENDING] is False  # not claimed again on every cycle


async def test_mongo_relay_pulls_exactly_the_published_events_after_a_concurrent_write() -> None:
    doc = mongo_doc("a", 2)
    published = list(doc["outbox"])
    late = outbox_event(envelope("a"), "catalog", now=NOW)
    coll = MemoryCollection("products", [doc])

    def concurrent_write(stored: dict[str, Any]) -> None:
        # A service write lands between the relay's read and its acknowledgement.
        stored["outbox"].append(late)
        stored[F_WRITE_ID] = "w2"

    coll.on_read = concurrent_write
    assert await mongo_relay(coll, FakeProducer()).run_once() == 2
    (_, clear), (_, pull) = coll.updates
    assert "$set" in clear
    assert pull == {"$pullAll": {"outbox": published}}
    assert coll.docs["a"]["outbox"] == [late]
    assert coll.docs["a"][F_PENDING] is True


async def test_mongo_relay_keeps_failed_events() -> None:
    doc = mongo_doc("a", 2)
    first_id = doc["outbox"][0]["id"]
    coll = MemoryCollection("products", [doc])
    producer = FakeProducer(script={first_id: KafkaConnectionError("x")})
    with pytest.raises(PublishFailedError):
        await mongo_relay(coll, producer).run_once()
    # Both events share the aggregate key: the second stays pending behind the failed first.
    assert coll.updates == []
    assert len(coll.docs["a"]["outbox"]) == 2
    assert coll["products_outbox_leases"].docs == {}


async def test_mongo_relay_skips_documents_leased_by_another_relay() -> None:
    coll = MemoryCollection("products", [mongo_doc("a", 1), mongo_doc("b", 1)])
    leases = coll["products_outbox_leases"]
    now = datetime.now(UTC)
    await leases.insert_one({"_id": "a", "until": now + timedelta(days=1), "owner": "other"})
    await leases.insert_one({"_id": "b", "until": now - timedelta(days=1), "owner": "dead"})
    producer = FakeProducer()
    assert await mongo_relay(coll, producer, relay_id="me").run_once() == 1
    assert coll.docs["a"]["outbox"] != []  # still leased by the other relay
    assert coll.docs["b"]["outbox"] == []  # expired lease taken over
    assert set(leases.docs) == {"a"}


def test_mongo_relay_lease_must_exceed_publish_timeout() -> None:
    with pytest.raises(ValueError, match="lease"):
        MongoOutboxRelay(
            MemoryCollection("p"),  # type: ignore[arg-type]
            FakeProducer(),  # type: ignore[arg-type]
            publish_timeout=30,
            lease=timedelta(seconds=10),
        )
