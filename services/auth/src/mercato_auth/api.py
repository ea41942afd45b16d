"""The gRPC servicer of ``mercato.auth.v1.AuthService``: messages in, domain calls, messages out.

Request shapes are checked by protovalidate and access by the ``(mercato.api.v1.access)`` option
(both in the ``libs/common`` interceptors) before a handler runs; domain errors become statuses
in the error interceptor (throttling's ``google.rpc.RetryInfo`` included: ``LoginThrottled``
carries ``retry_after``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mercato.auth.v1 import auth_pb2, auth_pb2_grpc
from mercato_auth.convert import role_from_proto, state_from_proto, timestamp, user_to_proto
from mercato_auth.domain.errors import InvalidRoles
from mercato_auth.domain.scopes import Role
from mercato_auth.domain.tokens import TOKEN_TYPE, TokenGrant
from mercato_auth.domain.users import UserFilter
from mercato_auth.service import AuthService
from mercato_common.grpc_types import ServicerContext as Context
from mercato_common.identity import require_identity

__all__ = ["SERVICE_NAME", "AuthServicer", "client_address"]

SERVICE_NAME = "mercato.auth.v1.AuthService"


def client_address(context: Context, *, trust_forwarded_for: bool) -> str:
    """The caller's address: the last ``x-forwarded-for`` hop (set by the gateway), else the peer.

    The last entry is the one the gateway itself saw; earlier ones are whatever the client sent.
    """
    if trust_forwarded_for:
        for key, value in context.invocation_metadata() or ():
            if key == "x-forwarded-for" and isinstance(value, str):
                hops = [hop.strip() for hop in value.split(",") if hop.strip()]
                if hops:
                    return hops[-1][:100]
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer[:100]


def _token_response(grant: TokenGrant) -> dict[str, Any]:
    return {
        "access_token": grant.access_token,
        "token_type": TOKEN_TYPE,
        "expires_in": grant.expires_in,
        "refresh_token": grant.refresh_token,
        "scope": grant.scope,
    }


def _roles(values: Any) -> list[Role]:
    roles = [role_from_proto(value) for value in values]
    known = [role for role in roles if role is not None]
    if len(known) != len(roles):
        raise InvalidRoles("ROLE_UNSPECIFIED is not a role")
    return known


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, service: AuthService, *, trust_forwarded_for: bool = True) -> None:
        self._service = service
        self._trust_forwarded_for = trust_forwarded_for

    def _address(self, context: Context) -> str:
        return client_address(context, trust_forwarded_for=self._trust_forwarded_for)

    # Accounts -------------------------------------------------------------------------------

    async def RegisterUser(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.RegisterUserRequest, context: Context
    ) -> auth_pb2.RegisterUserResponse:
        user = await self._service.register(request.email, request.display_name, request.password)
        return auth_pb2.RegisterUserResponse(user=user_to_proto(user))

    async def GetCurrentUser(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.GetCurrentUserRequest, context: Context
    ) -> auth_pb2.GetCurrentUserResponse:
        user = await self._service.current_user(require_identity())
        return auth_pb2.GetCurrentUserResponse(user=user_to_proto(user))

    async def GetUser(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.GetUserRequest, context: Context
    ) -> auth_pb2.GetUserResponse:
        user = await self._service.get_user(request.id)
        return auth_pb2.GetUserResponse(user=user_to_proto(user))

    async def ListUsers(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.ListUsersRequest, context: Context
    ) -> auth_pb2.ListUsersResponse:
        filters = UserFilter(
            role=role_from_proto(request.role), state=state_from_proto(request.state)
        )
        users, next_token = await self._service.list_users(
            filters, size=request.page_size, page_token=request.page_token
        )
        return auth_pb2.ListUsersResponse(
            users=[user_to_proto(user) for user in users], next_page_token=next_token
        )

    async def UpdateUser(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.UpdateUserRequest, context: Context
    ) -> auth_pb2.UpdateUserResponse:
        paths = set(request.update_mask.paths)
        user = await self._service.update_user(
            request.user.id,
            display_name=request.user.display_name if "display_name" in paths else None,
            roles=_roles(request.user.roles) if "roles" in paths else None,
            actor_id=require_identity().subject,
        )
        return auth_pb2.UpdateUserResponse(user=user_to_proto(user))

    async def DisableUser(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.DisableUserRequest, context: Context
    ) -> auth_pb2.DisableUserResponse:
        user = await self._service.disable_user(
            request.id, reason=request.reason, actor_id=require_identity().subject
        )
        return auth_pb2.DisableUserResponse(user=user_to_proto(user))

    # Tokens ---------------------------------------------------------------------------------

    async def Login(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.LoginRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        grant = await self._service.login(
            request.email, request.password, request.scope, self._address(context)
        )
        return auth_pb2.LoginResponse(**_token_response(grant))

    async def IssueToken(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.IssueTokenRequest, context: Context
    ) -> auth_pb2.IssueTokenResponse:
        grant = await self._service.issue_token(
            grant_type=request.grant_type,
            refresh_token=request.refresh_token,
            client_id=request.client_id,
            client_secret=request.client_secret,
            scope=request.scope,
            address=self._address(context),
        )
        return auth_pb2.IssueTokenResponse(**_token_response(grant))

    async def RevokeToken(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.RevokeTokenRequest, context: Context
    ) -> auth_pb2.RevokeTokenResponse:
        await self._service.revoke(
            token=request.token,
            token_type_hint=request.token_type_hint,
            client_id=request.client_id,
            client_secret=request.client_secret,
            address=self._address(context),
        )
        return auth_pb2.RevokeTokenResponse()

    # Keys and discovery ---------------------------------------------------------------------

    async def GetJwks(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.GetJwksRequest, context: Context
    ) -> auth_pb2.GetJwksResponse:
        fields = ("kty", "use", "kid", "alg", "crv", "x", "y")
        keys = [
            auth_pb2.JsonWebKey(**{name: jwk[name] for name in fields if name in jwk})
            for jwk in await self._service.jwks()
        ]
        return auth_pb2.GetJwksResponse(keys=keys)

    async def GetOpenIdConfiguration(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.GetOpenIdConfigurationRequest, context: Context
    ) -> auth_pb2.GetOpenIdConfigurationResponse:
        # OpenIdConfiguration has the response's fields, by name.
        config = asdict(self._service.openid_configuration())
        return auth_pb2.GetOpenIdConfigurationResponse(**config)

    async def RotateSigningKey(  # noqa: N802 (gRPC method names)
        self, request: auth_pb2.RotateSigningKeyRequest, context: Context
    ) -> auth_pb2.RotateSigningKeyResponse:
        result = await self._service.rotate_signing_key()
        return auth_pb2.RotateSigningKeyResponse(
            kid=result.kid,
            alg=result.alg,
            previous_kid=result.previous_kid,
            activate_time=timestamp(result.activate_time),
        )
