"""The catalog's rules: pure, no I/O, no gRPC, no contracts, no driver.

``errors`` (root :class:`~mercato_catalog.domain.errors.CatalogError`), ``products`` (products,
categories, their validation), ``listing`` (filters, page sizes, page tokens), ``stock`` (what a
stock movement does to a product, holds, low stock) and ``reservations`` (lines, the saga's
phases and the steps between them).
"""
