"""Installing and building what the stack runs, once, into the cache (registries only then)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
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
