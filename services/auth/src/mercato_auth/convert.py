"""Domain objects to and from the contract's messages (shared by the API and the events)."""

from __future__ import annotations

from collections.abc import Iterable

from mercato.auth.v1 import auth_pb2
from mercato_auth.domain.scopes import Role
from mercato_auth.domain.users import User, UserState
from mercato_common.timestamps import timestamp

__all__ = [
    "role_from_proto",
    "roles_to_proto",
    "state_from_proto",
    "state_to_proto",
    "timestamp",
    "user_to_proto",
]

_ROLES: dict[Role, auth_pb2.Role.ValueType] = {
    Role.CUSTOMER: auth_pb2.ROLE_CUSTOMER,
    Role.ADMIN: auth_pb2.ROLE_ADMIN,
}
_ROLES_BACK = {value: role for role, value in _ROLES.items()}
_STATES: dict[UserState, auth_pb2.UserState.ValueType] = {
    UserState.ACTIVE: auth_pb2.USER_STATE_ACTIVE,
    UserState.DISABLED: auth_pb2.USER_STATE_DISABLED,
}
_STATES_BACK = {value: state for state, value in _STATES.items()}


def roles_to_proto(roles: Iterable[Role]) -> list[auth_pb2.Role.ValueType]:
    return [_ROLES[role] for role in roles]


def role_from_proto(value: auth_pb2.Role.ValueType) -> Role | None:
    """None for ROLE_UNSPECIFIED (protovalidate refuses it where a role is required)."""
    return _ROLES_BACK.get(value)


def state_to_proto(state: UserState) -> auth_pb2.UserState.ValueType:
    return _STATES[state]


def state_from_proto(value: auth_pb2.UserState.ValueType) -> UserState | None:
    return _STATES_BACK.get(value)


def user_to_proto(user: User) -> auth_pb2.User:
    message = auth_pb2.User(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        roles=roles_to_proto(user.roles),
        scopes=user.sorted_scopes,
        state=state_to_proto(user.state),
        create_time=timestamp(user.create_time),
        update_time=timestamp(user.update_time),
    )
    if user.disable_time is not None:
        message.disable_time.CopyFrom(timestamp(user.disable_time))
    return message
