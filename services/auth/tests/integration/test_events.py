"""Events go through the PostgreSQL outbox and the relay to the Kafka topic."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from google.protobuf.field_mask_pb2 import FieldMask

from mercato.auth.events.v1 import events_pb2
from mercato.auth.v1 import auth_pb2
from mercato_common.kafka import decode_envelope, headers_to_map, unpack_data
from mercato_devstack.testing import unsent_outbox_rows

pytestmark = pytest.mark.integration


async def consume(bootstrap: str, topic: str, count: int) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records = []
    try:
        async with asyncio.timeout(30):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for partition_records in batch.values():
                    records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


async def test_events_reach_the_topic(make_settings, start_auth, kafka_topics, kafka_bootstrap):
    topic = await kafka_topics.create("mercato.auth.events.v1", partitions=3)
    settings = make_settings(
        events_topic=topic, outbox_relay_enabled=True, outbox_poll_interval_seconds=0.2
    )
    async with start_auth(settings) as auth:
        admin = await auth.admin_token()
        user = await auth.register("ann@example.com")
        await auth.stub.UpdateUser(
            auth_pb2.UpdateUserRequest(
                user=auth_pb2.User(id=user.id, roles=[auth_pb2.ROLE_ADMIN]),
                update_mask=FieldMask(paths=["roles"]),
            ),
            metadata=auth.bearer(admin),
        )
        await auth.stub.DisableUser(
            auth_pb2.DisableUserRequest(id=user.id, reason="left the company"),
            metadata=auth.bearer(admin),
        )
        records = await consume(kafka_bootstrap, topic, 4)
        me = await auth.stub.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=auth.bearer(admin)
        )
        # Marked sent once Kafka acknowledged them.
        assert await unsent_outbox_rows(auth.fetch) == []

    envelopes = [decode_envelope(record.value) for record in records]
    ours = [e for e in envelopes if e.subject == user.id]
    assert [e.type for e in ours] == [
        "mercato.auth.events.v1.UserRegistered",
        "mercato.auth.events.v1.UserRolesChanged",
        "mercato.auth.events.v1.UserDisabled",
    ]
    for record, envelope in zip(records, envelopes, strict=True):
        assert record.key.decode() == envelope.subject  # keyed by user id
        assert envelope.source == "auth"
        assert headers_to_map(record.headers)["ce_id"] == envelope.id
        assert b"ann@example.com" not in record.value  # no email in events
    registered = unpack_data(ours[0], events_pb2.UserRegistered)
    assert list(registered.roles) == [auth_pb2.ROLE_CUSTOMER]
    changed = unpack_data(ours[1], events_pb2.UserRolesChanged)
    assert list(changed.old_roles) == [auth_pb2.ROLE_CUSTOMER]
    assert list(changed.new_roles) == [auth_pb2.ROLE_ADMIN]
    assert changed.actor_id == me.user.id
    disabled = unpack_data(ours[2], events_pb2.UserDisabled)
    assert (disabled.actor_id, disabled.reason) == (me.user.id, "left the company")
    bootstrap = [e for e in envelopes if e.subject == me.user.id]
    assert [e.type.rsplit(".", 1)[-1] for e in bootstrap] == ["UserRegistered"]
