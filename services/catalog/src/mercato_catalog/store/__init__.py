"""The catalog's MongoDB access: products, categories, reservations, indexes, write locks."""

from mercato_catalog.store.common import INDEXES, StoreContext, utcnow
from mercato_catalog.store.locks import WriteLocks
from mercato_catalog.store.products import CategoryStore, HoldOutcome, ProductStore
from mercato_catalog.store.reservations import ReservationStore

__all__ = [
    "INDEXES",
    "CategoryStore",
    "HoldOutcome",
    "ProductStore",
    "ReservationStore",
    "StoreContext",
    "WriteLocks",
    "utcnow",
]
