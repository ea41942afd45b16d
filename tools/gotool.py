"""`go install` of a pinned Go command into the git-ignored `.state/tools/`, for the project's
tools that are Go programs (Helm, promtool, the protoc plugins of the grpc-gateway peer).

Every build uses the machine's Go (`GOTOOLCHAIN=local`), static binaries (`CGO_ENABLED=0`), the
module cache `.state/cache/go/mod` (kept, so a rebuild needs no registry) and a temporary build
cache removed afterwards. A file lock beside the target keeps test sessions started side by side
from each spending minutes on the same build.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mercato_devstack import install

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("MERCATO_STATE_DIR", ROOT / ".state"))
TOOLS = STATE / "tools"
GO_CACHE = STATE / "cache" / "go"
BUILD_TIMEOUT_SECONDS = 3600


class ToolError(Exception):
    """A failure with a message for the user."""


def find_go(purpose: str) -> str:
    go = install.find_go()
    if go is None:
        raise ToolError(f"Go is needed to build {purpose} (go install); install Go >= 1.26")
    return go


def go_env(**overrides: str) -> dict[str, str]:
    """The project's Go build environment (mercato_devstack.install.go_env) for a tool."""
    return install.go_env(
        GO_CACHE, **{"GOFLAGS": "-modcacherw -buildvcs=false -trimpath", **overrides}
    )


def _usable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def go_install(
    package: str, target: Path, *, ldflags: str = "-s -w", tags: str = "", purpose: str = ""
) -> Path:
    """``target``, built by ``go install package@version`` unless it is there already.

    The binary ``go install`` writes (named after the package's last element) is moved to
    ``target``.
    """
    if _usable(target):
        return target
    what = purpose or package
    go = find_go(what)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _usable(target):
            return target
        with (
            tempfile.TemporaryDirectory(prefix="go-bin-", dir=target.parent) as gobin,
            tempfile.TemporaryDirectory(prefix="go-cache-", dir=target.parent) as gocache,
        ):
            command = [go, "install", "-ldflags", ldflags]
            if tags:
                command += ["-tags", tags]
            command.append(package)
            print(f"building {what}: {' '.join(command)}", file=sys.stderr, flush=True)
            try:
                result = subprocess.run(  # noqa: S603 - fixed tool, no shell
                    command,
                    env=go_env(GOBIN=gobin, GOCACHE=gocache),
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=BUILD_TIMEOUT_SECONDS,
                )
            except subprocess.TimeoutExpired as error:
                raise ToolError(f"go install of {what} took over {error.timeout} s") from error
            if result.returncode != 0:
                raise ToolError(f"go install of {what} failed:\n{result.stderr[-4000:]}")
            name = package.rpartition("@")[0].rstrip("/").rpartition("/")[2]
            built = Path(gobin) / name
            if not built.is_file():
                raise ToolError(f"go install of {what} wrote no {name}")
            os.replace(built, target)
    return target
