"""The service images as built by `make images`: who they run as, what they carry, how big they
are, and that each starts under runc with a read-only root filesystem and answers its health
check (gRPC health for the gRPC services, /readyz and /status for the gateway)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import HTTP_PORT, MANIFEST, SIZE_BUDGET_BYTES, SUMMARY, ImageFacts, Running, probe

#: The first test's setup may build the toolchain (about 5 minutes on 2 cores) and the images.
pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

NAMES = list(MANIFEST.names)
#: Build tools and package installers that have no place in a runtime image.
TOOL_NAMES = frozenset({"gcc", "cc", "c++", "g++", "make", "uv", "uvx", "pip", "pip3", "apt-get"})
#: Folders of caches a build leaves behind when it is not careful.
CACHE_DIRS = frozenset({".cache", "pip-cache", "__pip_cache__"})
#: The labels every image carries (org.opencontainers.image.source too when the checkout has a
#: remote or MERCATO_IMAGE_SOURCE is set).
LABELS = ("title", "description", "version", "revision", "created", "licenses")


def _walk(rootfs: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """The image's tree, relative to its root, without following symbolic links."""
    for folder, dirs, files in os.walk(rootfs, followlinks=False):
        yield "/" + os.path.relpath(folder, rootfs).removeprefix("."), dirs, files


@pytest.mark.parametrize("name", NAMES)
def test_runs_as_a_numeric_unprivileged_user(facts: dict[str, ImageFacts], name: str) -> None:
    user = facts[name].config["config"].get("User", "")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user!r} is not numeric (runAsNonRoot refuses names)"
    assert int(uid) != 0, "runs as root"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"USER {user!r}: group"


@pytest.mark.parametrize("name", NAMES)
def test_labels_and_provenance(facts: dict[str, ImageFacts], name: str) -> None:
    labels = facts[name].config["config"].get("Labels") or {}
    missing = [key for key in LABELS if not labels.get(f"org.opencontainers.image.{key}")]
    assert not missing, f"labels missing: {missing}"
    head = subprocess.run(
        ["git", "-C", str(Path(__file__).parents[2]), "rev-parse", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert labels["org.opencontainers.image.revision"] == head
    assert labels["org.opencontainers.image.title"] == f"mercato-{name}"
    assert facts[name].ref.rsplit(":", 1)[1].startswith(head[:7]), "tag: the short commit"
    assert "latest" not in facts[name].ref.rsplit(":", 1)[1]
    kinds = [
        entry.get("annotations", {}).get("vnd.docker.reference.type")
        for entry in facts[name].index.get("manifests", [])
    ]
    assert "attestation-manifest" in kinds, "no provenance attestation"


@pytest.mark.parametrize("name", NAMES)
def test_no_build_tools_or_caches(facts: dict[str, ImageFacts], name: str) -> None:
    found = []
    for folder, dirs, files in _walk(facts[name].rootfs):
        found += [f"{folder}/{d}" for d in dirs if d in CACHE_DIRS]
        if folder.endswith("/bin") or folder.endswith("/sbin"):
            found += [f"{folder}/{f}" for f in files if f in TOOL_NAMES or f.startswith("gcc-")]
        if folder.endswith("/site-packages"):
            found += [f"{folder}/{d}" for d in dirs if d in ("pip", "setuptools", "uv")]
        if folder in ("/var/cache/apt/archives", "/var/lib/apt/lists"):
            found += [f"{folder}/{f}" for f in files if f != "lock"]
    for leftover in ("/src", "/root/.cache"):
        if (facts[name].rootfs / leftover.lstrip("/")).exists():
            found.append(leftover)
    assert not found, f"build tools or caches in the image: {sorted(found)}"


@pytest.mark.parametrize("name", NAMES)
def test_size(facts: dict[str, ImageFacts], name: str) -> None:
    sizes = facts[name].sizes
    SUMMARY.append(
        f"{name:<10} pulled {sizes.compressed / 1e6:6.1f} MB   unpacked "
        f"{sizes.uncompressed / 1e6:6.1f} MB   {sizes.layers} layers   {facts[name].ref}"
    )
    assert sizes.compressed < SIZE_BUDGET_BYTES, f"{sizes.compressed / 1e6:.1f} MB pulled"


@pytest.mark.parametrize("name", NAMES)
def test_starts_read_only_and_answers_health(running: dict[str, Running], name: str) -> None:
    entry = running[name]
    assert entry.error is None, f"{name}: {entry.error}\n{entry.log_tail()}"
    assert probe(entry.service) is None, entry.log_tail()
    checks = entry.checks
    assert checks, "the container's process was not found"
    assert set(checks["uids"]) == {"10001"}, checks
    assert set(checks["gids"]) == {"10001"}, checks
    assert checks["root_read_only"], "the root filesystem is writable"
    assert int(checks["cap_eff"], 16) == 0, f"capabilities: {checks['cap_eff']}"


def test_gateway_reaches_every_upstream(running: dict[str, Running]) -> None:
    """Through the gateway's /status: each upstream answers SERVING from its own container."""
    failed = {name: entry.error for name, entry in running.items() if entry.error}
    if failed:
        pytest.skip(f"services did not start: {failed}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/status", timeout=10) as reply:
            body: dict[str, Any] = json.loads(reply.read())
    except urllib.error.HTTPError as error:
        body = {"http_status": error.code, "body": error.read().decode(errors="replace")}
    grpc_services = [name for name in NAMES if MANIFEST.service(name).kind == "grpc"]
    assert body.get("status") == "ok", body
    assert len(body["upstreams"]) == len(grpc_services), body
