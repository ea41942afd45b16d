"""MongoDB-wire round trips with PyMongo's async API against FerretDB (or MongoDB 7).

Only what both support: no multi-document transactions, no $lookup, no text indexes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from mercato_devstack.config import FERRETDB_DATABASE
from mercato_devstack.testing import Backends

pytestmark = pytest.mark.integration

Doc = dict[str, Any]


@pytest_asyncio.fixture(loop_scope="session")
async def db(mongo_uri: str, mongo_db_name: str) -> AsyncIterator[AsyncDatabase[Doc]]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        yield client[mongo_db_name]
    finally:
        await client.close()


PRODUCTS: list[Doc] = [
    {"sku": "A-1", "name": "Espresso cup", "category": "kitchen", "price": 900, "stock": 10},
    {"sku": "A-2", "name": "Teapot", "category": "kitchen", "price": 2500, "stock": 3},
    {"sku": "B-1", "name": "Notebook", "category": "office", "price": 450, "stock": 0},
    {"sku": "B-2", "name": "Pen", "category": "office", "price": 150, "stock": 100},
    {"sku": "C-1", "name": "Lamp", "category": "home", "price": 4000, "stock": 5},
]


async def test_insert_find_update_and_aggregate(db: AsyncDatabase[Doc]) -> None:
    products = db["products"]
    result = await products.insert_many([dict(p) for p in PRODUCTS])
    assert len(result.inserted_ids) == len(PRODUCTS)

    found = (
        await products.find({"category": "kitchen"}, projection={"_id": False, "sku": True})
        .sort("price", ASCENDING)
        .to_list()
    )
    assert found == [{"sku": "A-1"}, {"sku": "A-2"}]

    # An atomic single-document conditional update, as a stock reservation does it.
    reserved = await products.find_one_and_update(
        {"sku": "A-2", "stock": {"$gte": 2}},
        {"$inc": {"stock": -2}, "$set": {"reserved": True}},
        return_document=ReturnDocument.AFTER,
    )
    assert reserved is not None
    assert reserved["stock"] == 1
    assert reserved["reserved"] is True
    refused = await products.update_one(
        {"sku": "A-2", "stock": {"$gte": 2}}, {"$inc": {"stock": -2}}
    )
    assert refused.matched_count == 0

    totals = await (
        await products.aggregate(
            [
                {"$match": {"stock": {"$gt": 0}}},
                {"$group": {"_id": "$category", "value": {"$sum": "$price"}, "count": {"$sum": 1}}},
                {"$sort": {"value": -1}},
            ]
        )
    ).to_list()
    assert totals == [
        {"_id": "home", "value": 4000, "count": 1},
        {"_id": "kitchen", "value": 3400, "count": 2},
        {"_id": "office", "value": 150, "count": 1},
    ]


async def test_unique_index_rejects_a_duplicate(db: AsyncDatabase[Doc]) -> None:
    products = db["products"]
    await products.create_index([("sku", ASCENDING)], unique=True, name="sku_unique")
    await products.insert_one({"sku": "A-1", "name": "first"})
    with pytest.raises(DuplicateKeyError):
        await products.insert_one({"sku": "A-1", "name": "second"})
    assert await products.count_documents({"sku": "A-1"}) == 1
    indexes = await products.index_information()
    assert indexes["sku_unique"]["unique"] is True


async def test_each_test_gets_its_own_database(
    mongo_uri: str, mongo_db_name: str, db: AsyncDatabase[Doc]
) -> None:
    assert db.name == mongo_db_name
    assert await db.list_collection_names() == []


async def test_an_equality_on_an_indexed_field_is_served_by_an_index(
    backends: Backends, db: AsyncDatabase[Doc]
) -> None:
    """FerretDB filters an equality as ``_jsonb->'field' @> value``, which its btree indexes
    cannot serve: the local build gives the leading field of each index but _id a GIN twin that
    does (one per field, dropped with the last index leading with it), and filters _id with
    ``=``, which its btree serves. PostgreSQL's own index statistics show the finds use them."""
    if backends.stack is None:
        pytest.skip("the document store is not the local FerretDB")
    products = db["products"]
    await products.create_index([("category", ASCENDING)], name="by_category")
    await products.create_index([("category", ASCENDING), ("price", ASCENDING)], name="by_price")
    await products.insert_many([dict(p, _id=p["sku"]) for p in PRODUCTS])
    connection = await asyncpg.connect(backends.stack.config.postgres_dsn(FERRETDB_DATABASE))

    async def scans() -> dict[str, int]:
        rows = await connection.fetch(
            "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE schemaname = $1",
            db.name,
        )
        return {row["indexrelname"]: row["idx_scan"] for row in rows}

    try:
        before = await scans()
        twins = [name for name in before if name.endswith("_gin")]
        assert len(twins) == 1  # category's, shared by both indexes; _id has none
        (id_index,) = [name for name in before if "__id_" in name]
        used: set[str] = set()
        deadline = asyncio.get_running_loop().time() + 20
        # Index statistics reach the view within about a second of each statement.
        while used != {twins[0], id_index} and asyncio.get_running_loop().time() < deadline:
            assert len(await products.find({"category": "kitchen"}).to_list()) == 2
            assert (await products.find_one({"_id": "B-1"}) or {}).get("name") == "Notebook"
            await asyncio.sleep(0.5)
            now = await scans()
            used = {name for name in (twins[0], id_index) if now[name] > before[name]}
        assert used == {twins[0], id_index}

        await products.drop_index("by_category")
        assert [name for name in await scans() if name.endswith("_gin")] == twins  # by_price
        await products.drop_index("by_price")
        assert not [name for name in await scans() if name.endswith("_gin")]
    finally:
        await connection.close()
