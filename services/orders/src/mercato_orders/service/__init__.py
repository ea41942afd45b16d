"""The orders service's use cases, between the adapters (API, jobs) and the domain rules.

One module per group: :mod:`~mercato_orders.service.placing` (the reservation saga with the
catalog and its compensation), :mod:`~mercato_orders.service.payment`,
:mod:`~mercato_orders.service.changes` (cancel, fulfil, settle what a change owes),
:mod:`~mercato_orders.service.reading` and :mod:`~mercato_orders.service.reconcile` (the repairs
of one reconciliation round). They decide which events a change emits; the store only writes
them.
"""

from mercato_orders.service.base import OrdersConfig, OrdersMetrics
from mercato_orders.service.payment import Payment
from mercato_orders.service.placing import Placing
from mercato_orders.service.reconcile import ReconcileReport, Reconciliation

__all__ = [
    "OrdersConfig",
    "OrdersMetrics",
    "OrdersService",
    "ReconcileReport",
    "Reconciliation",
]


class OrdersService(Placing, Payment):
    """Every use case of the orders service (they share one set of dependencies)."""
