"""`go install` of a pinned Go command into the git-ignored `.state/tools/`, for the project's
tools that are Go programs (Helm, promtool, the protoc plugins of the grpc-gateway peer).

Every build uses the machine's Go (`GOTOOLCHAIN=local`), static binaries (`CGO_ENABLED=0`), the
module cache `.state/cache/go/mod` (kept, so a rebuild needs no registry) and a temporary build
cache removed afterwards. A file lock beside the target keeps test sessions started side by side
from each spending minutes on the same build.
"""

from __future__ import annotations

import os
from pathlib import Path

from mercato_devstack import install
from mercato_devstack.errors import StackError

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


def go_install(
    package: str, target: Path, *, ldflags: str = "-s -w", tags: str = "", purpose: str = ""
) -> Path:
    """``target``, built by ``go install package@version`` unless it is there already
    (mercato_devstack.install.go_install with the tools' module cache)."""
    try:
        return install.go_install(
            package,
            target,
            cache_dir=GO_CACHE,
            ldflags=ldflags,
            tags=tags,
            purpose=purpose,
            timeout=BUILD_TIMEOUT_SECONDS,
        )
    except StackError as error:
        raise ToolError(str(error)) from error
