"""The catalog's persistence in MongoDB: products, stock movements, categories, reservation
sagas, indexes and write locks. Persistence only: the use cases decide what to write and which
events go with it."""

from mercato_catalog.store.categories import CategoryStore
from mercato_catalog.store.common import INDEXES, RETIRED_INDEXES, StoreContext, utcnow
from mercato_catalog.store.locks import WriteLocks
from mercato_catalog.store.products import ProductStore
from mercato_catalog.store.reservations import ReservationStore
from mercato_catalog.store.stock import StockStore

__all__ = [
    "INDEXES",
    "RETIRED_INDEXES",
    "CategoryStore",
    "ProductStore",
    "ReservationStore",
    "StockStore",
    "StoreContext",
    "WriteLocks",
    "utcnow",
]
