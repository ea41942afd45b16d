"""Unit tests of mercato_common.mongo: index specifications and ensure_indexes' decisions."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import OperationFailure

from mercato_common.mongo import IndexConflictError, IndexSpec, MongoStore, ensure_indexes
from mercato_common.settings import MongoSettings


def test_index_spec_shorthand() -> None:
    spec = IndexSpec.of("by_sku", "sku", ("created_at", -1), unique=True)
    assert spec.keys == (("sku", 1), ("created_at", -1))
    assert spec.unique


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "", "keys": (("a", 1),)},
        {"name": "x", "keys": ()},
        {"name": "x", "keys": (("a", 2),)},
        {"name": "x", "keys": (("a", 1),), "options": {"expireAfterSeconds": 5}},
        {"name": "x", "keys": (("a", 1),), "options": {"partialFilterExpression": {}}},
        {"name": "x", "keys": (("a", 1),), "options": {"unique": True}},
    ],
)
def test_index_spec_rejects_bad_or_unportable_definitions(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        IndexSpec(**kwargs)


def test_index_spec_matches_index_information() -> None:
    spec = IndexSpec.of("by_sku", "sku", unique=True)
    assert spec.matches({"key": [("sku", 1)], "unique": True, "v": 2})
    assert not spec.matches({"key": [("sku", 1)], "v": 2})
    assert not spec.matches({"key": [("sku", -1)], "unique": True})
    assert IndexSpec.of("n", "a").matches({"key": [("a", 1.0)]})  # servers may send doubles


class FakeCollection:
    def __init__(self, existing: dict[str, Any], fail: OperationFailure | None = None) -> None:
        self.existing = existing
        self.created: list[tuple[list[tuple[str, int]], dict[str, Any]]] = []
        self.dropped: list[str] = []
        self.fail = fail

    async def index_information(self) -> dict[str, Any]:
        return self.existing

    async def create_index(self, keys: list[tuple[str, int]], **kwargs: Any) -> str:
        if self.fail is not None:
            raise self.fail
        self.created.append((keys, kwargs))
        self.existing[kwargs["name"]] = {"key": keys, "unique": kwargs["unique"]}
        return str(kwargs["name"])

    async def drop_index(self, name: str) -> None:
        if name not in self.existing:
            raise OperationFailure(f"index not found with name [{name}]", code=27)
        self.dropped.append(name)
        del self.existing[name]


class FakeDb:
    def __init__(self, collections: dict[str, FakeCollection]) -> None:
        self.collections = collections

    def __getitem__(self, name: str) -> FakeCollection:
        return self.collections[name]


async def test_ensure_indexes_creates_only_missing_ones() -> None:
    products = FakeCollection(
        {"_id_": {"key": [("_id", 1)]}, "by_sku": {"key": [("sku", 1)], "unique": True}}
    )
    db = FakeDb({"products": products})
    created = await ensure_indexes(
        db,  # type: ignore[arg-type]
        {
            "products": [
                IndexSpec.of("by_sku", "sku", unique=True),
                IndexSpec.of("by_cat", "category"),
            ]
        },
    )
    assert created == ["products.by_cat"]
    assert products.created == [([("category", 1)], {"name": "by_cat", "unique": False})]


async def test_ensure_indexes_reports_a_changed_definition() -> None:
    db = FakeDb({"p": FakeCollection({"by_sku": {"key": [("sku", 1)]}})})
    with pytest.raises(IndexConflictError, match=r"p\.by_sku exists"):
        await ensure_indexes(db, {"p": [IndexSpec.of("by_sku", "sku", unique=True)]})  # type: ignore[arg-type]


async def test_ensure_indexes_maps_server_conflicts() -> None:
    failure = OperationFailure("Index already exists with a different name", code=85)
    db = FakeDb({"p": FakeCollection({}, fail=failure)})
    with pytest.raises(IndexConflictError):
        await ensure_indexes(db, {"p": [IndexSpec.of("other", "sku")]})  # type: ignore[arg-type]
    other = OperationFailure("unauthorized", code=13)
    db = FakeDb({"p": FakeCollection({}, fail=other)})
    with pytest.raises(OperationFailure):
        await ensure_indexes(db, {"p": [IndexSpec.of("other", "sku")]})  # type: ignore[arg-type]


async def test_ensure_indexes_drops_the_retired_indexes_still_there() -> None:
    sagas = FakeCollection(
        {"_id_": {"key": [("_id", 1)]}, "phase_minute": {"key": [("phase", 1), ("minute", 1)]}}
    )
    db = FakeDb({"sagas": sagas})
    specs = {"sagas": [IndexSpec.of("minute_phase", "minute", "phase")]}
    retired = {"sagas": ["phase_minute", "never_created"]}
    created = await ensure_indexes(db, specs, retired)  # type: ignore[arg-type]
    assert created == ["sagas.minute_phase"]
    assert sagas.dropped == ["phase_minute"]  # one that is not there is not dropped
    assert await ensure_indexes(db, specs, retired) == []  # type: ignore[arg-type]
    assert sagas.dropped == ["phase_minute"]
    with pytest.raises(ValueError, match="declared and retired"):
        await ensure_indexes(db, specs, {"sagas": ["minute_phase"]})  # type: ignore[arg-type]


async def test_ensure_indexes_rejects_duplicate_names() -> None:
    db = FakeDb({"p": FakeCollection({})})
    with pytest.raises(ValueError, match="duplicate"):
        await ensure_indexes(db, {"p": [IndexSpec.of("x", "a"), IndexSpec.of("x", "b")]})  # type: ignore[arg-type]


async def test_store_client_is_bounded_by_the_pool_setting() -> None:
    """At most MONGO_MAX_POOL_SIZE operations in flight per process (PyMongo's own default is
    100); nothing connects here."""
    default = MongoSettings(mongo_database="t")
    assert default.mongo_max_pool_size == 20
    store = MongoStore(
        MongoSettings(mongo_database="t", mongo_max_pool_size=7), appname="test", indexes={}
    )
    try:
        assert store.client.options.pool_options.max_pool_size == 7
    finally:
        await store.client.close()
