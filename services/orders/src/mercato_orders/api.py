# ruff: noqa: N802  (method names are the RPC names of the contract)
"""The gRPC servicer of ``mercato.orders.v1.OrdersService``: requests → use cases → messages.

Request shapes (protovalidate) and access (the ``(mercato.api.v1.access)`` scopes) are enforced
by the ``libs/common`` interceptors before a handler runs; the domain checks again what it
relies on. Ownership is a domain rule: another user's order is NOT_FOUND unless the caller holds
``orders:admin``. Domain errors become statuses in the common error interceptor
(STOCK_UNAVAILABLE with a ``google.rpc.PreconditionFailure`` naming the refused lines).
"""

from __future__ import annotations

from mercato.orders.v1 import orders_pb2, orders_pb2_grpc
from mercato_common.grpc_types import ServicerContext as Context
from mercato_common.identity import require_identity
from mercato_orders.convert import (
    money_from_proto,
    optional_time,
    order_to_proto,
    requested_lines,
    state_from_proto,
)
from mercato_orders.domain.rules import ADMIN_SCOPE, Viewer, list_filter, page_size
from mercato_orders.service import OrdersService

__all__ = ["SERVICE_NAME", "OrdersServicer"]

SERVICE_NAME = "mercato.orders.v1.OrdersService"


def _viewer() -> Viewer:
    identity = require_identity()
    return Viewer(identity.subject, admin=ADMIN_SCOPE in identity.scopes)


class OrdersServicer(orders_pb2_grpc.OrdersServiceServicer):
    def __init__(self, service: OrdersService) -> None:
        self._service = service

    async def CreateOrder(
        self, request: orders_pb2.CreateOrderRequest, context: Context
    ) -> orders_pb2.CreateOrderResponse:
        order = await self._service.create(
            _viewer(), requested_lines(request.order), request.idempotency_key
        )
        return orders_pb2.CreateOrderResponse(order=order_to_proto(order))

    async def GetOrder(
        self, request: orders_pb2.GetOrderRequest, context: Context
    ) -> orders_pb2.GetOrderResponse:
        order = await self._service.get(_viewer(), request.id.lower())
        return orders_pb2.GetOrderResponse(order=order_to_proto(order))

    async def ListOrders(
        self, request: orders_pb2.ListOrdersRequest, context: Context
    ) -> orders_pb2.ListOrdersResponse:
        viewer = _viewer()
        flt = list_filter(
            viewer,
            user_id=request.user_id,
            state=state_from_proto(request.state),
            created_after=optional_time(request, "created_after"),
            created_before=optional_time(request, "created_before"),
        )
        orders, token = await self._service.list_orders(
            viewer, flt, request.page_token, page_size(request.page_size)
        )
        return orders_pb2.ListOrdersResponse(
            orders=[order_to_proto(o) for o in orders], next_page_token=token
        )

    async def PayOrder(
        self, request: orders_pb2.PayOrderRequest, context: Context
    ) -> orders_pb2.PayOrderResponse:
        order = await self._service.pay(
            _viewer(), request.id.lower(), request.payment_token, money_from_proto(request.amount)
        )
        return orders_pb2.PayOrderResponse(order=order_to_proto(order))

    async def CancelOrder(
        self, request: orders_pb2.CancelOrderRequest, context: Context
    ) -> orders_pb2.CancelOrderResponse:
        order = await self._service.cancel(_viewer(), request.id.lower(), request.reason)
        return orders_pb2.CancelOrderResponse(order=order_to_proto(order))

    async def FulfillOrder(
        self, request: orders_pb2.FulfillOrderRequest, context: Context
    ) -> orders_pb2.FulfillOrderResponse:
        identity = require_identity()
        order = await self._service.fulfil(
            identity.subject, request.id.lower(), request.shipment_reference
        )
        return orders_pb2.FulfillOrderResponse(order=order_to_proto(order))

    async def RecordPaymentEvent(
        self, request: orders_pb2.RecordPaymentEventRequest, context: Context
    ) -> orders_pb2.RecordPaymentEventResponse:
        order_id = await self._service.record_event(request.payload.data, request.stripe_signature)
        return orders_pb2.RecordPaymentEventResponse(order_id=order_id)
