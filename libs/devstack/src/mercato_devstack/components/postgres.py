"""PostgreSQL 15 from Debian, run as the `postgres` user when the stack runs as root."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import shutil
import stat
from pathlib import Path

from mercato_devstack import probes, process
from mercato_devstack.components.base import Component, log
from mercato_devstack.config import FERRETDB_DATABASE, PG_PASSWORD, PG_USER
from mercato_devstack.errors import StackError
from mercato_devstack.manifest import load_manifest

PG_MAJOR = "15"
#: The bootstrap superuser created by initdb; it gets the same local password as `mercato`.
BOOTSTRAP_USER = "postgres"
#: OS user that runs the server when the stack runs as root (PostgreSQL refuses root).
OS_USER = "postgres"


class Postgres(Component):
    name = "postgres"
    stop_timeout = 60.0

    @property
    def port(self) -> int:
        return self.config.pg_port

    @property
    def bin_dir(self) -> Path | None:
        override = os.environ.get("MERCATO_PG_BINDIR")
        candidates = [Path(override)] if override else []
        candidates.append(Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin"))
        for candidate in candidates:
            if (candidate / "pg_ctl").is_file():
                return candidate
        found = shutil.which("pg_ctl")
        return Path(found).parent if found else None

    def _bin(self, name: str) -> str:
        folder = self.bin_dir
        if folder is None:
            raise self.fail(f"PostgreSQL {PG_MAJOR} binaries not found (pg_ctl)")
        return str(folder / name)

    def apt_packages(self) -> list[str]:
        return [] if self.bin_dir is not None else [f"postgresql-{PG_MAJOR}"]

    # Running as the `postgres` user -----------------------------------------------------------

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if process.is_root():
            return ["runuser", "-u", OS_USER, "--", *argv]
        return argv

    def _own(self, path: Path) -> None:
        if process.is_root():
            user = pwd.getpwnam(OS_USER)
            os.chown(path, user.pw_uid, user.pw_gid)

    def _make_traversable(self) -> None:
        """The server user must reach its folder: open the state folders on the way for it."""
        if not process.is_root():
            return
        user = pwd.getpwnam(OS_USER)
        folder = self.dir
        while True:
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH and folder.stat().st_uid != user.pw_uid:
                if folder == self.config.state_dir or self.config.state_dir in folder.parents:
                    folder.chmod(mode | stat.S_IXOTH)
                else:
                    raise self.fail(
                        f"user {OS_USER} cannot enter {folder}; put the state folder elsewhere "
                        "(MERCATO_STATE_DIR) or allow it: chmod o+x"
                    )
            if folder.parent == folder:
                return
            folder = folder.parent

    # Lifecycle --------------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The postmaster's pid, from the lock file PostgreSQL keeps in its data folder."""
        lock = self.data_dir / "postmaster.pid"
        try:
            first = lock.read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        if process.pid_alive(pid) and str(self.data_dir) in process.cmdline(pid):
            return pid
        return None

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").is_file():
            return
        log.info("postgres: initdb %s", self.data_dir)
        staging = self.dir / "data.init"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        self._own(staging)
        pwfile = self.dir / "initdb.pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        try:
            process.run(
                self._as_server_user(
                    [
                        self._bin("initdb"),
                        "-D",
                        str(staging),
                        "-U",
                        BOOTSTRAP_USER,
                        f"--pwfile={pwfile}",
                        "--auth-host=scram-sha-256",
                        "--auth-local=peer",
                        "--encoding=UTF8",
                        "--no-locale",
                    ]
                ),
                what="postgres: initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (staging / "postgresql.conf").open("a") as conf:
            conf.write("\n# Mercato local stack: settings regenerated on every start\n")
            conf.write("include_if_exists = 'mercato.conf'\n")
        staging.rename(self.data_dir)

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": f"'{self.config.host}'",
            "port": str(self.port),
            # TCP only: a socket path under a deep checkout could pass the 107-byte limit.
            "unix_socket_directories": "''",
            # FerretDB alone may open 200 (its pool), next to the services and the tests.
            "max_connections": "400",
            "shared_buffers": "128MB",
            "logging_collector": "off",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "log_min_duration_statement": "-1",
            "timezone": "'UTC'",
        }
        if not ipaddress.ip_address(self.config.host).is_loopback:
            # Bound to another local address (a Kubernetes node's bridge): clients come from
            # that address's subnet, with the same password authentication as on loopback.
            hba = self.data_dir / "mercato_hba.conf"
            hba.write_text(
                (self.data_dir / "pg_hba.conf").read_text()
                + "\n# Mercato local stack: clients on the subnet of MERCATO_STACK_HOST\n"
                + "host all all samenet scram-sha-256\n"
            )
            self._own(hba)
            settings["hba_file"] = f"'{hba}'"
        conf = self.data_dir / "mercato.conf"
        conf.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        self._own(conf)

    def launch(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._own(self.dir)
        self._make_traversable()
        self._initdb()
        self._write_settings()
        # A lock file left by a crash or a reboot: PostgreSQL would mistake a reused pid for
        # a running server.
        lock = self.data_dir / "postmaster.pid"
        if lock.exists():
            log.info("postgres: removing stale %s", lock)
            lock.unlink()
        process.rotate_log(self.log_path)
        self.log_path.touch()
        self._own(self.log_path)
        # pg_ctl detaches the postmaster (setsid) and, with -w, returns once it accepts
        # connections (after any crash recovery) or has failed.
        timeout = int(self.config.timeout)
        try:
            process.run(
                self._as_server_user(
                    [
                        *(self._bin("pg_ctl"), "start", "-D", str(self.data_dir)),
                        *("-l", str(self.log_path), "-w", "-t", str(timeout), "-s"),
                    ]
                ),
                what="pg_ctl start",
                timeout=timeout + 10,
            )
        except StackError as exc:
            raise self.fail(str(exc)) from exc

    def graceful_stop(self, pid: int) -> None:
        with contextlib.suppress(StackError):
            process.run(
                self._as_server_user(
                    [
                        *(self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast"),
                        *("-w", "-t", str(int(self.stop_timeout)), "-s"),
                    ]
                ),
                what="postgres: pg_ctl stop",
                timeout=self.stop_timeout + 10,
            )
        process.terminate(pid, timeout=5)

    def probe(self) -> str | None:
        return probes.postgres_query(
            self._bin("psql"), self.config.host, self.port, BOOTSTRAP_USER, PG_PASSWORD
        )

    def databases(self) -> tuple[str, ...]:
        """One database per postgres service of the manifest, plus FerretDB's storage."""
        manifest = load_manifest(self.config.manifest_file)
        return (*(service.name for service in manifest.with_store("postgres")), FERRETDB_DATABASE)

    def after_ready(self) -> None:
        """Create the `mercato` superuser and the services' databases when missing."""
        script = [
            "\\set ON_ERROR_STOP on",
            "DO $$ BEGIN",
            f"  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PG_USER}') THEN",
            f"    CREATE ROLE {PG_USER} LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}';",
            "  END IF;",
            "END $$;",
        ]
        for db in self.databases():
            # Service names, which the manifest allows to be lower-case letters and digits only.
            script.append(
                f"SELECT 'CREATE DATABASE {db} OWNER {PG_USER}' "  # noqa: S608
                f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{db}') \\gexec"
            )
        process.run(
            [
                *(self._bin("psql"), "-X", "-q", "-h", self.config.host, "-p", str(self.port)),
                *("-U", BOOTSTRAP_USER, "-d", "postgres", "-f", "-"),
            ],
            what="postgres: create role and databases",
            env={**os.environ, "PGPASSWORD": PG_PASSWORD},
            input_text="\n".join(script) + "\n",
            timeout=60,
        )
