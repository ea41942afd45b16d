"""Process plumbing: detached daemons, pid files that survive a reboot safely, ports, logs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mercato_devstack.errors import StackError

#: A log larger than this is moved aside (to `<name>.1`) before the component starts again.
LOG_ROTATE_BYTES = 64 * 1024 * 1024


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (the command name, field 2, may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def start_time(pid: int) -> str | None:
    """Boot-relative start time of a process; with the pid it names one process uniquely."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def pid_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        # Our own child that already exited: reap it so that it does not linger as a zombie.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    fields = _stat_fields(pid)
    if fields is None:
        # Without /proc (not Linux) os.kill is the only word; with it, the process just went.
        return not Path("/proc/self").exists()
    if fields[0] != "Z":
        return True
    # A zombie leader whose other threads still exit keeps its sockets open until they do.
    try:
        tasks = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    return any((_task_state(pid, task) or "Z") not in ("Z", "X") for task in tasks)


def _task_state(pid: int, task: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/task/{task}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()[0]


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\x00") if part]


def write_pidfile(path: Path, pid: int) -> None:
    path.write_text(f"{pid} {start_time(pid) or '-'}\n")


def read_pidfile(path: Path) -> int | None:
    """The pid recorded in `path` if that very process still runs, else None.

    The start time written beside the pid tells a live process from an unrelated one that got
    the same pid after a reboot; a stale file is removed.
    """
    try:
        parts = path.read_text().split()
    except FileNotFoundError:
        return None
    try:
        pid = int(parts[0])
    except (IndexError, ValueError):
        path.unlink(missing_ok=True)
        return None
    recorded = parts[1] if len(parts) > 1 else "-"
    if pid_alive(pid) and (recorded in ("-", start_time(pid))):
        return pid
    path.unlink(missing_ok=True)
    return None


def process_tree(pid: int) -> list[int]:
    """`pid`, its descendants and the members of the process group it leads, all alive.

    Every component runs in a session of its own; PostgreSQL's backends even lead groups of
    their own, so descendants are found through their parent pids too.
    """
    parents: dict[int, int] = {}
    groups: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
            groups[int(entry.name)] = int(fields[2])
    if pid not in parents:
        return [member for member, group in groups.items() if group == pid]
    tree = {pid} | {member for member, group in groups.items() if group == pid}
    grew = True
    while grew:
        children = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sorted(tree)


def rss_kib(pids: Sequence[int]) -> int:
    """Sum of the resident set sizes of `pids` (shared pages count once per process)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def signal_tree(pid: int, sig: int) -> None:
    """Send `sig` to `pid` and every process of its tree (see process_tree)."""
    for member in process_tree(pid) or [pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, sig)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def terminate(pid: int, *, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Ask a daemon to stop with `sig`; SIGKILL its whole tree if it is still there after."""
    tree = process_tree(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if not wait_gone(pid, timeout):
        signal_tree(pid, signal.SIGKILL)
        wait_gone(pid, 10)
    # Children that outlived their leader (e.g. PostgreSQL backends) go too.
    for member in tree:
        if member != pid and pid_alive(member):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def rotate_log(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))


def tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start a daemon in a session of its own, output appended to `log_path`; returns its pid.

    The daemon outlives this Python process; it is found again through its pid file.
    """
    rotate_log(log_path)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - argv is built by the stack, never a shell
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def run(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_text: str | None = None,
    timeout: float = 600,
) -> str:
    """Run a command to completion; on failure raise StackError with its output."""
    try:
        done = subprocess.run(  # noqa: S603 - argv is built by the stack, never a shell
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what}: timed out after {timeout:.0f}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise StackError(f"{what}: command not found: {argv[0]}") from exc
    if done.returncode != 0:
        output = "\n".join(part for part in (done.stdout, done.stderr) if part).strip()
        raise StackError(
            f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{output[-4000:]}"
        )
    return done.stdout


def which(name: str, *extra_dirs: Path) -> str | None:
    for folder in extra_dirs:
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def is_root() -> bool:
    return os.geteuid() == 0
