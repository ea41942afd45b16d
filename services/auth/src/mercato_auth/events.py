"""Domain events (UserRegistered, UserRolesChanged, UserDisabled) and the outbox relay part.

Events are written with :meth:`mercato_auth.store.outbox.Outbox.add` in the transaction of the
change they announce; :class:`OutboxRelayPart` publishes them to ``mercato.auth.events.v1``
(key = the user id). They carry no email, password or token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

from mercato.auth.events.v1 import events_pb2
from mercato_auth.convert import roles_to_proto, timestamp
from mercato_auth.domain.scopes import Role
from mercato_auth.domain.users import User
from mercato_common.kafka import Envelope, EventProducer, new_envelope
from mercato_common.outbox import PostgresOutboxRelay

__all__ = [
    "SOURCE",
    "OutboxRelayPart",
    "user_disabled",
    "user_registered",
    "user_roles_changed",
]

SOURCE = "auth"


def user_registered(user: User) -> Envelope:
    payload = events_pb2.UserRegistered(
        user_id=user.id,
        roles=roles_to_proto(user.roles),
        register_time=timestamp(user.create_time),
    )
    return new_envelope(payload, source=SOURCE, subject=user.id, time=user.create_time)


def user_roles_changed(
    user_id: str,
    *,
    old_roles: Sequence[Role],
    new_roles: Sequence[Role],
    actor_id: str,
    when: datetime,
) -> Envelope:
    payload = events_pb2.UserRolesChanged(
        user_id=user_id,
        old_roles=roles_to_proto(old_roles),
        new_roles=roles_to_proto(new_roles),
        actor_id=actor_id,
        change_time=timestamp(when),
    )
    return new_envelope(payload, source=SOURCE, subject=user_id, time=when)


def user_disabled(user_id: str, *, actor_id: str, reason: str, when: datetime) -> Envelope:
    payload = events_pb2.UserDisabled(
        user_id=user_id, actor_id=actor_id, reason=reason, disable_time=timestamp(when)
    )
    return new_envelope(payload, source=SOURCE, subject=user_id, time=when)


class OutboxRelayPart:
    """Runs the PostgreSQL outbox relay in a task; a lifecycle part (stops before the pool).

    ``make_relay`` is called at start, once the database pool exists.
    """

    def __init__(
        self, make_relay: Callable[[], PostgresOutboxRelay], producer: EventProducer
    ) -> None:
        self._make_relay = make_relay
        self.relay: PostgresOutboxRelay | None = None
        self._producer = producer
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # The relay connects (and reconnects) the producer itself, so a broker that is down at
        # start delays the events, not the service.
        self.relay = self._make_relay()
        self._task = asyncio.create_task(self.relay.run(), name="outbox-relay")

    async def stop(self, grace: float = 10.0) -> None:
        task, self._task = self._task, None
        if task is not None and self.relay is not None:
            await self.relay.stop(grace)
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._producer.stop()
