"""Domain rules: the state machine, request fingerprints, money, lines, visibility, paging."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mercato_common.errors import ErrorKind
from mercato_orders.domain.errors import (
    AmountMismatch,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidPageToken,
    InvalidRequest,
    InvalidStateTransition,
    MixedCurrencies,
    OrderNotFound,
    PermissionRequired,
    ProductLimitExceeded,
    ShortageKind,
    StockUnavailable,
    TooManyOpenOrders,
    TotalTooLarge,
)
from mercato_orders.domain.model import (
    INT64_MAX,
    SYSTEM_ACTOR,
    TRANSITIONS,
    Money,
    Order,
    OrderLine,
    OrderState,
    RequestedLine,
    can_transition,
    sum_money,
    transition,
)
from mercato_orders.domain.rules import (
    OrderFilter,
    PageToken,
    ProductInfo,
    UserHoldings,
    UserLimits,
    Viewer,
    cancel,
    check_amount,
    check_idempotency_key,
    check_lines,
    check_payable,
    check_user_limits,
    decode_page_token,
    encode_page_token,
    fail,
    fulfil,
    list_filter,
    new_order,
    page_size,
    pay,
    price_lines,
    request_fingerprint,
    visible,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
USER = "0b7a4c1e-1111-4222-8333-444455556666"
OTHER = "9f7a4c1e-1111-4222-8333-444455556666"
ORDER_ID = "5d4f5b5e-7a0b-4a35-9a43-1f1a2b3c4d5e"
S = OrderState


def eur(minor: int) -> Money:
    return Money("EUR", minor)


def placed(**changes: object) -> Order:
    order = new_order(
        order_id=ORDER_ID,
        user_id=USER,
        idempotency_key="k-1",
        lines=[OrderLine("MUG-1", 2, "Mug", eur(1250)), OrderLine("TEA-1", 1, "Tea", eur(399))],
        total=eur(2899),
        accepted_at=T0,
        confirmed_at=T0 + timedelta(milliseconds=20),
    )
    return order.changed(**changes) if changes else order


# --- the state machine ------------------------------------------------------------------------

LEGAL = {
    (None, S.PENDING),
    (S.PENDING, S.CONFIRMED),
    (S.PENDING, S.CANCELLED),
    (S.PENDING, S.FAILED),
    (S.CONFIRMED, S.PAID),
    (S.CONFIRMED, S.CANCELLED),
    (S.CONFIRMED, S.FAILED),
    (S.PAID, S.FULFILLED),
    (S.PAID, S.CANCELLED),
}


@pytest.mark.parametrize(
    ("current", "target"), list(itertools.product([None, *OrderState], list(OrderState)))
)
def test_transition_table(current: OrderState | None, target: OrderState) -> None:
    assert can_transition(current, target) == ((current, target) in LEGAL)


def test_terminal_states() -> None:
    assert {s for s in OrderState if s.terminal} == {S.FULFILLED, S.CANCELLED, S.FAILED}
    assert set(TRANSITIONS) == {None, *OrderState}


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (c, t)
        for c, t in itertools.product(list(OrderState), list(OrderState))
        if (c, t) not in LEGAL
    ],
)
def test_illegal_transition_names_the_current_state(
    current: OrderState, target: OrderState
) -> None:
    order = placed(state=current)
    with pytest.raises(InvalidStateTransition) as caught:
        transition(order, target, actor=USER, now=T0, action="move")
    error = caught.value
    assert error.kind is ErrorKind.FAILED_PRECONDITION
    assert error.reason == "INVALID_STATE_TRANSITION"
    assert error.metadata == {"current_state": f"ORDER_STATE_{current.value}"}
    assert error.error_domain == "orders.mercato"


def test_transition_records_time_actor_and_reason() -> None:
    order = placed()
    later = T0 + timedelta(minutes=1)
    moved = transition(order, S.CANCELLED, actor=USER, now=later, action="cancel", reason="why")
    assert moved.state is S.CANCELLED
    assert moved.history[-1].from_state is S.CONFIRMED
    assert (moved.history[-1].time, moved.history[-1].actor, moved.history[-1].reason) == (
        later,
        USER,
        "why",
    )
    assert moved.version == order.version + 1
    assert moved.update_time == later
    assert order.state is S.CONFIRMED  # immutable


def test_new_order_is_confirmed_with_its_pending_and_confirmed_history() -> None:
    order = placed()
    assert order.state is S.CONFIRMED
    assert [(h.from_state, h.to_state, h.actor) for h in order.history] == [
        (None, S.PENDING, USER),
        (S.PENDING, S.CONFIRMED, SYSTEM_ACTOR),
    ]
    assert order.create_time == T0


def test_pay_cancel_fulfil_fail() -> None:
    order = placed()
    check_payable(order)
    paid = pay(order, payment_id="pay_1", actor=USER, now=T0)
    assert (paid.state, paid.payment_id) == (S.PAID, "pay_1")
    with pytest.raises(InvalidStateTransition):
        check_payable(paid)

    cancelled = cancel(paid, actor=USER, reason="", now=T0)
    assert cancelled is not None
    assert (cancelled.state, cancelled.release_pending, cancelled.refund_pending) == (
        S.CANCELLED,
        True,
        True,
    )
    assert cancelled.state_reason == "cancelled"
    assert cancel(cancelled, actor=USER, reason="again", now=T0) is None  # idempotent

    unpaid = cancel(order, actor=USER, reason="no", now=T0)
    assert unpaid is not None
    assert (unpaid.release_pending, unpaid.refund_pending) == (True, False)

    shipped = fulfil(paid, actor="admin", shipment_reference="T-1", now=T0)
    assert shipped is not None
    assert (shipped.state, shipped.shipment_reference) == (S.FULFILLED, "T-1")
    assert fulfil(shipped, actor="admin", shipment_reference="T-2", now=T0) is None
    with pytest.raises(InvalidStateTransition):
        cancel(shipped, actor=USER, reason="", now=T0)
    with pytest.raises(InvalidStateTransition):
        fulfil(order, actor="admin", shipment_reference="", now=T0)

    failed = fail(order, reason="stock reservation expired", now=T0)
    assert (failed.state, failed.history[-1].actor) == (S.FAILED, SYSTEM_ACTOR)
    with pytest.raises(InvalidStateTransition):
        fail(paid, reason="x", now=T0)


def test_amount_must_equal_the_total() -> None:
    order = placed()
    check_amount(order, eur(2899))
    for wrong in (eur(2898), Money("USD", 2899)):
        with pytest.raises(AmountMismatch) as caught:
            check_amount(order, wrong)
        assert caught.value.metadata == {
            "expected_currency_code": "EUR",
            "expected_amount_minor": "2899",
        }


# --- request fingerprints ---------------------------------------------------------------------


def lines(*pairs: tuple[str, int]) -> list[RequestedLine]:
    return [RequestedLine(s, q) for s, q in pairs]


def test_fingerprint_ignores_line_order_only() -> None:
    a = request_fingerprint(lines(("A-1", 1), ("B-2", 2)))
    assert a == request_fingerprint(lines(("B-2", 2), ("A-1", 1)))
    assert a.startswith("v1:")
    assert a != request_fingerprint(lines(("A-1", 1), ("B-2", 3)))
    assert a != request_fingerprint(lines(("A-1", 1)))
    assert a != request_fingerprint(lines(("A-1", 1), ("B-2", 2), ("C-3", 1)))
    assert a != request_fingerprint(lines(("A-1", 1), ("B-3", 2)))
    # No ambiguity between SKUs and quantities.
    assert request_fingerprint(lines(("A-12", 3))) != request_fingerprint(lines(("A-1", 23)))


def test_check_lines_refuses_duplicates_and_bounds() -> None:
    assert check_lines(lines(("A-1", 1), ("B-2", 1000))) == tuple(lines(("A-1", 1), ("B-2", 1000)))
    with pytest.raises(InvalidRequest) as caught:
        check_lines(lines(("A-1", 1), ("B-2", 0), ("A-1", 2), ("bad sku", 1001)))
    fields = [v.field for v in caught.value.field_violations]
    assert fields == [
        "order.lines[1].quantity",
        "order.lines[2].sku",
        "order.lines[3].sku",
        "order.lines[3].quantity",
    ]
    assert "distinct" in caught.value.field_violations[1].description
    with pytest.raises(InvalidRequest):
        check_lines([])
    with pytest.raises(InvalidRequest):
        check_lines(lines(*((f"SKU-{i}", 1) for i in range(101))))
    check_lines(lines(*((f"SKU-{i}", 1) for i in range(100))))


def test_idempotency_key_shape() -> None:
    assert check_idempotency_key("abc-123_!~") == "abc-123_!~"
    for bad in ("", "with space", "x" * 256, "é"):
        with pytest.raises(InvalidRequest):
            check_idempotency_key(bad)


# --- money and pricing ------------------------------------------------------------------------


def test_money_is_integer_minor_units() -> None:
    assert eur(1250).times(3) == eur(3750)
    assert sum_money([eur(1), eur(2), eur(3)]) == eur(6)
    with pytest.raises(TypeError):
        Money("EUR", 12.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money("EUR", True)
    with pytest.raises(ValueError, match="currencies"):
        eur(1).plus(Money("USD", 1))
    with pytest.raises(TotalTooLarge):
        Money("EUR", INT64_MAX).plus(eur(1))
    with pytest.raises(TotalTooLarge):
        Money("EUR", INT64_MAX // 2).times(3)
    assert Money("EUR", INT64_MAX).amount_minor == INT64_MAX


def product(
    sku: str, price: int, *, currency: str = "EUR", active: bool = True, available: int = 10
) -> ProductInfo:
    return ProductInfo(sku, f"Product {sku}", Money(currency, price), active, available)


def test_price_lines_uses_catalog_prices() -> None:
    priced, total = price_lines(
        lines(("A-1", 2), ("B-2", 3)), {"A-1": product("A-1", 1250), "B-2": product("B-2", 399)}
    )
    assert [(line.sku, line.unit_price, line.line_total) for line in priced] == [
        ("A-1", eur(1250), eur(2500)),
        ("B-2", eur(399), eur(1197)),
    ]
    assert total == eur(3697)


def test_price_lines_names_every_refused_line() -> None:
    products = {
        "ARCH-1": product("ARCH-1", 1, active=False),
        "LOW-1": product("LOW-1", 1, available=1),
        "OK-1": product("OK-1", 1),
    }
    with pytest.raises(StockUnavailable) as caught:
        price_lines(lines(("OK-1", 1), ("GONE-1", 1), ("ARCH-1", 1), ("LOW-1", 2)), products)
    error = caught.value
    assert [(s.sku, s.kind) for s in error.shortages] == [
        ("GONE-1", ShortageKind.NOT_FOUND),
        ("ARCH-1", ShortageKind.ARCHIVED),
        ("LOW-1", ShortageKind.OUT_OF_STOCK),
    ]
    assert error.metadata == {
        "skus": "GONE-1,ARCH-1,LOW-1",
        "types": "NOT_FOUND,ARCHIVED,OUT_OF_STOCK",
    }
    assert error.kind is ErrorKind.FAILED_PRECONDITION
    # Availability is advisory and can be skipped (a taken-over create may hold the stock).
    price_lines(lines(("LOW-1", 2)), products, check_availability=False)


def test_mixed_currencies_and_overflow_are_refused() -> None:
    with pytest.raises(MixedCurrencies) as caught:
        price_lines(
            lines(("A-1", 1), ("B-2", 1)),
            {"A-1": product("A-1", 1), "B-2": product("B-2", 1, currency="USD")},
        )
    assert caught.value.metadata == {"currencies": "EUR,USD"}
    huge = {f"H-{i}": product(f"H-{i}", INT64_MAX // 1000, available=1000) for i in range(2)}
    with pytest.raises(TotalTooLarge):
        price_lines(lines(("H-0", 1000), ("H-1", 1000)), huge)


# --- reading ----------------------------------------------------------------------------------


def test_visibility() -> None:
    order = placed()
    assert visible(order, Viewer(USER))
    assert not visible(order, Viewer(OTHER))
    assert visible(order, Viewer(OTHER, admin=True))


def test_list_filter_scopes() -> None:
    assert (
        list_filter(
            Viewer(USER), user_id="", state=None, created_after=None, created_before=None
        ).user_id
        == USER
    )
    admin = Viewer(OTHER, admin=True)
    assert (
        list_filter(admin, user_id="-", state=None, created_after=None, created_before=None).user_id
        is None
    )
    assert list_filter(
        admin, user_id=USER.upper(), state=S.PAID, created_after=None, created_before=None
    ) == OrderFilter(USER, S.PAID)
    for user_id in ("-", USER):
        with pytest.raises(PermissionRequired) as caught:
            list_filter(
                Viewer(USER), user_id=user_id, state=None, created_after=None, created_before=None
            )
        assert caught.value.kind is ErrorKind.PERMISSION_DENIED
    with pytest.raises(InvalidRequest):
        list_filter(Viewer(USER), user_id="", state=None, created_after=T0, created_before=T0)


def test_page_tokens_are_bound_to_their_filters() -> None:
    flt = OrderFilter(USER, S.CONFIRMED)
    token = encode_page_token(PageToken(T0, ORDER_ID), flt)
    assert decode_page_token(token, flt) == PageToken(T0, ORDER_ID)
    assert decode_page_token("", flt) is None
    for other in (
        OrderFilter(USER),
        OrderFilter(None, S.CONFIRMED),
        OrderFilter(OTHER, S.CONFIRMED),
    ):
        with pytest.raises(InvalidPageToken):
            decode_page_token(token, other)
    for garbage in ("!!", "e30", "bm90IGpzb24", token[:-3]):
        with pytest.raises(InvalidPageToken):
            decode_page_token(garbage, flt)
    assert page_size(0) == 20
    assert page_size(100) == 100
    assert page_size(101) == 100  # AIP-158: an oversize page is coerced, not refused
    with pytest.raises(InvalidRequest):
        page_size(-1)


def test_error_reasons_and_kinds() -> None:
    assert (OrderNotFound("x").kind, OrderNotFound("x").reason) == (
        ErrorKind.NOT_FOUND,
        "ORDER_NOT_FOUND",
    )
    assert (IdempotencyKeyReused().kind, IdempotencyKeyReused().reason) == (
        ErrorKind.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert (IdempotencyKeyInUse().kind, IdempotencyKeyInUse().reason) == (
        ErrorKind.ABORTED,
        "IDEMPOTENCY_KEY_IN_USE",
    )


def test_user_limits() -> None:
    limits = UserLimits(max_open_orders=3, max_units_per_product=5)
    lines = [RequestedLine("A-1", 2), RequestedLine("B-1", 1)]
    room = UserHoldings(open_orders=1, creates_in_progress=1, units={"A-1": 3})
    check_user_limits(lines, room, limits)  # 2 open + this one = 3; A-1: 3 + 2 = 5
    with pytest.raises(TooManyOpenOrders):
        check_user_limits(lines, replace(room, creates_in_progress=2), limits)
    with pytest.raises(ProductLimitExceeded) as caught:
        check_user_limits([RequestedLine("A-1", 3), RequestedLine("B-1", 6)], room, limits)
    assert caught.value.skus == ("A-1", "B-1")
    assert [v.subject for v in caught.value.precondition_violations] == ["A-1", "B-1"]
    check_user_limits(lines, UserHoldings(99, 99, {"A-1": 99}), UserLimits())  # no caps
    assert not UserLimits().any
