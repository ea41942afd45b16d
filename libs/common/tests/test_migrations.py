"""Unit tests of mercato_common.migrations: files, checksums, planning, the run protocol."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from mercato_common.migrations import (
    AppliedMigration,
    ChecksumMismatchError,
    Migration,
    MigrationError,
    advisory_lock_key,
    checksum,
    load_migrations,
    migrate,
    plan,
    validate_identifier,
)


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def applied(*migrations: Migration) -> dict[int, AppliedMigration]:
    return {m.version: AppliedMigration(m.version, m.name, m.checksum) for m in migrations}


def test_load_orders_by_version_and_ignores_other_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "0010_add_index.sql": "CREATE INDEX i ON t (a);",
            "0002_create_t.sql": "CREATE TABLE t (a int);",
            "README.md": "not a migration",
        },
    )
    (tmp_path / "subdir.sql").mkdir()
    migrations = load_migrations(tmp_path)
    assert [(m.version, m.name) for m in migrations] == [(2, "create_t"), (10, "add_index")]
    assert migrations[0].label == "0002_create_t"
    assert migrations[0].transactional


@pytest.mark.parametrize("name", ["1_x.sql", "0001-x.sql", "0001_X.sql", "abcd_x.sql", "0001_.sql"])
def test_load_rejects_badly_named_files(tmp_path: Path, name: str) -> None:
    write(tmp_path, {name: "SELECT 1;"})
    with pytest.raises(MigrationError, match="NNNN_name"):
        load_migrations(tmp_path)


def test_load_rejects_duplicate_versions(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.sql": "SELECT 1;", "00001_b.sql": "SELECT 2;"})
    with pytest.raises(MigrationError, match="two migrations with version 1"):
        load_migrations(tmp_path)


def test_load_rejects_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="no migrations directory"):
        load_migrations(tmp_path / "nope")


def test_load_rejects_empty_files(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.sql": "  \n"})
    with pytest.raises(ValueError, match="empty"):
        load_migrations(tmp_path)


def test_checksum_ignores_line_ending_style() -> None:
    assert checksum("a\nb\n") == checksum("a\r\nb\r\n") == checksum("a\rb\r")
    assert checksum("a\nb\n") != checksum("a\nb")


def test_no_transaction_marker() -> None:
    m = Migration.from_sql(
        3, "idx", "-- mercato:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);"
    )
    assert not m.transactional
    assert Migration.from_sql(3, "idx", "SELECT 1; -- mercato:no-transaction").transactional


def test_plan_returns_pending_in_order() -> None:
    a, b, c = (Migration.from_sql(v, f"m{v}", f"SELECT {v};") for v in (1, 2, 3))
    assert plan([c, a, b], {}) == [a, b, c]
    assert plan([a, b, c], applied(a)) == [b, c]
    assert plan([a, b, c], applied(a, b, c)) == []


def test_plan_refuses_an_edited_applied_migration() -> None:
    a = Migration.from_sql(1, "a", "SELECT 1;")
    edited = Migration.from_sql(1, "a", "SELECT 2;")
    with pytest.raises(ChecksumMismatchError, match="0001_a was changed"):
        plan([edited], applied(a))


def test_plan_refuses_unknown_applied_versions_unless_allowed() -> None:
    a, b = (Migration.from_sql(v, f"m{v}", f"SELECT {v};") for v in (1, 2))
    with pytest.raises(MigrationError, match="no file here"):
        plan([a], applied(a, b))
    assert plan([a], applied(a, b), allow_unknown_applied=True) == []


def test_plan_refuses_a_new_migration_below_the_applied_ones() -> None:
    a, b, c = (Migration.from_sql(v, f"m{v}", f"SELECT {v};") for v in (1, 2, 3))
    with pytest.raises(MigrationError, match="numbered below"):
        plan([a, b, c], applied(a, c))


def test_identifiers_and_lock_keys() -> None:
    assert validate_identifier("schema_migrations") == "schema_migrations"
    assert validate_identifier("s.t") == "s.t"
    for bad in ("T", "t;drop", "a.b.c", "", "9a"):
        with pytest.raises(ValueError, match="identifier"):
            validate_identifier(bad)
    key = advisory_lock_key("ns", "x")
    assert key == advisory_lock_key("ns", "x") != advisory_lock_key("ns", "y")
    assert -(2**63) <= key < 2**63


class FakeConn:
    """Records the protocol: lock, table, reads, one transaction per file, unlock."""

    def __init__(self, rows: list[dict[str, Any]] | None = None, lock_free_after: int = 0) -> None:
        self.rows = rows or []
        self.lock_tries = 0
        self.lock_free_after = lock_free_after
        self.log: list[str] = []
        self.fail_on: str | None = None

    def is_in_transaction(self) -> bool:
        return False

    def is_closed(self) -> bool:
        return False

    async def fetchval(self, query: str, *args: Any) -> bool:
        assert "pg_try_advisory_lock" in query
        self.lock_tries += 1
        return self.lock_tries > self.lock_free_after

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        self.log.append("read")
        return self.rows

    async def execute(self, query: str, *args: Any) -> str:
        if self.fail_on and self.fail_on in query:
            raise RuntimeError("syntax error")
        if "pg_advisory_unlock" in query:
            self.log.append("unlock")
        elif query.startswith("CREATE TABLE IF NOT EXISTS schema_migrations"):
            self.log.append("table")
        elif query.startswith("INSERT INTO schema_migrations"):
            self.log.append(f"record {args[0]}")
        else:
            self.log.append(f"sql {query}")
        return "OK"

    @asynccontextmanager
    async def transaction(self) -> Any:
        self.log.append("begin")
        try:
            yield
        except BaseException:
            self.log.append("rollback")
            raise
        self.log.append("commit")


async def test_migrate_applies_each_file_in_its_own_transaction(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.sql": "SELECT 1;", "0002_b.sql": "SELECT 2;"})
    conn = FakeConn()
    done = await migrate(conn, tmp_path)
    assert [m.version for m in done] == [1, 2]
    assert conn.log == [
        "table",
        "read",
        "begin",
        "sql SELECT 1;",
        "record 1",
        "commit",
        "begin",
        "sql SELECT 2;",
        "record 2",
        "commit",
        "unlock",
    ]


async def test_migrate_skips_applied_and_runs_marked_files_without_transaction() -> None:
    a = Migration.from_sql(1, "a", "SELECT 1;")
    b = Migration.from_sql(
        2, "b", "-- mercato:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);"
    )
    conn = FakeConn(rows=[{"version": 1, "name": "a", "checksum": a.checksum, "applied_at": None}])
    assert await migrate(conn, [a, b]) == [b]
    assert "begin" not in conn.log
    assert conn.log[-2:] == ["record 2", "unlock"]


async def test_migrate_waits_for_the_lock_then_gives_up() -> None:
    conn = FakeConn(lock_free_after=2)
    assert await migrate(conn, [Migration.from_sql(1, "a", "SELECT 1;")], lock_wait=5) != []
    assert conn.lock_tries == 3

    blocked = FakeConn(lock_free_after=10**9)
    with pytest.raises(MigrationError, match="held the lock"):
        await migrate(blocked, [Migration.from_sql(1, "a", "SELECT 1;")], lock_wait=0.2)
    assert "table" not in blocked.log  # nothing ran without the lock


async def test_migrate_failure_rolls_back_that_file_and_releases_the_lock() -> None:
    conn = FakeConn()
    conn.fail_on = "BROKEN"
    migrations = [Migration.from_sql(1, "a", "SELECT 1;"), Migration.from_sql(2, "b", "BROKEN")]
    with pytest.raises(MigrationError, match="0002_b failed"):
        await migrate(conn, migrations)
    assert conn.log[-3:] == ["begin", "rollback", "unlock"]
    assert "record 2" not in conn.log


async def test_migrate_checks_history_before_applying_anything() -> None:
    a = Migration.from_sql(1, "a", "SELECT 1;")
    conn = FakeConn(rows=[{"version": 1, "name": "a", "checksum": "0" * 64, "applied_at": None}])
    with pytest.raises(ChecksumMismatchError):
        await migrate(conn, [a, Migration.from_sql(2, "b", "SELECT 2;")])
    assert "begin" not in conn.log
    assert conn.log[-1] == "unlock"
