"""GraphQL over WebSocket on ``/graphql``: the ``graphql-transport-ws`` protocol (the GraphQL over
WebSocket protocol of the ``graphql-ws`` library), for subscriptions; a query or mutation sent
this way is answered with one ``next`` and ``complete``.

A connection is admitted as an HTTP request is, once: the token of ``connection_init``'s payload
(``{"Authorization": "Bearer ..."}``; else the upgrade request's ``Authorization`` header)
verified and one ``default`` rate-limit decision. Then:

- at most ``max_per_user`` connections per user (per client address without a token) in this
  process (close 4429) and ``max_subscriptions`` operations at a time per connection (an
  ``error`` message); every ``subscribe`` is one more rate-limit decision and meets the same
  document limits as over HTTP;
- no ``connection_init`` within ``init_timeout`` seconds: close 4408; a bad token or a refused
  rate limit: 4403 / 4429; an unknown or malformed message: 4400; a duplicate operation id:
  4409; a second ``connection_init``: 4429 (as the protocol says);
- a connection without a running operation and without a message for ``idle_timeout``
  seconds is closed (1000, "idle timeout"); a connection whose access token expires is closed
  (4403, "token expired"): the client reconnects with a fresh token; its token is verified
  again every ``token_check_interval`` seconds, so a token revoked (logout, a disabled user)
  closes it too (4403, "token revoked"; a verification that cannot be made now keeps it);
- when the gateway stops, every connection is closed with 1012 (service restart) so clients
  reconnect to another replica.

Each connection ends with one access line (logger ``mercato.access``, message ``websocket``):
its request id, route, close code and reason, duration, client address, subject, user agent
and the number of operations it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from starlette.websockets import WebSocket, WebSocketState

from mercato_gateway.edge import (
    REQUEST_ID_KEY,
    ROUTE_KEY,
    SUBJECT_KEY,
    client_address,
    header_map,
)
from mercato_gateway.errors import ApiError
from mercato_gateway.proxy import Caller, Gate

__all__ = ["PROTOCOL", "GraphSocket", "Operation", "SocketLimits"]

PROTOCOL = "graphql-transport-ws"
_log = logging.getLogger("mercato_gateway.graphql")
_access_log = logging.getLogger("mercato.access")


@dataclass(frozen=True, slots=True)
class SocketLimits:
    max_per_user: int
    max_subscriptions: int
    init_timeout: float
    idle_timeout: float
    token_check_interval: float


class _Closed(Exception):
    """Close the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Operation:
    """A started operation: its result bodies, and what releases what it holds (its watches),
    called however it ends, even when it never ran."""

    results: AsyncIterator[dict[str, Any]]
    close: Callable[[], None]


#: (a subscribe message's payload, the caller) -> the GraphQL errors that refused it, or the
#: started operation; it spends the operation's rate-limit decision.
Start = Callable[[Any, Caller], Awaitable[list[dict[str, Any]] | Operation]]


class GraphSocket:
    """The WebSocket side of ``/graphql``; ``start`` prepares and runs one operation (the
    endpoint's parsing, validation, limits and execution)."""

    def __init__(
        self,
        gate: Gate,
        start: Start,
        limits: SocketLimits,
        *,
        rate_class: str,
        registry: CollectorRegistry,
    ) -> None:
        self._gate = gate
        self._start = start
        self._limits = limits
        self._rate_class = rate_class  # of the connection's admission
        self._per_user: dict[str, int] = {}
        self._open: set[WebSocket] = set()
        self._connections = Gauge(
            "gateway_graphql_ws_connections",
            "Open GraphQL WebSocket connections in this process.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._operations = Gauge(
            "gateway_graphql_ws_operations",
            "Running GraphQL operations (subscriptions) over WebSocket in this process.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    async def close_all(self) -> None:
        """Close every connection: the process is stopping (1012, service restart)."""
        for socket in list(self._open):
            with contextlib.suppress(Exception):
                await socket.close(1012, "service restart")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope[ROUTE_KEY] = "/graphql"
        scope.setdefault(REQUEST_ID_KEY, os.urandom(16).hex())
        socket = WebSocket(scope, receive, send)
        if PROTOCOL not in scope.get("subprotocols", ()):
            await socket.close(1002, f"subprotocol {PROTOCOL} required")  # refused: HTTP 403
            return
        await socket.accept(subprotocol=PROTOCOL)
        self._open.add(socket)
        self._connections.inc()
        started = time.perf_counter()
        user: str | None = None
        closed = _Closed(1000, "closed")
        connection: _Connection | None = None
        try:
            caller = await self._init(socket, scope)
            user = caller.key
            if self._per_user.get(user, 0) >= self._limits.max_per_user:
                user = None
                raise _Closed(4429, "too many connections")
            self._per_user[user] = self._per_user.get(user, 0) + 1
            await _send(socket, {"type": "connection_ack"})
            connection = _Connection(self, socket, caller)
            await connection.serve()
        except _Closed as refused:
            closed = refused
            if socket.client_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await socket.close(closed.code, closed.reason)
        finally:
            self._open.discard(socket)
            self._connections.dec()
            if user is not None:
                self._per_user[user] -= 1
                if not self._per_user[user]:
                    del self._per_user[user]
            _access_log.info(
                "websocket",
                extra={
                    "http_route": "/graphql",
                    "websocket_close_code": closed.code,
                    "websocket_close_reason": closed.reason,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "request_id": scope[REQUEST_ID_KEY],
                    "client_address": client_address(scope),
                    "subject": scope.get(SUBJECT_KEY),
                    "user_agent": header_map(scope).get("user-agent"),
                    "graphql_operations": connection.operations if connection else 0,
                },
            )

    async def _init(self, socket: WebSocket, scope: Any) -> Caller:
        try:
            message = await asyncio.wait_for(_receive(socket), self._limits.init_timeout)
        except TimeoutError:
            raise _Closed(4408, "connection initialisation timeout") from None
        if message.get("type") == "subscribe":
            raise _Closed(4401, "unauthorized")
        if message.get("type") != "connection_init":
            raise _Closed(4400, "connection_init expected")
        payload = message.get("payload") or {}
        if not isinstance(payload, dict):
            raise _Closed(4400, "connection_init payload must be an object")
        headers = dict(header_map(scope))
        token = payload.get("Authorization", payload.get("authorization"))
        if token is not None:
            headers["authorization"] = str(token)
        try:
            return await self._gate.admit(
                scope,
                headers,
                self._gate.client(scope, headers),
                rate_class=self._rate_class,
                rate_headers={},
            )
        except ApiError as error:
            raise _Closed(4429 if error.http_status == 429 else 4403, error.message) from None


class _Connection:
    """One acknowledged connection: its messages and running operations."""

    def __init__(self, owner: GraphSocket, socket: WebSocket, caller: Caller) -> None:
        self._owner = owner
        self._socket = socket
        self._caller = caller
        self._running: dict[str, tuple[asyncio.Task[None], Operation]] = {}
        self._sending = asyncio.Lock()
        #: Operations started on this connection (for its access line).
        self.operations = 0

    async def serve(self) -> None:
        limits = self._owner._limits
        identity = self._caller.identity
        expires = identity.expires_at if identity else None
        next_check = time.monotonic() + limits.token_check_interval if identity else None
        last_message = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                waits = [] if self._running else [last_message + limits.idle_timeout - now]
                if expires is not None:
                    waits.append(expires - time.time())
                if next_check is not None:
                    waits.append(next_check - now)
                try:
                    message = await asyncio.wait_for(
                        _receive(self._socket), max(min(waits), 0.0) if waits else None
                    )
                except TimeoutError:
                    if expires is not None and time.time() >= expires:
                        raise _Closed(4403, "token expired") from None
                    if next_check is not None and time.monotonic() >= next_check:
                        await self._check_token()
                        next_check = time.monotonic() + limits.token_check_interval
                    if not self._running and time.monotonic() - last_message >= limits.idle_timeout:
                        raise _Closed(1000, "idle timeout") from None
                    continue
                last_message = time.monotonic()
                await self._handle(message)
        finally:
            running = list(self._running.values())
            for task, operation in running:
                task.cancel()
                operation.close()  # a task cancelled before it ran never reaches its finally
            for task, _ in running:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _check_token(self) -> None:
        """Close the connection when its token is no longer accepted (revoked)."""
        try:
            await self._owner._gate.authenticator.verify(self._caller.token or "")
        except ApiError as error:
            if error.http_status == 401:
                reason = "token revoked" if error.reason == "TOKEN_REVOKED" else error.message
                raise _Closed(4403, reason) from None
            # 503: the verification cannot be made right now; the next check tries again.

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "connection_init":
            raise _Closed(4429, "too many initialisation requests")
        elif kind == "subscribe":
            await self._subscribe(message)
        elif kind == "complete":
            running = self._running.get(str(message.get("id")))
            if running is not None:
                running[0].cancel()
        else:
            raise _Closed(4400, f"unknown message type {kind!r}")

    async def _subscribe(self, message: dict[str, Any]) -> None:
        operation_id = message.get("id")
        if not isinstance(operation_id, str) or not operation_id:
            raise _Closed(4400, "subscribe needs an id")
        if operation_id in self._running:
            raise _Closed(4409, f"subscriber for {operation_id} already exists")
        most = self._owner._limits.max_subscriptions
        if len(self._running) >= most:
            refusal = {
                "message": f"at most {most} operations at a time per connection",
                "extensions": {
                    "code": "GRAPHQL_SUBSCRIPTION_LIMIT",
                    "status": "RESOURCE_EXHAUSTED",
                },
            }
            await self.send({"type": "error", "id": operation_id, "payload": [refusal]})
            return
        started = await self._owner._start(message.get("payload"), self._caller)
        if not isinstance(started, Operation):
            await self.send({"type": "error", "id": operation_id, "payload": started})
            return
        task = asyncio.create_task(self._run(operation_id, started), name="graphql-ws-operation")
        self._running[operation_id] = (task, started)
        self.operations += 1

    async def _run(self, operation_id: str, operation: Operation) -> None:
        self._owner._operations.inc()
        try:
            async for body in operation.results:
                await self.send({"type": "next", "id": operation_id, "payload": body})
            await self.send({"type": "complete", "id": operation_id})
        except asyncio.CancelledError:
            pass  # the client completed it, or the connection is gone
        except Exception:
            _log.exception("graphql subscription failed")
            with contextlib.suppress(Exception):
                await self.send(
                    {
                        "type": "error",
                        "id": operation_id,
                        "payload": [
                            {"message": "internal error", "extensions": {"code": "INTERNAL"}}
                        ],
                    }
                )
        finally:
            self._owner._operations.dec()
            self._running.pop(operation_id, None)
            operation.close()
            close = getattr(operation.results, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._sending:
            await _send(self._socket, message)


async def _receive(socket: WebSocket) -> dict[str, Any]:
    message = await socket.receive()
    if message["type"] == "websocket.disconnect":
        raise _Closed(1000, "disconnected")
    text = message.get("text")
    if text is None:
        raise _Closed(4400, "messages are JSON text frames")
    try:
        decoded = json.loads(text)
    except ValueError:
        raise _Closed(4400, "a message is not JSON") from None
    if not isinstance(decoded, dict):
        raise _Closed(4400, "a message is a JSON object")
    return decoded


async def _send(socket: WebSocket, message: dict[str, Any]) -> None:
    await socket.send_text(json.dumps(message, ensure_ascii=False, separators=(",", ":")))
