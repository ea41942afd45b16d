"""Installing and building what the stack runs, once, into the cache (registries only then)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from mercato_devstack import process
from mercato_devstack.errors import StackError

log = logging.getLogger("mercato_devstack")


def apt_install(packages: Iterable[str]) -> None:
    """Install missing Debian packages (as root, with apt-get); a no-op for an empty list."""
    wanted = sorted(set(packages))
    if not wanted:
        return
    command = f"apt-get install -y --no-install-recommends {' '.join(wanted)}"
    if not process.is_root():
        raise StackError(f"missing Debian packages; install them first: sudo {command}")
    if process.which("apt-get") is None:
        raise StackError(f"missing packages {wanted} and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.info("installing Debian packages: %s", " ".join(wanted))
    process.run(["apt-get", "update", "-q"], what="apt-get update", env=env, timeout=900)
    process.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *wanted],
        what="apt-get install",
        env=env,
        timeout=1800,
    )


def digest(*paths: Path) -> str:
    """A hash of the inputs of a cached build: when it changes, the build runs again."""
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.name.encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def is_fresh(stamp: Path, expected: str, *outputs: Path) -> bool:
    try:
        recorded = stamp.read_text().strip()
    except FileNotFoundError:
        return False
    return recorded == expected and all(output.exists() for output in outputs)


def find_go() -> str | None:
    """The machine's Go (also where go.dev's tarball installs it, when not on PATH)."""
    return process.which("go", Path("/usr/local/go/bin"))


def go_env(cache_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of every Go build of the project: the machine's Go (no toolchain
    download), static binaries, and the module cache under ``cache_dir`` (kept, so a rebuild
    needs no registry; ``rm -rf`` safe thanks to -modcacherw). ``overrides`` win."""
    return {
        **os.environ,
        "GOMODCACHE": str(cache_dir / "mod"),
        "GOPATH": str(cache_dir / "path"),
        "GOFLAGS": "-modcacherw",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
        **overrides,
    }


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def run_go(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    what: str,
    timeout: float = 3600,
    cwd: Path | None = None,
) -> str:
    """``go args...`` with ``env`` (see :func:`go_env`); its stdout. Fails with the end of its
    stderr."""
    go = find_go()
    if go is None:
        raise StackError(f"Go is needed to build {what}; install Go >= 1.26")
    try:
        result = subprocess.run(  # noqa: S603 - fixed tool, no shell
            [go, *args], env=env, cwd=cwd, capture_output=True, text=True, check=False,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as error:
        raise StackError(f"{what}: `go {' '.join(args)}` took over {error.timeout} s") from error
    if result.returncode != 0:
        raise StackError(f"{what}: `go {' '.join(args)}` failed:\n{result.stderr[-4000:]}")
    return result.stdout


def go_install(
    package: str,
    target: Path,
    *,
    cache_dir: Path,
    ldflags: str = "-s -w",
    tags: str = "",
    purpose: str = "",
    timeout: float = 3600,
) -> Path:
    """``target``, built from ``package@version`` unless it is there already.

    With ``go install``, which refuses a module whose go.mod has replace directives (then see
    :func:`go_build_module`). The module cache is ``cache_dir``/mod (kept);
    the build cache is temporary, removed afterwards. A file lock beside ``target`` keeps
    processes started side by side from each spending minutes on the same build. The binary
    (named after the package's last element) is moved to ``target``.
    """
    what = purpose or package
    name = package.rpartition("@")[0].rstrip("/").rpartition("/")[2]

    def build(env: dict[str, str], gobin: Path) -> Path:
        tag_args = ["-tags", tags] if tags else []
        run_go(
            ["install", "-ldflags", ldflags, *tag_args, package],
            env=env,
            what=what,
            timeout=timeout,
        )
        return gobin / name

    return _locked_build(target, what, cache_dir, build)


def go_build_module(
    module: str,
    package_dir: str,
    target: Path,
    *,
    cache_dir: Path,
    ldflags: str = "-s -w",
    purpose: str = "",
    timeout: float = 3600,
) -> Path:
    """``target``, built from the folder ``package_dir`` of ``module`` (``path@version``) as
    its own main module: for a module whose go.mod has replace directives, which ``go install
    path@version`` refuses. The module's sources come from the module cache (``go mod
    download``) and are built in a temporary copy with the module's own go.mod and go.sum."""
    what = purpose or module

    def build(env: dict[str, str], gobin: Path) -> Path:
        info = json.loads(
            run_go(["mod", "download", "-json", module], env=env, what=what, timeout=timeout)
        )
        source = gobin / "src"
        shutil.copytree(info["Dir"], source)
        for folder in (source, *source.rglob("*")):
            folder.chmod(folder.stat().st_mode | 0o200)
        built = gobin / "binary"
        command = ["build", "-ldflags", ldflags, "-o", str(built), f"./{package_dir}"]
        run_go(command, env=env, what=what, timeout=timeout, cwd=source)
        return built

    return _locked_build(target, what, cache_dir, build)


def _locked_build(
    target: Path, what: str, cache_dir: Path, build: Callable[[dict[str, str], Path], Path]
) -> Path:
    if _executable(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _executable(target):
            return target
        with (
            tempfile.TemporaryDirectory(prefix="go-bin-", dir=target.parent) as gobin,
            tempfile.TemporaryDirectory(prefix="go-cache-", dir=target.parent) as gocache,
        ):
            print(
                f"building {what} with Go (once, into {target.parent})", file=sys.stderr, flush=True
            )
            env = go_env(
                cache_dir,
                GOFLAGS="-modcacherw -buildvcs=false -trimpath",
                GOBIN=gobin,
                GOCACHE=gocache,
            )
            built = build(env, Path(gobin))
            if not built.is_file():
                raise StackError(f"the build of {what} wrote no {built.name}")
            os.replace(built, target)
    return target
