"""FerretDB 1.24 (MongoDB wire protocol) on the local PostgreSQL, built once from Go modules."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from mercato_devstack import install, probes, process
from mercato_devstack.components.base import Component, log
from mercato_devstack.config import FERRETDB_DATABASE

MODULE = "github.com/FerretDB/FerretDB"

# Fixes applied to a copy of FerretDB's sources at build time, each as
# (file inside the module, upstream text, replacement). The build fails if the upstream text is
# not found, e.g. after a version bump: then check whether the fix is still needed.
PATCHES: tuple[tuple[str, str, str], ...] = (
    (
        # v1.24.2 shares one iterator between the accumulators of a $group, so every
        # accumulator after the first sees no document ({count: {$sum: 1}} after
        # {total: {$sum: "$price"}} gives 0). MongoDB computes each over the whole group.
        "internal/handler/common/aggregations/stages/group.go",
        """\
		groupIter := iterator.Values(iterator.ForSlice(groupedDocument.documents))
		defer groupIter.Close()

		for _, accumulation := range g.groupBy {
			out, err := accumulation.accumulator.Accumulate(groupIter)
""",
        """\
		for _, accumulation := range g.groupBy {
			// Patched by mercato_devstack: a fresh iterator for each accumulator.
			groupIter := iterator.Values(iterator.ForSlice(groupedDocument.documents))
			out, err := accumulation.accumulator.Accumulate(groupIter)
			groupIter.Close()
""",
    ),
    (
        # v1.24.2 pushes an equality down as `_jsonb->'field' @> value`, which the btree index it
        # makes for each MongoDB index on `(_jsonb->'field', ...)` cannot serve: every find,
        # update and findAndModify, even by _id, scans the whole table (FerretDB issue #4646;
        # v2 has another storage). A GIN twin on the index's leading field serves that
        # containment: a lookup in 5,400 documents of 1.5 KB went from 14 ms to 1 ms. One twin
        # per table and field, however many indexes lead with it; none for a dotted field
        # (pushed down with #>, which this expression does not serve).
        "internal/backends/postgresql/metadata/registry.go",
        """\
		if _, err = p.Exec(ctx, q); err != nil {
			_ = r.indexesDrop(ctx, p, dbName, collectionName, created)
			return lazyerrors.Error(err)
		}

		created = append(created, index.Name)
""",
        """\
		if _, err = p.Exec(ctx, q); err != nil {
			_ = r.indexesDrop(ctx, p, dbName, collectionName, created)
			return lazyerrors.Error(err)
		}

		// Patched by mercato_devstack: the GIN twin that serves the pushed-down `@>`
		// (not for _id, whose equality is pushed down as `=`, served by the btree).
		if field := index.Key[0].Field; field != "_id" && !strings.Contains(field, ".") {
			twin := fmt.Sprintf(
				"CREATE INDEX IF NOT EXISTS %s ON %s USING gin ((%s->%s))",
				pgx.Identifier{ginTwinName(c.TableName, field)}.Sanitize(),
				pgx.Identifier{dbName, c.TableName}.Sanitize(),
				DefaultColumn,
				quoteString(field),
			)
			if _, err = p.Exec(ctx, twin); err != nil {
				_ = r.indexesDrop(ctx, p, dbName, collectionName, created)
				return lazyerrors.Error(err)
			}
		}

		created = append(created, index.Name)
""",
    ),
    (
        # The twin's name, and the twin goes when no index of the table leads with its field.
        "internal/backends/postgresql/metadata/registry.go",
        """\
		if _, err := p.Exec(ctx, q); err != nil {
			return lazyerrors.Error(err)
		}

		c.Indexes = slices.Delete(c.Indexes, i, i+1)
""",
        """\
		if _, err := p.Exec(ctx, q); err != nil {
			return lazyerrors.Error(err)
		}

		// Patched by mercato_devstack: the GIN twin of indexesCreate, once unused.
		field := c.Indexes[i].Key[0].Field
		c.Indexes = slices.Delete(c.Indexes, i, i+1)
		leads := func(o IndexInfo) bool { return o.Key[0].Field == field }
		if !slices.ContainsFunc(c.Indexes, leads) {
			twin := pgx.Identifier{dbName, ginTwinName(c.TableName, field)}.Sanitize()
			if _, err := p.Exec(ctx, "DROP INDEX IF EXISTS "+twin); err != nil {
				return lazyerrors.Error(err)
			}
		}
""",
    ),
    (
        "internal/backends/postgresql/metadata/registry.go",
        """\
// IndexesDrop removes given connection's indexes.
""",
        """\
// ginTwinName is the GIN index on field of tableName (patched by mercato_devstack).
func ginTwinName(tableName, field string) string {
	h := fnv.New32a()
	must.NotFail(h.Write([]byte(field)))
	if len(tableName) > maxIndexNameLength/2 {
		tableName = tableName[:maxIndexNameLength/2]
	}
	return fmt.Sprintf("%s_%08x_gin", tableName, h.Sum32())
}

// IndexesDrop removes given connection's indexes.
""",
    ),
    (
        # With the twins above every indexed equality has an index, but _id needs none: a
        # MongoDB _id is never an array, so its equality is plain `=`, which the unique btree
        # index FerretDB makes on _id serves (a GIN twin on every collection would cost each
        # insert for nothing).
        "internal/backends/postgresql/query.go",
        """\
	// Select if value under the key is equal to provided value.
	sql := `%[1]s%[2]s%[3]s @> %[4]s`
""",
        """\
	// Select if value under the key is equal to provided value.
	sql := `%[1]s%[2]s%[3]s @> %[4]s`

	// Patched by mercato_devstack: see the comment of this patch.
	if k == "_id" {
		sql = `%[1]s%[2]s%[3]s = %[4]s`
	}
""",
    ),
)


class FerretDB(Component):
    name = "ferretdb"
    requires = ("postgres",)

    @property
    def port(self) -> int:
        return self.config.mongo_port

    @property
    def source_dir(self) -> Path:
        return self.config.local_dir / "ferretdb"

    @property
    def binary(self) -> Path:
        return self.config.cache_dir / "ferretdb" / "ferretdb"

    @property
    def stamp(self) -> Path:
        return self.config.cache_dir / "ferretdb" / "ferretdb.sha256"

    def _inputs_digest(self) -> str:
        sources = install.digest(
            *(self.source_dir / name for name in ("go.mod", "go.sum", "main.go"))
        )
        return hashlib.sha256((sources + repr(PATCHES)).encode()).hexdigest()

    def _staged_source(self, go: str, env: dict[str, str]) -> Path:
        """A build folder: the committed main plus a patched copy of the FerretDB module.

        Go refuses overlays of files in the module cache, so the staged go.mod replaces the
        module with the patched copy; the committed go.mod and go.sum stay untouched.
        """
        process.run(
            [go, "mod", "download", MODULE],
            what="ferretdb: go mod download",
            env=env,
            cwd=self.source_dir,
            timeout=1800,
        )
        listed = process.run(
            [go, "list", "-m", "-f", "{{.Dir}}", MODULE],
            what="ferretdb: go list",
            env=env,
            cwd=self.source_dir,
        )
        module_dir = Path(listed.strip())
        staging = self.binary.parent / "src"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ("go.mod", "go.sum", "main.go"):
            shutil.copy2(self.source_dir / name, staging / name)
        patched = staging / "ferretdb-module"
        shutil.copytree(module_dir, patched)
        for path in (patched, *patched.rglob("*")):
            path.chmod(path.stat().st_mode | 0o200)
        for relative, upstream, fixed in PATCHES:
            target = patched / relative
            original = target.read_text()
            if upstream not in original:
                raise self.fail(f"patch for {relative} no longer applies to {module_dir.name}")
            target.write_text(original.replace(upstream, fixed, 1))
        process.run(
            [go, "mod", "edit", f"-replace={MODULE}=./ferretdb-module"],
            what="ferretdb: go mod edit",
            env=env,
            cwd=staging,
        )
        return staging

    def prepare(self) -> None:
        """Build the Go main once; modules and build cache live under .state/cache/go."""
        expected = self._inputs_digest()
        if install.is_fresh(self.stamp, expected, self.binary):
            return
        go = install.find_go()
        if go is None:
            raise self.fail(
                "Go (1.24 or later) is needed once to build FerretDB and was not found; "
                "Debian's golang package is too old: install Go from go.dev and put it on PATH"
            )
        log.info("ferretdb: building %s with Go (first time only)", self.source_dir)
        cache = self.config.cache_dir / "go"
        # The committed go.sum is the truth.
        env = install.go_env(
            cache, GOCACHE=str(cache / "build"), GOFLAGS="-mod=readonly -modcacherw"
        )
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        staging = self._staged_source(go, env)
        partial = self.binary.with_name("ferretdb.partial")
        process.run(
            [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(partial), "."],
            what="ferretdb: go build",
            env=env,
            cwd=staging,
            timeout=1800,
        )
        partial.rename(self.binary)
        self.stamp.write_text(expected + "\n")
        # The build cache (~300 MB) only speeds up a rebuild; the module cache is kept so that
        # a rebuild needs no registry.
        shutil.rmtree(cache / "build", ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)

    def launch(self) -> None:
        if not install.is_fresh(self.stamp, self._inputs_digest(), self.binary):
            raise self.fail(f"FerretDB is not built in {self.binary}: run `up` to build it")
        env = {
            **os.environ,
            # Idle connections close after a minute (FerretDB keeps its default 50 open). The
            # pool must stay large: one request can hold a connection while it waits for
            # another, so a pool smaller than twice the operations in flight can deadlock: 20
            # did under a few concurrent test suites, 80 under `make bench` (every request
            # waited minutes for a connection). The services send at most MONGO_MAX_POOL_SIZE
            # (20) operations each.
            "FERRETDB_POSTGRESQL_URL": self.config.postgres_dsn(FERRETDB_DATABASE)
            + "?pool_max_conns=200&pool_max_conn_idle_time=60s",
        }
        pid = process.spawn(
            [
                str(self.binary),
                f"-listen-addr={self.config.host}:{self.port}",
                "-handler=postgresql",
                "-log-level=info",
            ],
            log_path=self.log_path,
            cwd=self.dir,
            env=env,
        )
        process.write_pidfile(self.pid_path, pid)

    def probe(self) -> str | None:
        return probes.mongo_ping(self.config.host, self.port)
