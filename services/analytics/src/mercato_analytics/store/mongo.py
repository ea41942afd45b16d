"""The translation of analytics' MongoDB errors: a transient failure
(connection, timeout, "not primary", shutdown) becomes :class:`StoreUnavailable`, which the
consumers wait out and the API answers as UNAVAILABLE."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from bson import Int64
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from mercato_analytics.domain import StoreUnavailable

__all__ = [
    "READ_CONCURRENCY",
    "WRITES_PER_COMMAND",
    "bulk_write_in_chunks",
    "gather_reads",
    "int64_document",
    "translated",
]

# Reads one operation issues at once: each holds a client connection, and FerretDB one
# PostgreSQL connection per client connection; hundreds at once exhaust PostgreSQL's
# connections and stall FerretDB (seen: a roll-up of 200 minutes issuing 400 reads).
READ_CONCURRENCY = 4

# Writes per bulk command. FerretDB 1.24 holds one PostgreSQL connection per write of a command
# until the whole command is done: a command of a few hundred writes took all 200 connections
# of its pool and stalled it (measured: 300 UpdateOne in one bulk_write, ordered or not).
WRITES_PER_COMMAND = 32

# Server codes of transient conditions (shutdown, failover, interrupted operations).
_TRANSIENT_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


def _transient(exc: PyMongoError) -> bool:
    if isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError):
        return True
    if exc.has_error_label("RetryableWriteError"):
        return True
    return isinstance(exc, OperationFailure) and exc.code in _TRANSIENT_CODES


@contextlib.asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Database errors inside the block: transient ones as :class:`StoreUnavailable`."""
    try:
        yield
    except DuplicateKeyError:
        raise
    except PyMongoError as exc:
        if _transient(exc):
            raise StoreUnavailable("the analytics database is unavailable") from exc
        raise


def int64_document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Integers as int64 (so sums never wrap in the server), the rest unchanged."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, bool):
            out[key] = value
        elif isinstance(value, int):
            out[key] = Int64(value)
        elif isinstance(value, list):
            out[key] = [
                int64_document(item) if isinstance(item, Mapping) else item for item in value
            ]
        else:
            out[key] = value
    return out


_T = TypeVar("_T")
_A = TypeVar("_A")


async def gather_reads(read: Callable[[_A], Awaitable[_T]], args: Iterable[_A]) -> list[_T]:
    """``read(arg)`` for every arg, at most :data:`READ_CONCURRENCY` at once, in order."""
    limit = asyncio.Semaphore(READ_CONCURRENCY)

    async def bounded(arg: _A) -> _T:
        async with limit:
            return await read(arg)

    return await asyncio.gather(*(bounded(arg) for arg in args))


async def bulk_write_in_chunks(collection: Any, ops: Sequence[Any]) -> None:
    """``collection.bulk_write(ops)``, :data:`WRITES_PER_COMMAND` writes per command, in order."""
    for start in range(0, len(ops), WRITES_PER_COMMAND):
        async with translated():
            await collection.bulk_write(list(ops[start : start + WRITES_PER_COMMAND]), ordered=True)
