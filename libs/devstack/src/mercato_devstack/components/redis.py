"""Redis from Debian, append-only file on, data under .state/stack/redis/data."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from mercato_devstack import probes, process
from mercato_devstack.components.base import Component


class Redis(Component):
    name = "redis"

    @property
    def port(self) -> int:
        return self.config.redis_port

    def _server(self) -> str | None:
        return process.which("redis-server", Path("/usr/bin"))

    def apt_packages(self) -> list[str]:
        return [] if self._server() else ["redis-server"]

    def _write_config(self) -> Path:
        settings = {
            "bind": self.config.host,
            "port": str(self.port),
            # Protected mode refuses clients from anywhere but loopback when no password is set:
            # on another local address (MERCATO_STACK_HOST, a node's bridge) they come from its
            # subnet, which only that address's own network reaches.
            "protected-mode": "yes" if ipaddress.ip_address(self.config.host).is_loopback else "no",
            "daemonize": "no",
            "supervised": "no",
            "dir": str(self.data_dir),
            "logfile": '""',  # stdout, appended to redis.log by the stack
            # Acknowledged writes reach the kernel before the reply, so they survive kill -9;
            # everysec bounds the loss on a power cut to about a second.
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": '""',
            "databases": "16",
            # Background chores (active expiry of keys with a TTL, client timeouts, a late AOF
            # fsync) once a second instead of ten times: an idle Redis stays asleep. A read
            # still sees an expired key as gone; writes still reach the kernel before the
            # reply (kill -9 loses nothing); a power cut may lose up to about two seconds.
            "hz": "1",
        }
        return self.write_generated(
            "redis.conf", "".join(f"{key} {value}\n" for key, value in settings.items())
        )

    def launch(self) -> None:
        server = self._server()
        if server is None:
            raise self.fail("redis-server not found (apt-get install redis-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        pid = process.spawn([server, str(config)], log_path=self.log_path, cwd=self.dir)
        process.write_pidfile(self.pid_path, pid)

    def probe(self) -> str | None:
        return probes.redis_ping(self.config.host, self.port)
