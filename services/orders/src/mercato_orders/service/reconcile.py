"""Reconciliation: repairs what a crash, an outage or a lost race left between orders and catalog.

One round is :meth:`Reconciliation.run_once`; :class:`mercato_orders.jobs.Reconciler` runs it
every interval, the ``reconcile`` command once. Every step is safe in every replica at once (keys
are taken over with ``FOR UPDATE SKIP LOCKED`` and an owner token, catalog calls are idempotent).
Each round:

1. **Abandoned creates**: PENDING idempotency keys whose lease expired (the create died between
   reserve and commit, or could not release after a failure) are taken over; their order id's
   reservation is released (``ReleaseStock`` records a closed reservation even when none exists,
   so a reservation arriving late reserves nothing) and the key is forgotten.
2. **Owed side effects**: orders cancelled (or failed) whose stock release or refund did not
   happen right after the commit get them now.
3. Every ``catalog_scan_every`` rounds, **orphan reservations**: HELD reservations in the catalog
   older than the grace period whose order is not committed (no order row and no create in
   progress, or an order that is CANCELLED/FAILED) are released. A scan reads only the
   reservations created since where the previous one stopped (its bound; the last one it read
   when it hit ``max_scan_pages``; the oldest release that failed): one found owned (a create
   in progress, or an order not cancelled or failed) is the create's, step 1's or step 2's to
   release from then on. The catalog answers such a short range without reading the other
   HELD reservations. The first scan and every ``full_orphan_scan_every``-th read every HELD
   reservation past the grace again.
4. Every ``catalog_scan_every`` rounds, **lapsed reservations**: CONFIRMED orders older than
   ``reservation_check_after`` whose reservation expired or was released become FAILED
   (OrderFailed, actor "system").
5. Expired idempotency keys (DONE, past their retention) are deleted.

The catalog's own reservation expiry is the last line of defence behind all of this.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from mercato_orders.clients import ReservationState
from mercato_orders.domain.model import OrderState
from mercato_orders.service.changes import Changes

__all__ = ["ReconcileReport", "Reconciliation"]

log = logging.getLogger("mercato_orders.reconciler")


@dataclass
class ReconcileReport:
    abandoned_released: int = 0
    abandoned_deferred: int = 0
    settled: int = 0
    orphans_released: int = 0
    lapsed_failed: int = 0
    keys_deleted: int = 0

    def any(self) -> bool:
        return any(vars(self).values())


class Reconciliation:
    """The repairs of one round, over the service's store, catalog client and payments."""

    def __init__(
        self,
        service: Changes,
        *,
        retry_after: timedelta,
        batch_size: int = 100,
        orphan_grace: timedelta = timedelta(minutes=2),
        catalog_scan_every: int = 12,
        reservation_check_after: timedelta = timedelta(minutes=15),
        max_scan_pages: int = 10,
        full_orphan_scan_every: int = 10,
    ) -> None:
        self._service = service
        for action in fields(ReconcileReport):  # every action at 0 from the start, not "no data"
            service.metrics.reconciled.labels(action.name)
        # When an abandoned create whose release failed is tried again.
        self._retry_after = retry_after
        self._batch = batch_size
        self._orphan_grace = orphan_grace
        self._scan_every = max(catalog_scan_every, 1)
        self._check_after = reservation_check_after
        self._max_pages = max_scan_pages
        self._rounds = 0
        # Where the next orphan scan starts (where the previous one stopped, see _orphans; None:
        # from the oldest), and how often a scan starts from the oldest regardless.
        self._orphans_from: datetime | None = None
        self._full_orphan_every = max(full_orphan_scan_every, 1)
        self._orphan_scans = 0

    async def run_once(self, *, full: bool | None = None) -> ReconcileReport:
        """One round; ``full`` forces (or skips) the catalog scans regardless of the count."""
        report = ReconcileReport()
        scan = full if full is not None else self._rounds % self._scan_every == 0
        self._rounds += 1
        await self._abandoned(report)
        await self._owed(report)
        if scan:
            await self._orphans(report)
            await self._lapsed(report)
        async with self._service.store.read() as tx:
            report.keys_deleted = await tx.keys.delete_expired(limit=self._batch)
        metrics = self._service.metrics.reconciled
        for action, count in vars(report).items():
            if count:
                metrics.labels(action).inc(count)
        return report

    async def _abandoned(self, report: ReconcileReport) -> None:
        service = self._service
        async with service.store.read() as tx:
            keys = await tx.keys.claim_abandoned(limit=self._batch, lease=service.config.lease)
        for row in keys:
            try:
                await service.release_stock(row.order_id, "order placement abandoned")
            except Exception as exc:
                log.warning("abandoned create %s: release failed: %r", row.order_id, exc)
                report.abandoned_deferred += 1
                async with service.store.read() as tx:
                    await tx.keys.abandon(
                        user_id=row.user_id,
                        key=row.key,
                        owner=row.owner,
                        retry_after=self._retry_after,
                    )
                continue
            async with service.store.read() as tx:
                await tx.keys.forget(user_id=row.user_id, key=row.key, owner=row.owner)
            report.abandoned_released += 1
            log.info(
                "released the reservation of an abandoned create", extra={"order_id": row.order_id}
            )

    async def _owed(self, report: ReconcileReport) -> None:
        async with self._service.store.read() as tx:
            orders = await tx.orders.owed(self._batch)
        for order in orders:
            settled = await self._service.settle(order)
            if not (settled.release_pending or settled.refund_pending):
                report.settled += 1

    async def _orphans(self, report: ReconcileReport) -> None:
        service = self._service
        before = service.now() - self._orphan_grace
        after = self._orphans_from
        if self._orphan_scans % self._full_orphan_every == 0:
            after = None
        self._orphan_scans += 1
        if after is not None and after >= before:
            return  # nothing created since the previous scan is past the grace yet
        # Where the next scan starts: this one's bound, unless it stopped early or a release
        # failed (None: from the oldest, for a reservation that does not say when it was made).
        resume_at: datetime | None = before
        retry_from: list[datetime | None] = []
        token = ""
        for _ in range(self._max_pages):
            held, token = await service.catalog.held_before(before, token, created_after=after)
            if not held:
                break
            ids = [r.order_id for r in held]
            async with service.store.read() as tx:
                states = await tx.orders.states(ids)
                in_progress = await tx.keys.pending_order_ids(ids)
            for reservation in held:
                state = states.get(reservation.order_id)
                if reservation.order_id in in_progress:
                    continue  # its create (or an earlier step of this round) answers for it
                if state is not None and state not in (OrderState.CANCELLED, OrderState.FAILED):
                    continue
                try:
                    await service.release_stock(reservation.order_id, "no committed order")
                except Exception as exc:
                    log.warning("orphan reservation %s: %r", reservation.order_id, exc)
                    retry_from.append(reservation.create_time)
                    continue
                report.orphans_released += 1
                log.info("released an orphan reservation", extra={"order_id": reservation.order_id})
            if not token:
                break
        else:
            resume_at = held[-1].create_time  # stopped at max_scan_pages: go on from there
        if retry_from:
            resume_at = retry_from[0]  # the oldest failed release (pages are oldest first)
        self._orphans_from = resume_at

    async def _lapsed(self, report: ReconcileReport) -> None:
        service = self._service
        before = service.now() - self._check_after
        after: str | None = None
        for _ in range(self._max_pages):
            async with service.store.read() as tx:
                orders = await tx.orders.confirmed_before(before, self._batch, after)
            if not orders:
                break
            for order in orders:
                try:
                    reservation = await service.catalog.reservation(order.id)
                except Exception as exc:
                    log.warning("reservation check of %s failed: %r", order.id, exc)
                    continue
                if reservation is not None and reservation.state not in (
                    ReservationState.EXPIRED,
                    ReservationState.RELEASED,
                ):
                    continue
                if await service.fail_lapsed(order.id, "stock reservation expired") is not None:
                    report.lapsed_failed += 1
            after = orders[-1].id
