# ruff: noqa: N802  (method names are the RPC names of the contract)
"""The gRPC servicer of mercato.catalog.v1.CatalogService: requests → store calls → messages.

Request shapes are validated by the protovalidate interceptor before a handler runs; handlers
convert every field into a typed domain value (the domain checks again), so nothing from a
request reaches a query as anything but a string or an integer.
"""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato_catalog.cache import ProductCache
from mercato_catalog.convert import money_to_proto, timestamp
from mercato_catalog.domain import (
    Category,
    Line,
    Money,
    NewProduct,
    Product,
    ProductChanges,
    ProductFilter,
    ProductState,
    Reservation,
    ReservationState,
    check_lines,
    check_sku,
    page_size,
)
from mercato_catalog.store import CategoryStore, ProductStore, ReservationStore
from mercato_common.identity import current_identity

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
else:
    Context: TypeAlias = Any

__all__ = ["CatalogServicer", "product_to_proto", "reservation_to_proto"]

SERVICE_NAME = "mercato.catalog.v1.CatalogService"


_PRODUCT_STATES = {
    ProductState.ACTIVE: catalog_pb2.PRODUCT_STATE_ACTIVE,
    ProductState.ARCHIVED: catalog_pb2.PRODUCT_STATE_ARCHIVED,
}
_RESERVATION_STATES = {
    ReservationState.HELD: catalog_pb2.RESERVATION_STATE_HELD,
    ReservationState.COMMITTED: catalog_pb2.RESERVATION_STATE_COMMITTED,
    ReservationState.RELEASED: catalog_pb2.RESERVATION_STATE_RELEASED,
    ReservationState.EXPIRED: catalog_pb2.RESERVATION_STATE_EXPIRED,
}
_STATE_FILTER = {value: key for key, value in _RESERVATION_STATES.items()}


def product_to_proto(product: Product) -> catalog_pb2.Product:
    message = catalog_pb2.Product(
        sku=product.sku,
        name=product.name,
        description=product.description,
        category_id=product.category_id,
        price=money_to_proto(product.price),
        attributes=dict(product.attributes),
        state=_PRODUCT_STATES[product.state],
        stock_on_hand=product.stock_on_hand,
        stock_reserved=product.stock_reserved,
        stock_available=product.stock_available,
        etag=product.etag,
        create_time=timestamp(product.create_time),
        update_time=timestamp(product.update_time),
    )
    if product.archive_time is not None:
        message.archive_time.CopyFrom(timestamp(product.archive_time))
    return message


def category_to_proto(category: Category) -> catalog_pb2.Category:
    return catalog_pb2.Category(
        id=category.id,
        display_name=category.display_name,
        parent_id=category.parent_id,
        ancestor_ids=list(category.ancestor_ids),
        create_time=timestamp(category.create_time),
    )


def reservation_to_proto(reservation: Reservation) -> catalog_pb2.Reservation:
    state = reservation.state
    message = catalog_pb2.Reservation(
        order_id=reservation.order_id,
        lines=[
            catalog_pb2.ReservationLine(sku=line.sku, quantity=line.quantity)
            for line in reservation.lines
        ],
        state=(
            _RESERVATION_STATES[state]
            if state is not None
            else catalog_pb2.RESERVATION_STATE_UNSPECIFIED
        ),
        create_time=timestamp(reservation.create_time),
        update_time=timestamp(reservation.update_time),
    )
    if state is ReservationState.HELD and reservation.expire_time is not None:
        message.expire_time.CopyFrom(timestamp(reservation.expire_time))
    return message


def _price(message: catalog_pb2.Product) -> Money:
    return Money(message.price.currency_code, int(message.price.amount_minor))


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(
        self,
        *,
        products: ProductStore,
        categories: CategoryStore,
        reservations: ReservationStore,
        cache: ProductCache,
    ) -> None:
        self._products = products
        self._categories = categories
        self._reservations = reservations
        self._cache = cache

    # --- products ----------------------------------------------------------------------------

    async def GetProduct(
        self, request: catalog_pb2.GetProductRequest, context: Context
    ) -> catalog_pb2.GetProductResponse:
        sku = check_sku(request.sku)
        cached = await self._cache.get(sku)
        if cached is not None:
            return catalog_pb2.GetProductResponse(product=catalog_pb2.Product.FromString(cached))
        product = await self._products.get(sku)
        message = product_to_proto(product)
        await self._cache.fill(sku, product.version, message.SerializeToString())
        return catalog_pb2.GetProductResponse(product=message)

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Context
    ) -> catalog_pb2.ListProductsResponse:
        flt = ProductFilter(
            state=(
                ProductState.ARCHIVED
                if request.state == catalog_pb2.PRODUCT_STATE_ARCHIVED
                else ProductState.ACTIVE
            ),
            category=request.category,
            q=request.q,
            currency_code=request.currency_code,
            min_price_minor=(
                int(request.min_price_minor) if request.HasField("min_price_minor") else None
            ),
            max_price_minor=(
                int(request.max_price_minor) if request.HasField("max_price_minor") else None
            ),
        )
        products, token = await self._products.list_page(
            flt, page_size(request.page_size), request.page_token
        )
        return catalog_pb2.ListProductsResponse(
            products=[product_to_proto(p) for p in products], next_page_token=token
        )

    async def CreateProduct(
        self, request: catalog_pb2.CreateProductRequest, context: Context
    ) -> catalog_pb2.CreateProductResponse:
        given = request.product
        product = await self._products.create(
            NewProduct(
                sku=given.sku,
                name=given.name,
                description=given.description,
                category_id=given.category_id,
                price=_price(given),
                attributes=dict(given.attributes),
            )
        )
        return catalog_pb2.CreateProductResponse(product=product_to_proto(product))

    async def UpdateProduct(
        self, request: catalog_pb2.UpdateProductRequest, context: Context
    ) -> catalog_pb2.UpdateProductResponse:
        given = request.product
        changes = ProductChanges(
            fields=frozenset(request.update_mask.paths),
            name=given.name,
            description=given.description,
            category_id=given.category_id,
            price=_price(given) if given.HasField("price") else None,
            attributes=dict(given.attributes),
        )
        product = await self._products.update(check_sku(given.sku), changes, given.etag)
        return catalog_pb2.UpdateProductResponse(product=product_to_proto(product))

    async def ArchiveProduct(
        self, request: catalog_pb2.ArchiveProductRequest, context: Context
    ) -> catalog_pb2.ArchiveProductResponse:
        product = await self._products.archive(check_sku(request.sku), request.etag)
        return catalog_pb2.ArchiveProductResponse(product=product_to_proto(product))

    async def AdjustStock(
        self, request: catalog_pb2.AdjustStockRequest, context: Context
    ) -> catalog_pb2.AdjustStockResponse:
        identity = current_identity()
        product = await self._products.adjust_stock(
            check_sku(request.sku),
            int(request.delta),
            request.reason,
            request.request_id,
            identity.subject if identity is not None else "",
        )
        return catalog_pb2.AdjustStockResponse(product=product_to_proto(product))

    async def BatchGetProducts(
        self, request: catalog_pb2.BatchGetProductsRequest, context: Context
    ) -> catalog_pb2.BatchGetProductsResponse:
        skus = [check_sku(sku, "skus") for sku in request.skus]
        found = await self._products.batch_get(skus)
        return catalog_pb2.BatchGetProductsResponse(
            products=[product_to_proto(found[sku]) for sku in skus if sku in found],
            missing_skus=[sku for sku in skus if sku not in found],
        )

    # --- categories --------------------------------------------------------------------------

    async def ListCategories(
        self, request: catalog_pb2.ListCategoriesRequest, context: Context
    ) -> catalog_pb2.ListCategoriesResponse:
        categories, token = await self._categories.list_page(
            page_size(request.page_size, default=100), request.page_token
        )
        return catalog_pb2.ListCategoriesResponse(
            categories=[category_to_proto(c) for c in categories], next_page_token=token
        )

    async def CreateCategory(
        self, request: catalog_pb2.CreateCategoryRequest, context: Context
    ) -> catalog_pb2.CreateCategoryResponse:
        given = request.category
        category = await self._categories.create(given.id, given.display_name, given.parent_id)
        return catalog_pb2.CreateCategoryResponse(category=category_to_proto(category))

    # --- reservations ------------------------------------------------------------------------

    async def ReserveStock(
        self, request: catalog_pb2.ReserveStockRequest, context: Context
    ) -> catalog_pb2.ReserveStockResponse:
        lines = check_lines([Line(line.sku, int(line.quantity)) for line in request.lines])
        reservation = await self._reservations.reserve(request.order_id.lower(), lines)
        return catalog_pb2.ReserveStockResponse(reservation=reservation_to_proto(reservation))

    async def ReleaseStock(
        self, request: catalog_pb2.ReleaseStockRequest, context: Context
    ) -> catalog_pb2.ReleaseStockResponse:
        reservation = await self._reservations.release(request.order_id.lower(), request.reason)
        return catalog_pb2.ReleaseStockResponse(reservation=reservation_to_proto(reservation))

    async def CommitReservation(
        self, request: catalog_pb2.CommitReservationRequest, context: Context
    ) -> catalog_pb2.CommitReservationResponse:
        reservation = await self._reservations.commit(request.order_id.lower())
        return catalog_pb2.CommitReservationResponse(reservation=reservation_to_proto(reservation))

    async def GetReservation(
        self, request: catalog_pb2.GetReservationRequest, context: Context
    ) -> catalog_pb2.GetReservationResponse:
        reservation = await self._reservations.get(request.order_id.lower())
        return catalog_pb2.GetReservationResponse(reservation=reservation_to_proto(reservation))

    async def ListReservations(
        self, request: catalog_pb2.ListReservationsRequest, context: Context
    ) -> catalog_pb2.ListReservationsResponse:
        created_before = (
            request.created_before.ToDatetime(tzinfo=UTC)
            if request.HasField("created_before")
            else None
        )
        reservations, token = await self._reservations.list_page(
            _STATE_FILTER.get(request.state),
            created_before,
            page_size(request.page_size, default=100),
            request.page_token,
        )
        return catalog_pb2.ListReservationsResponse(
            reservations=[reservation_to_proto(r) for r in reservations], next_page_token=token
        )
