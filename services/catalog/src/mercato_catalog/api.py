# ruff: noqa: N802  (method names are the RPC names of the contract)
"""The gRPC servicer of mercato.catalog.v1.CatalogService: request → use case → response.

Request shapes are validated by the protovalidate interceptor before a handler runs; handlers
convert every field into a typed domain value (the domain checks again), so nothing from a
request reaches a query as anything but a string or an integer.
"""

from __future__ import annotations

from dataclasses import dataclass

from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato_catalog.convert import (
    RESERVATION_STATE_FILTER,
    category_to_proto,
    money_from_proto,
    optional_time,
    product_to_proto,
    reservation_to_proto,
)
from mercato_catalog.domain.listing import (
    MAX_RESERVATIONS_PAGE_SIZE,
    ProductFilter,
    ReservationFilter,
    page_size,
)
from mercato_catalog.domain.products import NewProduct, ProductChanges, ProductState, check_sku
from mercato_catalog.domain.reservations import Line, check_lines
from mercato_catalog.service.categories import CategoryService
from mercato_catalog.service.products import ProductService
from mercato_catalog.service.reservations import ReservationService
from mercato_common.grpc_types import ServicerContext as Context
from mercato_common.identity import current_identity

__all__ = ["SERVICE_NAME", "CatalogServicer"]

SERVICE_NAME = "mercato.catalog.v1.CatalogService"


@dataclass(eq=False, kw_only=True)
class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    products: ProductService
    categories: CategoryService
    reservations: ReservationService

    # --- products ----------------------------------------------------------------------------

    async def GetProduct(
        self, request: catalog_pb2.GetProductRequest, context: Context
    ) -> catalog_pb2.GetProductResponse:
        encoded = await self.products.get_encoded(check_sku(request.sku))
        return catalog_pb2.GetProductResponse(product=catalog_pb2.Product.FromString(encoded))

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
            skus=tuple(request.skus),
        )
        products, token = await self.products.list_page(
            flt, page_size(request.page_size), request.page_token
        )
        return catalog_pb2.ListProductsResponse(
            products=[product_to_proto(p) for p in products], next_page_token=token
        )

    async def CreateProduct(
        self, request: catalog_pb2.CreateProductRequest, context: Context
    ) -> catalog_pb2.CreateProductResponse:
        given = request.product
        product = await self.products.create(
            NewProduct(
                sku=given.sku,
                name=given.name,
                description=given.description,
                category_id=given.category_id,
                price=money_from_proto(given.price),
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
            price=money_from_proto(given.price) if given.HasField("price") else None,
            attributes=dict(given.attributes),
        )
        product = await self.products.update(check_sku(given.sku), changes, given.etag)
        return catalog_pb2.UpdateProductResponse(product=product_to_proto(product))

    async def ArchiveProduct(
        self, request: catalog_pb2.ArchiveProductRequest, context: Context
    ) -> catalog_pb2.ArchiveProductResponse:
        product = await self.products.archive(check_sku(request.sku), request.etag)
        return catalog_pb2.ArchiveProductResponse(product=product_to_proto(product))

    async def AdjustStock(
        self, request: catalog_pb2.AdjustStockRequest, context: Context
    ) -> catalog_pb2.AdjustStockResponse:
        identity = current_identity()
        product = await self.products.adjust_stock(
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
        found = await self.products.batch_get(skus)
        return catalog_pb2.BatchGetProductsResponse(
            products=[product_to_proto(found[sku]) for sku in skus if sku in found],
            missing_skus=[sku for sku in skus if sku not in found],
        )

    # --- categories --------------------------------------------------------------------------

    async def ListCategories(
        self, request: catalog_pb2.ListCategoriesRequest, context: Context
    ) -> catalog_pb2.ListCategoriesResponse:
        categories, token = await self.categories.list_page(
            page_size(request.page_size, default=100), request.page_token
        )
        return catalog_pb2.ListCategoriesResponse(
            categories=[category_to_proto(c) for c in categories], next_page_token=token
        )

    async def CreateCategory(
        self, request: catalog_pb2.CreateCategoryRequest, context: Context
    ) -> catalog_pb2.CreateCategoryResponse:
        given = request.category
        category = await self.categories.create(given.id, given.display_name, given.parent_id)
        return catalog_pb2.CreateCategoryResponse(category=category_to_proto(category))

    # --- reservations ------------------------------------------------------------------------

    async def ReserveStock(
        self, request: catalog_pb2.ReserveStockRequest, context: Context
    ) -> catalog_pb2.ReserveStockResponse:
        lines = check_lines([Line(line.sku, int(line.quantity)) for line in request.lines])
        reserved = await self.reservations.reserve(request.order_id.lower(), lines)
        return catalog_pb2.ReserveStockResponse(
            reservation=reservation_to_proto(reserved.reservation),
            products=[product_to_proto(product) for product in reserved.products],
        )

    async def ReleaseStock(
        self, request: catalog_pb2.ReleaseStockRequest, context: Context
    ) -> catalog_pb2.ReleaseStockResponse:
        reservation = await self.reservations.release(request.order_id.lower(), request.reason)
        return catalog_pb2.ReleaseStockResponse(reservation=reservation_to_proto(reservation))

    async def CommitReservation(
        self, request: catalog_pb2.CommitReservationRequest, context: Context
    ) -> catalog_pb2.CommitReservationResponse:
        reservation = await self.reservations.commit(request.order_id.lower())
        return catalog_pb2.CommitReservationResponse(reservation=reservation_to_proto(reservation))

    async def GetReservation(
        self, request: catalog_pb2.GetReservationRequest, context: Context
    ) -> catalog_pb2.GetReservationResponse:
        reservation = await self.reservations.get(request.order_id.lower())
        return catalog_pb2.GetReservationResponse(reservation=reservation_to_proto(reservation))

    async def ListReservations(
        self, request: catalog_pb2.ListReservationsRequest, context: Context
    ) -> catalog_pb2.ListReservationsResponse:
        flt = ReservationFilter(
            state=RESERVATION_STATE_FILTER.get(request.state),
            created_before=optional_time(request, "created_before"),
            created_after=optional_time(request, "created_after"),
        )
        reservations, token = await self.reservations.list_page(
            flt,
            page_size(request.page_size, default=100, maximum=MAX_RESERVATIONS_PAGE_SIZE),
            request.page_token,
        )
        return catalog_pb2.ListReservationsResponse(
            reservations=[reservation_to_proto(r) for r in reservations], next_page_token=token
        )
