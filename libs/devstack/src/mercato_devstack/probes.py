"""Readiness checks that speak each component's own protocol.

Each probe returns None when the server answered as it should, else a short reason. Redis and
the MongoDB wire protocol are spoken directly (a few bytes each); PostgreSQL through `psql`;
Kafka through aiokafka's admin client (imported lazily: it is in the workspace, not a
dependency of this package).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="mercato-devstack-probe")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        data += chunk
    return data


# Redis ----------------------------------------------------------------------------------------


def redis_ping(host: str, port: int, timeout: float = 2.0) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        return f"no answer on {host}:{port} ({exc})"
    if reply.startswith(b"+PONG"):
        return None
    return f"unexpected PING reply {reply[:60]!r}"


# MongoDB wire protocol (OP_MSG) ----------------------------------------------------------------

_OP_MSG = 2013


def _bson_ping() -> bytes:
    db = b"admin\x00"
    body = b"\x10ping\x00" + struct.pack("<i", 1) + b"\x02$db\x00" + struct.pack("<i", len(db)) + db
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


_FIXED_SIZES = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}


def _bson_field(doc: bytes, wanted: bytes) -> float | None:
    """The numeric value of a top-level field of a BSON document, if present."""
    pos = 4
    while pos < len(doc) - 1:
        kind = doc[pos]
        end = doc.index(b"\x00", pos + 1)
        name = doc[pos + 1 : end]
        pos = end + 1
        if name == wanted:
            if kind == 0x01:
                return float(struct.unpack_from("<d", doc, pos)[0])
            if kind == 0x10:
                return float(struct.unpack_from("<i", doc, pos)[0])
            if kind == 0x12:
                return float(struct.unpack_from("<q", doc, pos)[0])
            if kind == 0x08:
                return float(doc[pos])
            return None
        if kind in _FIXED_SIZES:
            pos += _FIXED_SIZES[kind]
        elif kind == 0x02:
            pos += 4 + struct.unpack_from("<i", doc, pos)[0]
        elif kind in (0x03, 0x04):
            pos += struct.unpack_from("<i", doc, pos)[0]
        elif kind == 0x05:
            pos += 5 + struct.unpack_from("<i", doc, pos)[0]
        else:
            return None
    return None


def mongo_ping(host: str, port: int, timeout: float = 3.0) -> str | None:
    body = struct.pack("<I", 0) + b"\x00" + _bson_ping()
    header = struct.pack("<iiii", 16 + len(body), 1, 0, _OP_MSG)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(header + body)
            length, _, _, opcode = struct.unpack("<iiii", _recv_exact(sock, 16))
            payload = _recv_exact(sock, length - 16)
    except OSError as exc:
        return f"no answer on {host}:{port} ({exc})"
    if opcode != _OP_MSG or len(payload) < 10 or payload[4] != 0:
        return f"unexpected reply to ping (opcode {opcode})"
    doc = payload[5:]
    ok = _bson_field(doc, b"ok")
    if ok == 1.0:
        return None
    return f"ping answered ok={ok}"


# PostgreSQL -----------------------------------------------------------------------------------


def postgres_query(
    psql: str, host: str, port: int, user: str, password: str, timeout: float = 5.0
) -> str | None:
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": str(max(1, int(timeout)))}
    argv = [psql, "-X", "-h", host, "-p", str(port), "-U", user, "-d", "postgres", "-tAc"]
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv
            [*argv, "select 1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout + 2,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"psql did not answer ({exc})"
    if done.returncode == 0 and done.stdout.strip() == "1":
        return None
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"psql exited {done.returncode} without output"


# Kafka ----------------------------------------------------------------------------------------


async def kafka_metadata(bootstrap: str, request_timeout: float = 5.0) -> dict[str, Any]:
    """Cluster metadata (brokers, controller) from a Metadata request."""
    from aiokafka.admin import AIOKafkaAdminClient  # lazy: not a dependency of this package

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(request_timeout * 1000)
    )
    try:
        async with asyncio.timeout(request_timeout):
            await admin.start()
            cluster: dict[str, Any] = await admin.describe_cluster()
            return cluster
    finally:
        await admin.close()


def kafka_ping(bootstrap: str, timeout: float = 5.0) -> str | None:
    # aiokafka logs every refused connection as an error; a probe expects those.
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        meta = run_sync(kafka_metadata(bootstrap, timeout))
    except Exception as exc:
        return f"no metadata from {bootstrap} ({type(exc).__name__}: {exc})"
    finally:
        logger.setLevel(previous)
    if not meta.get("brokers"):
        return "metadata lists no broker"
    if meta.get("controller_id", -1) == -1:
        return "no active controller yet"
    return None
