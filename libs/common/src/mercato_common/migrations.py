"""A PostgreSQL migration runner: ordered SQL files, each applied once, under an advisory lock.

A service keeps its migrations as ``NNNN_name.sql`` files in a package directory and runs them at
start (or from a job) with::

    applied = await migrate(conn, files("mercato_orders") / "migrations")

* Files are applied in version order, each in its own transaction together with its row in
  ``schema_migrations`` (version, name, checksum, applied_at): a failed file leaves no trace and
  the next run retries it.
* The whole run holds ``pg_advisory_lock`` on the connection, so replicas starting together
  apply each file exactly once; the others wait (bounded) and then find nothing to do.
* An applied file whose content changed (SHA-256 of the text with normalized line endings) is an
  error, as is an applied version missing locally or a new file numbered below an applied one:
  those mean that history was rewritten, which must be fixed by a person, not by the runner.
* A file whose first line is ``-- mercato:no-transaction`` runs outside a transaction (for
  ``CREATE INDEX CONCURRENTLY`` and the like); keep such a file to a single idempotent statement.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

__all__ = [
    "NO_TRANSACTION_MARKER",
    "AppliedMigration",
    "ChecksumMismatchError",
    "Migration",
    "MigrationError",
    "advisory_lock_key",
    "checksum",
    "load_migrations",
    "migrate",
    "plan",
    "validate_identifier",
]

log = logging.getLogger(__name__)

NO_TRANSACTION_MARKER = "-- mercato:no-transaction"
_FILE_NAME = re.compile(r"^(?P<version>\d{4,})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
# Lower-case SQL identifiers only, optionally schema-qualified: table names are interpolated into
# SQL text (they cannot be bind parameters), so nothing else is accepted.
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,50}(\.[a-z_][a-z0-9_]{0,50})?$")


class MigrationError(RuntimeError):
    """The migrations cannot be applied as they are; nothing further was applied."""


class ChecksumMismatchError(MigrationError):
    """An already applied migration file was edited."""


def validate_identifier(name: str) -> str:
    """``name`` if it is a plain lower-case (optionally schema-qualified) SQL identifier."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain lower-case SQL identifier: {name!r}")
    return name


def advisory_lock_key(namespace: str, name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_*lock`` derived from a name."""
    digest = hashlib.blake2b(f"{namespace}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def checksum(sql: str) -> str:
    """SHA-256 of the SQL text; line endings normalized so a CRLF checkout does not differ."""
    normalized = sql.replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalized.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str
    transactional: bool = True

    @classmethod
    def from_sql(cls, version: int, name: str, sql: str) -> Migration:
        if version < 1:
            raise ValueError("migration versions start at 1")
        if not sql.strip():
            raise ValueError(f"migration {version}_{name} is empty")
        first_line = sql.lstrip().split("\n", 1)[0].strip()
        return cls(
            version=version,
            name=name,
            sql=sql,
            checksum=checksum(sql),
            transactional=first_line != NO_TRANSACTION_MARKER,
        )

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime | None = None


def load_migrations(directory: Path | Traversable) -> list[Migration]:
    """The ``NNNN_name.sql`` files of ``directory`` in version order (other files are ignored).

    ``directory`` may be a path or an ``importlib.resources`` traversable, so migrations can ship
    inside the service's package.
    """
    if not directory.is_dir():
        raise MigrationError(f"no migrations directory at {directory}")
    migrations: list[Migration] = []
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql") or not entry.is_file():
            continue
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"migration file name must be NNNN_name.sql: {entry.name}")
        migrations.append(
            Migration.from_sql(
                int(match["version"]), match["name"], entry.read_text(encoding="utf-8")
            )
        )
    migrations.sort(key=lambda m: m.version)
    _check_unique(migrations)
    return migrations


def _check_unique(migrations: Sequence[Migration]) -> None:
    seen: dict[int, str] = {}
    for migration in migrations:
        if migration.version in seen:
            raise MigrationError(
                f"two migrations with version {migration.version}: "
                f"{seen[migration.version]} and {migration.label}"
            )
        seen[migration.version] = migration.label


def plan(
    migrations: Iterable[Migration],
    applied: Mapping[int, AppliedMigration],
    *,
    allow_unknown_applied: bool = False,
) -> list[Migration]:
    """The migrations still to apply, in order, after checking them against the applied ones."""
    ordered = sorted(migrations, key=lambda m: m.version)
    _check_unique(ordered)
    local = {m.version: m for m in ordered}
    for version, done in sorted(applied.items()):
        migration = local.get(version)
        if migration is None:
            if not allow_unknown_applied:
                raise MigrationError(
                    f"migration {version} ({done.name}) is applied but has no file here; "
                    "is this an older build?"
                )
            continue
        if migration.checksum != done.checksum:
            raise ChecksumMismatchError(
                f"migration {migration.label} was changed after it was applied "
                f"(checksum {done.checksum[:12]} applied, {migration.checksum[:12]} now); "
                "add a new migration instead of editing an applied one"
            )
    pending = [m for m in ordered if m.version not in applied]
    if pending and applied and pending[0].version < max(applied):
        raise MigrationError(
            f"migration {pending[0].label} is numbered below the latest applied one "
            f"({max(applied)}); renumber it after the applied ones"
        )
    return pending


def _table_sql(table: str) -> str:
    return f"""\
CREATE TABLE IF NOT EXISTS {table} (
    version     bigint PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


async def _lock(conn: Any, key: int, wait: float) -> None:
    # pg_try_advisory_lock in a loop rather than pg_advisory_lock: the wait stays bounded and
    # cancellable, and a runner stuck behind a crashed peer fails with a clear error.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = 0.05
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
        if loop.time() >= deadline:
            raise MigrationError(f"another migration run held the lock for more than {wait:.0f}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def migrate(
    conn: Any,
    migrations: Sequence[Migration] | Path | Traversable,
    *,
    table: str = "schema_migrations",
    lock_wait: float = 60.0,
    allow_unknown_applied: bool = False,
) -> list[Migration]:
    """Apply the pending migrations on ``conn`` (an asyncpg connection); the ones applied.

    ``conn`` must not be inside a transaction. Raises :class:`MigrationError` (or a subclass)
    before applying anything if the history does not match; a failing file raises after the
    earlier ones were applied and committed.
    """
    validate_identifier(table)
    loaded = migrations if isinstance(migrations, Sequence) else load_migrations(migrations)
    if conn.is_in_transaction():
        raise MigrationError("migrate() needs a connection outside any transaction")
    key = advisory_lock_key("mercato_migrations", table)
    await _lock(conn, key, lock_wait)
    try:
        await conn.execute(_table_sql(table))
        rows = await conn.fetch(f"SELECT version, name, checksum, applied_at FROM {table}")  # noqa: S608
        applied = {
            int(r["version"]): AppliedMigration(
                version=int(r["version"]),
                name=r["name"],
                checksum=r["checksum"],
                applied_at=r["applied_at"],
            )
            for r in rows
        }
        pending = plan(loaded, applied, allow_unknown_applied=allow_unknown_applied)
        record = f"INSERT INTO {table} (version, name, checksum) VALUES ($1, $2, $3)"  # noqa: S608
        done: list[Migration] = []
        for migration in pending:
            log.info("applying migration %s", migration.label)
            try:
                if migration.transactional:
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            record, migration.version, migration.name, migration.checksum
                        )
                else:
                    await conn.execute(migration.sql)
                    await conn.execute(
                        record, migration.version, migration.name, migration.checksum
                    )
            except Exception as exc:
                raise MigrationError(f"migration {migration.label} failed: {exc}") from exc
            done.append(migration)
        return done
    finally:
        # Released even after a failure so another runner can try; a dead connection releases it
        # on its own when the session ends.
        try:
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
        except Exception as exc:
            log.warning("could not release the migration lock: %r", exc)
