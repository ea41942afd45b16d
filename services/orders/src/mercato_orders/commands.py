"""Orders' admin command: ``python -m mercato_orders reconcile`` runs one full reconciliation
round (abandoned creates, owed releases and refunds, orphan and lapsed reservations) and exits
(``serve`` and ``migrate`` come from the kit)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, Protocol

from mercato_common.kit import Command, Service
from mercato_orders.jobs import Reconciler

__all__ = ["COMMANDS"]


class AdminApp(Protocol):
    """What the command uses of the built service (``mercato_orders.app.OrdersApp``)."""

    @property
    def kit(self) -> Service: ...
    @property
    def reconciler(self) -> Reconciler: ...


async def _reconcile(app: AdminApp, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    # The stores and the clients (the channels, the service that drains compensations); not
    # the relay, the jobs or the server.
    async with app.kit.running(*app.kit.stores, *app.kit.clients):
        report = await app.reconciler.run_once(full=True)
    print(report)
    return 0


COMMANDS: tuple[Command[Any, Any], ...] = (
    Command("reconcile", "run one full reconciliation round and exit", _reconcile),
)
