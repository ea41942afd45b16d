"""The events the auth service publishes (UserRegistered, UserRolesChanged, UserDisabled).

Events are written with :meth:`mercato_auth.store.outbox.Outbox.add` in the transaction of the
change they announce; the outbox relay (``mercato_common.outbox.RelayRunner``, wired in
``app.py``) publishes them to ``mercato.auth.events.v1``
(key = the user id). They carry no email, password or token.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from mercato.auth.events.v1 import events_pb2
from mercato_auth.convert import roles_to_proto, timestamp
from mercato_auth.domain.scopes import Role
from mercato_auth.domain.users import User
from mercato_common.kafka import Envelope, new_envelope

__all__ = [
    "SOURCE",
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
