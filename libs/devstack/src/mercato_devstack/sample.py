"""Loading the sample catalog through catalog's public API, as the bootstrap admin.

Idempotent: existing categories and products are left as they are, and the initial stock of a
product is added with a request id derived from its SKU, so a second run adds nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import grpc

from mercato.auth.v1 import auth_pb2, auth_pb2_grpc
from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato.type.v1 import money_pb2

# Fixed namespace: the same SKU always gives the same AdjustStock request id.
_STOCK_REQUESTS = uuid.UUID("6f1c3a52-3d0e-4b8e-9c55-0c7d0b7f6a10")


async def load_sample_catalog(
    catalog: Mapping[str, Any],
    *,
    auth_target: str,
    catalog_target: str,
    email: str,
    password: str,
) -> int:
    """Create what is missing; returns the number of products created."""
    async with grpc.aio.insecure_channel(auth_target) as auth_channel:
        login = await auth_pb2_grpc.AuthServiceStub(auth_channel).Login(
            auth_pb2.LoginRequest(email=email, password=password), timeout=10
        )
    metadata = (("authorization", f"Bearer {login.access_token}"),)
    created = 0
    async with grpc.aio.insecure_channel(catalog_target) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        for category in catalog.get("categories", []):
            try:
                await stub.CreateCategory(
                    catalog_pb2.CreateCategoryRequest(category=catalog_pb2.Category(**category)),
                    metadata=metadata,
                    timeout=10,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
        for item in catalog.get("products", []):
            product = catalog_pb2.Product(
                sku=item["sku"],
                name=item["name"],
                category_id=item["category_id"],
                price=money_pb2.Money(
                    currency_code=item["currency"], amount_minor=int(item["price_minor"])
                ),
            )
            try:
                await stub.CreateProduct(
                    catalog_pb2.CreateProductRequest(product=product), metadata=metadata, timeout=10
                )
                created += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
            await stub.AdjustStock(
                catalog_pb2.AdjustStockRequest(
                    sku=item["sku"],
                    delta=int(item["stock"]),
                    reason="sample catalog: initial stock",
                    request_id=str(uuid.uuid5(_STOCK_REQUESTS, item["sku"])),
                ),
                metadata=metadata,
                timeout=10,
            )
    return created
