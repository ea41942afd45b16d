"""The local stack as a whole: `up`, `down`, `status` and per-component fault hooks."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from mercato_devstack import install, probes
from mercato_devstack.components import COMPONENT_TYPES, NAMES, Component, ComponentStatus, Kafka
from mercato_devstack.config import StackConfig
from mercato_devstack.errors import StackError
from mercato_devstack.topics import ensure_topics, load_topics

log = logging.getLogger("mercato_devstack")


class Stack:
    """PostgreSQL, Kafka, FerretDB and Redis as local processes with state under .state/.

    Every method is idempotent and safe to call from a process other than the one that started
    the stack: the components are found again through their pid files.
    """

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig.from_env()
        self._components: dict[str, Component] = {
            kind.name: kind(self.config) for kind in COMPONENT_TYPES
        }
        self._lock_depth = 0
        self._thread_lock = threading.RLock()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One process at a time changes the stack (two `up`s would race for the ports)."""
        with self._thread_lock:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            self.config.state_dir.mkdir(parents=True, exist_ok=True)
            with (self.config.state_dir / "stack.lock").open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0
                    fcntl.flock(handle, fcntl.LOCK_UN)

    # Connection settings ----------------------------------------------------------------------

    def postgres_dsn(self, database: str = "postgres") -> str:
        """DSN of the `mercato` superuser on `database` (auth, orders, ferretdb, postgres)."""
        return self.config.postgres_dsn(database)

    @property
    def kafka_bootstrap(self) -> str:
        return self.config.kafka_bootstrap

    @property
    def mongo_uri(self) -> str:
        return self.config.mongo_uri

    @property
    def redis_url(self) -> str:
        return self.config.redis_url

    # Components -------------------------------------------------------------------------------

    def component(self, name: str) -> Component:
        try:
            return self._components[name]
        except KeyError:
            raise StackError(f"unknown component {name!r}; one of {', '.join(NAMES)}") from None

    def _closure(self, names: Iterable[str] | None) -> list[str]:
        """The named components and what they require, in start order."""
        wanted = set(NAMES if names is None else names)
        for name in list(wanted):
            self.component(name)
        grew = True
        while grew:
            extra = {req for name in wanted for req in self.component(name).requires} - wanted
            wanted |= extra
            grew = bool(extra)
        return [name for name in NAMES if name in wanted]

    def prepare(self, names: Iterable[str] | None = None) -> None:
        """Install missing Debian packages, then fetch/build into the cache (in parallel)."""
        selected = [self.component(name) for name in self._closure(names)]
        install.apt_install(pkg for component in selected for pkg in component.apt_packages())
        with ThreadPoolExecutor(max_workers=len(selected)) as pool:
            for future in [pool.submit(component.prepare) for component in selected]:
                future.result()

    def up(self, names: Iterable[str] | None = None) -> list[ComponentStatus]:
        """Start the components (all by default) and wait until each answers its protocol."""
        with self._exclusive():
            return self._up(names)

    def _up(self, names: Iterable[str] | None) -> list[ComponentStatus]:
        began = time.monotonic()
        order = self._closure(names)
        self.prepare(order)
        pending = list(order)
        launched: set[str] = set()
        ready: set[str] = set()
        while pending:
            for name in pending:
                component = self.component(name)
                if name not in launched and all(req in ready for req in component.requires):
                    component.start()
                    launched.add(name)
            name = next(name for name in pending if name in launched)
            component = self.component(name)
            component.wait_ready()
            component.after_ready()
            self._after_ready(component)
            ready.add(name)
            pending.remove(name)
            log.info("%s: ready", name)
        log.info("stack up in %.1fs", time.monotonic() - began)
        return [self.component(name).status() for name in order]

    def _after_ready(self, component: Component) -> None:
        if isinstance(component, Kafka):
            specs = load_topics(self.config.topics_file)
            probes.run_sync(ensure_topics(component.bootstrap, specs))

    def down(self) -> None:
        """Stop every component gracefully (SIGKILL after a timeout); the state is kept."""
        errors: list[str] = []
        with self._exclusive():
            for name in reversed(NAMES):
                try:
                    self.component(name).stop()
                except StackError as exc:
                    errors.append(str(exc))
        if errors:
            raise StackError("\n".join(errors))

    def status(self) -> list[ComponentStatus]:
        return [self.component(name).status() for name in NAMES]

    def healthy(self, names: Iterable[str] | None = None) -> bool:
        return all(self.component(name).status().healthy for name in self._closure(names))

    # Fault hooks ------------------------------------------------------------------------------

    def start(self, name: str) -> ComponentStatus:
        """Start one component (and what it requires) and wait until it is ready."""
        self.up([name])
        return self.component(name).status()

    def stop(self, name: str) -> None:
        """Stop one component gracefully (SIGTERM, or its own shutdown command)."""
        with self._exclusive():
            self.component(name).stop()

    def kill(self, name: str) -> None:
        """kill -9 one component's process and all its children, as a crash would."""
        with self._exclusive():
            self.component(name).kill()

    def restart(self, name: str) -> ComponentStatus:
        with self._exclusive():
            self.stop(name)
            return self.start(name)
