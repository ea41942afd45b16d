"""Per-document write serialization for servers whose single-document updates are not atomic.

MongoDB applies a single-document update atomically: the filter is evaluated and the change is
applied as one step, so ``{"stock_available": {"$gte": n}}`` with ``{"$inc": ...}`` can never
oversell. FerretDB 1.x (the local stack) does not: it reads the matching document, applies the
operators in its own process and writes the whole document back, so concurrent writers to one
document lose updates (measured: 50 concurrent ``$inc`` of one counter leave it at 7, and a
guarded decrement of stock 10 "succeeds" 41 times).

:class:`WriteLocks` therefore serializes, inside this process, every write the catalog makes to
one document (products, reservations, categories, and the outbox relay's claims and
acknowledgements of the same documents). With MongoDB it is disabled and costs nothing. With
FerretDB it makes one catalog process correct; several replicas on FerretDB are not supported.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["WriteLocks"]


class WriteLocks:
    """``async with locks.hold("products", sku): ...`` around each single-document write."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self._locks: dict[tuple[str, Any], asyncio.Lock] = {}
        self._users: dict[tuple[str, Any], int] = {}

    @asynccontextmanager
    async def hold(self, collection: str, doc_id: Any) -> AsyncIterator[None]:
        if not self.enabled:
            yield
            return
        key = (collection, doc_id)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            remaining = self._users[key] - 1
            if remaining:
                self._users[key] = remaining
            else:
                # Nobody waits for this document any more: forget its lock (bounded memory).
                del self._users[key]
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)
