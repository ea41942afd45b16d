"""What every component of the stack can do: prepare, start, wait, stop, kill, report."""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mercato_devstack import install, process
from mercato_devstack.config import StackConfig
from mercato_devstack.errors import ComponentError

log = logging.getLogger("mercato_devstack")


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    port: int
    healthy: bool
    detail: str
    log_path: Path
    rss_kib: int = 0


class Component(abc.ABC):
    """One server of the local stack, run as a detached process with state under .state/."""

    name: ClassVar[str]
    #: Components that must be up before this one starts.
    requires: ClassVar[tuple[str, ...]] = ()
    #: Seconds a graceful stop may take before the process group gets SIGKILL.
    stop_timeout: ClassVar[float] = 30.0

    def __init__(self, config: StackConfig) -> None:
        self.config = config

    # Layout -----------------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return self.config.stack_dir / self.name

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / f"{self.name}.pid"

    @property
    def data_dir(self) -> Path:
        """Where the server keeps its data, for the components that keep any."""
        return self.dir / "data"

    @property
    @abc.abstractmethod
    def port(self) -> int: ...

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the component listens on (checked free before start and after stop)."""
        return (self.port,)

    # Hooks for the subclasses -----------------------------------------------------------------

    def apt_packages(self) -> list[str]:
        """Debian packages to install because a binary this component needs is missing."""
        return []

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Download/build what the component needs into the cache (idempotent)."""

    @abc.abstractmethod
    def launch(self) -> None:
        """Start the server process (not yet running), without waiting for it."""

    @abc.abstractmethod
    def probe(self) -> str | None:
        """None when the server answers its protocol correctly, else a reason."""

    def after_ready(self) -> None:  # noqa: B027 - optional hook
        """Idempotent setup once the server answers (roles, databases...)."""

    def pid(self) -> int | None:
        return process.read_pidfile(self.pid_path)

    def graceful_stop(self, pid: int) -> None:
        process.terminate(pid, timeout=self.stop_timeout, sig=signal.SIGTERM)

    # Operations -------------------------------------------------------------------------------

    def write_generated(self, file_name: str, text: str) -> Path:
        """Write ``text`` as ``file_name`` in the component's folder, headed by a note that it is
        rewritten on every start; the file's path."""
        path = self.dir / file_name
        path.write_text(
            "# Written by mercato_devstack on every start; edit the code, not this file.\n" + text
        )
        return path

    def fail(self, message: str) -> ComponentError:
        return ComponentError(
            self.name, message, log_path=self.log_path, log_tail=process.tail(self.log_path)
        )

    def start(self) -> None:
        """Launch the process unless it already runs (then this is a no-op)."""
        if self.pid() is not None:
            return
        for port in self.ports:
            if process.port_open(port, self.config.host) and not self._port_frees(
                port, self.config.host
            ):
                raise self.fail(
                    f"port {self.config.host}:{port} is taken by a process this stack did not "
                    "start; "
                    "stop it or choose another port (see docs/local-stack.md)"
                )
        self.dir.mkdir(parents=True, exist_ok=True)
        log.info("%s: starting on %s:%s", self.name, self.config.host, self.port)
        self.launch()

    @staticmethod
    def _port_frees(port: int, host: str, timeout: float = 5.0) -> bool:
        """A process that just died may hold its socket for a moment longer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if not process.port_open(port, host):
                return True
        return False

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.config.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if self.pid() is None:
                # Give a process that just exited a moment to write its last words.
                time.sleep(0.2)
                raise self.fail("the process exited before it became ready")
            reason = self.probe() or ""
            if not reason:
                return
            if time.monotonic() >= deadline:
                raise self.fail(f"not ready after {timeout:.0f}s: {reason}")
            time.sleep(0.25)

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            tree = process.process_tree(pid)
            log.info("%s: stopping (pid %d)", self.name, pid)
            self.graceful_stop(pid)
            process.terminate(pid, timeout=1)
            for member in tree:
                if not process.wait_gone(member, 5):
                    process.signal_tree(member, signal.SIGKILL)
                    if not process.wait_gone(member, 5):
                        raise self.fail(f"process {member} survived SIGKILL")
        self.pid_path.unlink(missing_ok=True)
        self.verify_stopped()

    def kill(self) -> None:
        """SIGKILL the component's process and all its children at once, as a crash would."""
        pid = self.pid()
        if pid is None:
            raise self.fail("kill: not running")
        tree = process.process_tree(pid)
        log.info("%s: kill -9 (pid %d and %d more)", self.name, pid, len(tree) - 1)
        process.signal_tree(pid, signal.SIGKILL)
        for member in tree:
            process.wait_gone(member, 10)
        self.verify_stopped()

    def verify_stopped(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            busy = [port for port in self.ports if process.port_open(port, self.config.host)]
            if not busy:
                return
            if time.monotonic() >= deadline:
                raise self.fail(f"still listening on port(s) {busy} after stop")
            time.sleep(0.2)

    def status(self) -> ComponentStatus:
        pid = self.pid()
        if pid is None:
            reason = "not running"
            if any(process.port_open(port, self.config.host) for port in self.ports):
                reason = "not running (but its port is taken by another process)"
            return ComponentStatus(self.name, None, self.port, False, reason, self.log_path)
        problem = self.probe()
        rss = process.rss_kib(process.process_tree(pid) or [pid])
        return ComponentStatus(
            self.name, pid, self.port, problem is None, problem or "ok", self.log_path, rss
        )


def build_key(**inputs: object) -> str:
    """One line naming every input of a cached build (recorded beside its output; when an
    input changes, the build runs again)."""
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"))


class BuildSteps:
    """The steps of one cold build: each prints a progress line and appends what it does and
    its output to one log file; a failure names the step and that log."""

    def __init__(self, component: str, what: str, log_path: Path, total: int) -> None:
        self.component = component
        self.what = what
        self.log_path = log_path
        self.total = total
        self.done = 0

    def _fail(self, step: str, reason: str) -> ComponentError:
        return ComponentError(
            self.component,
            f"building {self.what} failed at step {step!r}: {reason}",
            log_path=self.log_path,
            log_tail=process.tail(self.log_path),
        )

    @contextlib.contextmanager
    def step(self, step: str, detail: str = "") -> Iterator[None]:
        """One step done in Python (an OSError fails it)."""
        self.done += 1
        print(f"  {self.component} [{self.done}/{self.total}] {step}", file=sys.stderr, flush=True)
        with self.log_path.open("a") as log:
            log.write(f"\n==> [{self.done}/{self.total}] {step}{': ' if detail else ''}{detail}\n")
        started = time.monotonic()
        try:
            yield
        except OSError as error:
            raise self._fail(step, str(error)) from error
        with self.log_path.open("a") as log:
            log.write(f"<== {step}: {time.monotonic() - started:.0f} s\n")

    def run(
        self,
        step: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        capture: bool = False,
        timeout: float = 3600,
    ) -> str:
        """Run ``argv`` as one step, its output into the log; its stdout when ``capture``."""
        with self.step(step, f"{shlex.join(argv)}  (in {cwd})"), self.log_path.open("a") as log:
            try:
                done = subprocess.run(  # noqa: S603 - argv is built by the stack, never a shell
                    list(argv),
                    cwd=cwd,
                    env=dict(env),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE if capture else log,
                    stderr=log if capture else subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as error:
                raise self._fail(step, f"took over {timeout:.0f} s") from error
            except FileNotFoundError as error:
                raise self._fail(step, f"command not found: {argv[0]}") from error
            if capture:
                log.write(done.stdout)
        if done.returncode != 0:
            raise self._fail(step, f"exit {done.returncode} from {shlex.join(argv)}")
        return done.stdout if capture else ""


class GoProgram(Component):
    """A Go program run as one process: built once (by ``prepare``) into the cache as
    ``<cache>/<name>-<version>/<name>``, its state under ``.state/stack/<name>``."""

    version: ClassVar[str]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def binary(self) -> Path:
        return self.config.cache_dir / f"{self.name}-{self.version}" / self.name

    def _go_install(self, package: str, **options: Any) -> None:
        """Build ``package@version`` into :attr:`binary` unless it is there (options: those of
        :func:`mercato_devstack.install.go_install`)."""
        install.go_install(package, self.binary, cache_dir=self.config.cache_dir / "go", **options)

    @property
    def build_stamp(self) -> Path:
        """The key of the build that made :attr:`binary` (see :meth:`_build_once`)."""
        return self.binary.with_name(f"{self.name}.build-key")

    @property
    def build_log(self) -> Path:
        return self.binary.with_name("build.log")

    def _build_once(
        self,
        key: str,
        build: Callable[[Path, BuildSteps], Path],
        *,
        what: str,
        steps: int,
    ) -> None:
        """Make :attr:`binary` with ``build`` unless it was made with ``key`` (see
        :func:`build_key`). ``build(work, steps)`` runs its ``steps`` steps in a temporary folder
        ``work`` beside the binary, removed afterwards with all it holds; it returns the built
        file. A file lock keeps processes started side by side from building it twice."""
        if install.is_fresh(self.build_stamp, key, self.binary):
            return
        folder = self.binary.parent
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if install.is_fresh(self.build_stamp, key, self.binary):
                return
            started = time.monotonic()
            self.build_log.write_text(f"building {what}\nkey: {key}\n")
            print(
                f"building {what} (once, into {folder}; log: {self.build_log})",
                file=sys.stderr,
                flush=True,
            )
            with tempfile.TemporaryDirectory(prefix="build-", dir=folder) as work:
                built = build(Path(work), BuildSteps(self.name, what, self.build_log, steps))
                if not built.is_file():
                    raise ComponentError(
                        self.name, f"the build of {what} wrote no {built}", log_path=self.build_log
                    )
                self.build_stamp.unlink(missing_ok=True)
                os.replace(built, self.binary)
                self.build_stamp.write_text(key + "\n")
            print(
                f"built {what} in {time.monotonic() - started:.0f} s: {self.binary}",
                file=sys.stderr,
                flush=True,
            )

    def _launch(self, *args: str) -> None:
        pid = process.spawn([str(self.binary), *args], log_path=self.log_path, cwd=self.dir)
        process.write_pidfile(self.pid_path, pid)
