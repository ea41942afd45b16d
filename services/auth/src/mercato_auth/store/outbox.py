"""Events into the outbox, in the transaction of the change they announce."""

from __future__ import annotations

from mercato_common.kafka import Envelope
from mercato_common.outbox import enqueue
from mercato_common.postgres import TracedConnection

__all__ = ["Outbox"]


class Outbox:
    def __init__(self, conn: TracedConnection, topic: str) -> None:
        self._conn = conn
        self._topic = topic

    async def add(self, envelope: Envelope) -> None:
        """In the caller's transaction, with the state change it announces."""
        await enqueue(self._conn.raw, envelope, self._topic)
