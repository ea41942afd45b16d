"""The GraphiQL page's assets for the gateway in development (``make run`` and the private
suites): the npm packages pinned in ``services/gateway/graphiql/package-lock.json``, installed
with ``npm ci`` into its git-ignored ``node_modules`` when missing or older than the lock."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

__all__ = ["graphiql_assets"]

_log = logging.getLogger("mercato_devstack.graphiql")
NPM_TIMEOUT_SECONDS = 600


def graphiql_assets(repo_root: Path) -> Path | None:
    """The ``node_modules`` to give the gateway as ``GRAPHIQL_ASSETS_DIR``; None (no GraphiQL)
    when the package is absent or npm is not installed."""
    package = repo_root / "services" / "gateway" / "graphiql"
    lock = package / "package-lock.json"
    if not lock.is_file():
        return None
    modules = package / "node_modules"
    installed = modules / ".package-lock.json"  # written by npm at each install
    if installed.is_file() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return modules
    npm = shutil.which("npm")
    if npm is None:
        _log.warning("npm not found: the gateway serves no GraphiQL page")
        return None
    print(
        "graphiql: installing the page's assets (npm ci in services/gateway/graphiql)", flush=True
    )
    subprocess.run(  # noqa: S603 - fixed arguments
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=package,
        check=True,
        timeout=NPM_TIMEOUT_SECONDS,
    )
    return modules
