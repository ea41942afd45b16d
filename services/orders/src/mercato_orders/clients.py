"""Calls to other services: auth (client-credentials token) and the catalog (prices, stock).

:class:`ServiceTokens` gets the orders service's own access token from auth's token endpoint
(``IssueToken``, grant ``client_credentials``, scope ``catalog:reserve``) and caches it until
shortly before it expires; a burst of calls triggers one token request. :class:`CatalogClient`
wraps the catalog stub: every call carries that token (the channel's ``metadata`` hook) and a
deadline, and its failures come back as the orders domain's terms: a refusal is
:class:`StockUnavailable` naming the lines; anything that leaves the outcome unknown
(unreachable, deadline, internal error) is :class:`CatalogUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from google.protobuf.message import Message

from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato_common.errors import ErrorKind, MercatoError
from mercato_common.rpc_errors import map_rpc_errors
from mercato_orders.convert import optional_time, timestamp
from mercato_orders.domain.errors import (
    CatalogUnavailable,
    OrdersError,
    Shortage,
    ShortageKind,
    StockUnavailable,
)
from mercato_orders.domain.model import Money, RequestedLine
from mercato_orders.domain.rules import ProductInfo

__all__ = [
    "CatalogClient",
    "ReservationClosedError",
    "ReservationInfo",
    "ReservationState",
    "ServiceTokens",
    "TokenGrant",
]

log = logging.getLogger("mercato_orders.clients")

_Response = TypeVar("_Response")


# --- the service's own access token -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access_token: str
    expires_in: float


class ServiceTokens:
    """A client-credentials access token, cached until ``refresh_margin`` before it expires.

    ``issue`` asks auth for a new token. If auth cannot be reached while the cached token is
    still valid, the cached one keeps being used (with a warning).
    """

    def __init__(
        self,
        issue: Callable[[], Awaitable[TokenGrant]],
        *,
        refresh_margin: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issue = issue
        self._margin = refresh_margin
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.issued = 0

    def _fresh(self) -> str | None:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        return None

    async def token(self) -> str:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        async with self._lock:
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            try:
                grant = await self._issue()
            except Exception as exc:
                if self._token is not None and self._clock() < self._expires_at - 5.0:
                    log.warning("service token renewal failed; using the cached one: %r", exc)
                    return self._token
                log.error("cannot obtain the service access token from auth: %r", exc)
                raise CatalogUnavailable("the service cannot authenticate to the catalog") from exc
            now = self._clock()
            lifetime = max(float(grant.expires_in), 0.0)
            # Renew `margin` before expiry, but never later than halfway through a short life.
            margin = min(self._margin, lifetime / 2)
            self._token = grant.access_token
            self._expires_at = now + lifetime
            self._refresh_at = now + lifetime - margin
            self.issued += 1
            return self._token

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (the catalog refused it), unless it was already replaced."""
        if token is None or token == self._token:
            self._token = None
            self._refresh_at = 0.0

    async def metadata(self) -> Sequence[tuple[str, str]]:
        """The ``authorization`` header, for ``create_channel(metadata=...)``."""
        return (("authorization", f"Bearer {await self.token()}"),)


# --- the catalog --------------------------------------------------------------------------------


class ReservationState(Enum):
    HELD = "HELD"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"
    UNKNOWN = "UNKNOWN"


_STATES = {
    catalog_pb2.RESERVATION_STATE_HELD: ReservationState.HELD,
    catalog_pb2.RESERVATION_STATE_COMMITTED: ReservationState.COMMITTED,
    catalog_pb2.RESERVATION_STATE_RELEASED: ReservationState.RELEASED,
    catalog_pb2.RESERVATION_STATE_EXPIRED: ReservationState.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class ReservationInfo:
    order_id: str
    state: ReservationState
    lines: tuple[RequestedLine, ...]
    create_time: datetime | None = None
    # ReserveStock only: the lines' products as held (empty from a catalog that does not say).
    products: Mapping[str, ProductInfo] = field(default_factory=dict)


class ReservationClosedError(Exception):
    """The order's reservation was released or expired (or never existed, for a commit)."""


def _reservation(message: catalog_pb2.Reservation) -> ReservationInfo:
    return ReservationInfo(
        order_id=message.order_id,
        state=_STATES.get(message.state, ReservationState.UNKNOWN),
        lines=tuple(RequestedLine(line.sku, int(line.quantity)) for line in message.lines),
        create_time=optional_time(message, "create_time"),
    )


def _product_infos(products: Iterable[catalog_pb2.Product]) -> dict[str, ProductInfo]:
    return {
        p.sku: ProductInfo(
            sku=p.sku,
            name=p.name,
            price=Money(p.price.currency_code, int(p.price.amount_minor)),
            active=p.state == catalog_pb2.PRODUCT_STATE_ACTIVE,
            available=int(p.stock_available),
        )
        for p in products
    }


def _shortages(error: MercatoError) -> list[Shortage]:
    """The refused lines of a STOCK_UNAVAILABLE status (its google.rpc.PreconditionFailure)."""
    shortages: list[Shortage] = []
    for violation in error.precondition_violations:
        try:
            kind = ShortageKind(violation.type)
        except ValueError:
            kind = ShortageKind.OUT_OF_STOCK
        shortages.append(Shortage(violation.subject, kind, violation.description))
    if not shortages:  # fall back to the ErrorInfo metadata
        skus = [s for s in error.metadata.get("skus", "").split(",") if s]
        types = error.metadata.get("types", "").split(",")
        for i, sku in enumerate(skus):
            try:
                kind = ShortageKind(types[i])
            except (ValueError, IndexError):
                kind = ShortageKind.OUT_OF_STOCK
            shortages.append(Shortage(sku, kind, "refused by the catalog"))
    return shortages


# Kinds after which the outcome of a catalog write is unknown (or the catalog is unusable).
_UNAVAILABLE_KINDS = frozenset(
    {
        ErrorKind.UNAVAILABLE,
        ErrorKind.DEADLINE_EXCEEDED,
        ErrorKind.INTERNAL,
        ErrorKind.RESOURCE_EXHAUSTED,
        ErrorKind.UNAUTHENTICATED,
        ErrorKind.PERMISSION_DENIED,
        ErrorKind.INVALID_ARGUMENT,
    }
)


@dataclass(eq=False, repr=False)
class CatalogClient:
    """The catalog's reservation API, in the orders domain's terms."""

    stub: catalog_pb2_grpc.CatalogServiceAsyncStub
    tokens: ServiceTokens
    _: KW_ONLY
    timeout: float = 5.0
    busy_retries: int = 3

    async def _call(
        self,
        name: str,
        method: Callable[..., Awaitable[_Response]],
        request: Message,
        *,
        within: float | None = None,
    ) -> _Response:
        """``request`` through the stub's ``method`` (``name`` in logs); refreshes a refused token
        once, retries a busy reservation."""
        refreshed = False
        attempt = 0
        while True:
            try:
                async with map_rpc_errors():
                    return await method(request, timeout=within or self.timeout)
            except OrdersError:
                raise
            except MercatoError as error:
                if error.kind is ErrorKind.UNAUTHENTICATED and not refreshed:
                    refreshed = True
                    self.tokens.invalidate()
                    continue
                if error.kind is ErrorKind.ABORTED and attempt < self.busy_retries:
                    # RESERVATION_IN_PROGRESS: another step on the same reservation is half-way.
                    attempt += 1
                    await asyncio.sleep(0.05 * 2**attempt)
                    continue
                if error.kind in _UNAVAILABLE_KINDS or error.kind is ErrorKind.ABORTED:
                    log.warning("catalog %s failed: %s %s", name, error.kind.value, error.reason)
                    raise CatalogUnavailable() from error
                raise

    async def products(self, skus: Sequence[str]) -> dict[str, ProductInfo]:
        """Current name, price, state and availability of ``skus`` (unknown ones are absent)."""
        request = catalog_pb2.BatchGetProductsRequest(skus=list(skus))
        response = await self._call("BatchGetProducts", self.stub.BatchGetProducts, request)
        return _product_infos(response.products)

    async def reserve(self, order_id: str, lines: Sequence[RequestedLine]) -> ReservationInfo:
        """Reserve every line under ``order_id`` or none.

        :class:`StockUnavailable` (nothing reserved), :class:`ReservationClosedError` (the order
        id was released before), :class:`CatalogUnavailable` (outcome unknown).
        """
        request = catalog_pb2.ReserveStockRequest(
            order_id=order_id,
            lines=[
                catalog_pb2.ReservationLine(sku=line.sku, quantity=line.quantity) for line in lines
            ],
        )
        try:
            response = await self._call("ReserveStock", self.stub.ReserveStock, request)
        except MercatoError as error:
            if error.reason == "STOCK_UNAVAILABLE":
                raise StockUnavailable(_shortages(error)) from error
            if error.reason == "RESERVATION_CLOSED":
                raise ReservationClosedError(order_id) from error
            if isinstance(error, OrdersError):
                raise
            # RESERVATION_MISMATCH and the like: not a state this service creates.
            log.error("unexpected ReserveStock refusal for %s: %r", order_id, error)
            raise CatalogUnavailable() from error
        return replace(
            _reservation(response.reservation), products=_product_infos(response.products)
        )

    async def release(
        self, order_id: str, reason: str, *, within: float | None = None
    ) -> ReservationInfo:
        """Give the order's stock back (idempotent; an unknown order gets a closed record)."""
        request = catalog_pb2.ReleaseStockRequest(order_id=order_id, reason=reason[:200])
        response = await self._call("ReleaseStock", self.stub.ReleaseStock, request, within=within)
        return _reservation(response.reservation)

    async def commit(self, order_id: str) -> ReservationInfo:
        """Turn the held stock into a sale; :class:`ReservationClosedError` if it is gone."""
        request = catalog_pb2.CommitReservationRequest(order_id=order_id)
        try:
            response = await self._call("CommitReservation", self.stub.CommitReservation, request)
        except MercatoError as error:
            if error.reason in ("RESERVATION_CLOSED", "RESERVATION_NOT_FOUND"):
                raise ReservationClosedError(order_id) from error
            raise
        return _reservation(response.reservation)

    async def reservation(self, order_id: str) -> ReservationInfo | None:
        request = catalog_pb2.GetReservationRequest(order_id=order_id)
        try:
            response = await self._call("GetReservation", self.stub.GetReservation, request)
        except MercatoError as error:
            if error.kind is ErrorKind.NOT_FOUND:
                return None
            raise
        return _reservation(response.reservation)

    async def held_before(
        self,
        created_before: datetime,
        page_token: str = "",
        page_size: int = 1000,
        *,
        created_after: datetime | None = None,
    ) -> tuple[list[ReservationInfo], str]:
        """A page of HELD reservations created before ``created_before`` (and at or after
        ``created_after``, if given), oldest first."""
        request = catalog_pb2.ListReservationsRequest(
            page_size=page_size,
            page_token=page_token,
            state=catalog_pb2.RESERVATION_STATE_HELD,
            created_before=timestamp(created_before),
        )
        if created_after is not None:
            request.created_after.CopyFrom(timestamp(created_after))

        response = await self._call("ListReservations", self.stub.ListReservations, request)
        return [_reservation(r) for r in response.reservations], response.next_page_token


def issue_with(
    stub: Any, *, client_id: str, client_secret: str, scope: str, timeout: float
) -> Callable[[], Awaitable[TokenGrant]]:
    """``issue`` for :class:`ServiceTokens`: auth's IssueToken with client credentials."""
    from mercato.auth.v1 import auth_pb2

    async def issue() -> TokenGrant:
        request = auth_pb2.IssueTokenRequest(
            grant_type="client_credentials",
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
        )
        async with map_rpc_errors():
            response = await stub.IssueToken(request, timeout=timeout)
        return TokenGrant(response.access_token, float(response.expires_in))

    return issue
