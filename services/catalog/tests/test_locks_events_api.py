"""Write locks, event envelopes and proto mapping (no network)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from mercato.catalog.events.v1 import events_pb2
from mercato.catalog.v1 import catalog_pb2
from mercato_catalog import publish
from mercato_catalog.convert import product_to_proto, reservation_to_proto
from mercato_catalog.domain.products import Money, Product, ProductState
from mercato_catalog.domain.reservations import Line, Phase, Reservation
from mercato_catalog.settings import CatalogSettings
from mercato_catalog.store.locks import WriteLocks
from mercato_common.kafka.envelope import unpack_data
from mercato_common.settings import SettingsError, load_settings

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _product(**overrides: object) -> Product:
    values: dict[str, object] = {
        "sku": "SKU-1",
        "name": "Mug",
        "description": "",
        "category_id": "kitchen",
        "price": Money("EUR", 1299),
        "attributes": {"colour": "red"},
        "state": ProductState.ACTIVE,
        "stock_on_hand": 10,
        "stock_reserved": 3,
        "etag": 'W/"2"',
        "version": 7,
        "create_time": NOW,
        "update_time": NOW,
    }
    values.update(overrides)
    return Product(**values)  # type: ignore[arg-type]


async def test_write_locks_serialize_one_document() -> None:
    locks = WriteLocks(enabled=True)
    active = 0
    peak = 0

    async def write() -> None:
        nonlocal active, peak
        async with locks.hold("products", "SKU-1"):
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.001)
            active -= 1

    await asyncio.gather(*(write() for _ in range(20)))
    assert peak == 1
    assert len(locks) == 0  # no lock kept for idle documents


async def test_disabled_write_locks_do_not_serialize() -> None:
    locks = WriteLocks(enabled=False)
    inside = 0
    peak = 0

    async def write() -> None:
        nonlocal inside, peak
        async with locks.hold("products", "SKU-1"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(write() for _ in range(5)))
    assert peak == 5


def test_product_updated_envelope() -> None:
    envelope = publish.product_updated(
        sku="SKU-1",
        changed_fields=["price", "name"],
        name="Mug",
        category_id="",
        old_price=Money("EUR", 1000),
        new_price=Money("EUR", 1200),
        etag='W/"3"',
        when=NOW,
    )
    assert (envelope.source, envelope.subject) == ("catalog", "SKU-1")
    assert envelope.type == "mercato.catalog.events.v1.ProductUpdated"
    data = unpack_data(envelope, events_pb2.ProductUpdated)
    assert list(data.changed_fields) == ["name", "price"]
    assert (data.old_price.amount_minor, data.new_price.amount_minor) == (1000, 1200)


def test_reservation_events_are_keyed_by_order() -> None:
    envelope = publish.stock_reserved("order-1", [Line("SKU-1", 2)], NOW, NOW)
    assert envelope.subject == "order-1"
    data = unpack_data(envelope, events_pb2.StockReserved)
    assert [(x.sku, x.quantity) for x in data.lines] == [("SKU-1", 2)]


def test_product_to_proto() -> None:
    message = product_to_proto(_product())
    assert message.stock_available == 7
    assert message.state == catalog_pb2.PRODUCT_STATE_ACTIVE
    assert message.price.amount_minor == 1299
    assert not message.HasField("archive_time")


def test_reservation_to_proto_shows_expiry_only_while_held() -> None:
    held = Reservation("o", (Line("SKU-1", 1),), Phase.HELD, "a", NOW, NOW, NOW)
    assert reservation_to_proto(held).HasField("expire_time")
    done = Reservation("o", (Line("SKU-1", 1),), Phase.COMMITTED, "a", NOW, NOW, None)
    message = reservation_to_proto(done)
    assert message.state == catalog_pb2.RESERVATION_STATE_COMMITTED
    assert not message.HasField("expire_time")


def test_settings_defaults_and_environment() -> None:
    with pytest.raises(SettingsError, match="MERCATO_CATALOG_KAFKA_BOOTSTRAP_SERVERS: is required"):
        load_settings(CatalogSettings, {})
    settings = load_settings(
        CatalogSettings,
        {
            "MERCATO_CATALOG_RESERVATION_TTL_SECONDS": "30",
            "MERCATO_CATALOG_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        },
    )
    assert (settings.grpc_port, settings.metrics_port) == (50062, 9462)
    assert settings.service_name == "catalog"
    assert settings.reservation_ttl_seconds == 30.0
    assert settings.events_topic == "mercato.catalog.events.v1"
