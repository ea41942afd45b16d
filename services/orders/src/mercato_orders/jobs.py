"""The orders service's periodic work: the reconciler."""

from __future__ import annotations

import logging

from mercato_common.runtime import Periodic
from mercato_orders.service import ReconcileReport, Reconciliation

__all__ = ["Reconciler"]

log = logging.getLogger("mercato_orders.reconciler")


class Reconciler(Periodic):
    """Runs a reconciliation round every ``interval`` seconds (a lifecycle part)."""

    def __init__(self, reconciliation: Reconciliation, *, interval: float) -> None:
        # A round in progress gets 10 s to finish at stop before it is cancelled.
        super().__init__(
            "orders-reconciler", self._round, interval=interval, grace=10.0, logger=log
        )
        self.reconciliation = reconciliation

    async def run_once(self, *, full: bool | None = None) -> ReconcileReport:
        """One round now; ``full`` forces (or skips) the catalog scans."""
        return await self.reconciliation.run_once(full=full)

    async def _round(self) -> None:
        report = await self.run_once()
        if report.any():
            log.info("reconciliation", extra=vars(report))
