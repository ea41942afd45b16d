"""The services' container images, built without Docker: BuildKit, runc and a local registry.

    python tools/images.py tools        build (or reuse) the pinned runc, buildkitd/buildctl,
                                        registry and crane into `.state/tools/`
    python tools/images.py up           start the local registry and buildkitd (idempotent)
    python tools/images.py down         stop them (their data is kept)
    python tools/images.py status       each daemon with pid, address and health
    python tools/images.py base [--rebuild]
                                        the Debian base image (mmdebstrap), pushed to the registry
    python tools/images.py build [SERVICE ...]
                                        every service image (default: all of
                                        services/services.toml): an OCI archive under
                                        `.state/images/oci/` and a push to the registry
    python tools/images.py list         the images of the current tree: reference, digest, sizes

Everything is built from pinned sources with the machine's Go (module cache `.state/cache/go/`,
as Helm and promtool are, tools/gotool.py): runc (cgo, libseccomp), buildkitd and buildctl
(inside the module's own source tree: its go.mod has `exclude` directives, which `go install`
refuses), the distribution registry and crane (`go install`). Debian packages the builds need
(mmdebstrap, libseccomp-dev, gcc) are installed with apt-get when missing (as root).

The base image is a Debian bookworm rootfs made by `mmdebstrap` (python3 3.11, ca-certificates and
the C++ runtime; user and group 10001 `mercato`), imported as a single-layer image and pushed as
`mercato-python-base:<tag>`. The service images take it as the Dockerfiles' `PYTHON_IMAGE` build
argument, by digest, and uv as the named context of the Dockerfiles' `UV_IMAGE` (a folder holding
the pinned uv binary). Tags are the git commit (`git rev-parse --short HEAD`, `-dirty` added when
the work tree has changes): a clean tag already in the registry is reused, never rebuilt; a dirty
one is overwritten. See docs/images.md.

`run_container` starts an image with runc as a Kubernetes restricted pod would run it (numeric
user, read-only root filesystem, no capabilities) in the host's network namespace: the image
checks of tests/images (`make images-smoke`) use it.

State: `.state/images/` (registry data, BuildKit's root and socket, the base rootfs, the OCI
archives, `images.json` listing the last build, unpacked images for runc). The registry listens
on 127.0.0.1:5000 (MERCATO_REGISTRY_PORT moves it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gotool import ROOT, STATE, TOOLS, ToolError, find_go, go_env, go_install  # tools/gotool.py

from mercato_devstack import install, process
from mercato_devstack.errors import StackError
from mercato_devstack.manifest import load_manifest

RUNC_VERSION = "v1.5.3"
BUILDKIT_VERSION = "v0.34.2"
REGISTRY_VERSION = "v3.1.2"
CRANE_VERSION = "v0.22.1"
REGISTRY_MODULE = "github.com/distribution/distribution/v3"
CRANE_MODULE = "github.com/google/go-containerregistry"
BUILD_TIMEOUT_SECONDS = 3600
#: The platform of the images (the machine's).
PLATFORM = "linux/amd64"

IMAGES_STATE = STATE / "images"
HOST = "127.0.0.1"
REGISTRY_PORT = int(os.environ.get("MERCATO_REGISTRY_PORT", "5000"))
REGISTRY = f"{HOST}:{REGISTRY_PORT}"
BUILDKIT_DIR = IMAGES_STATE / "buildkit"
BUILDKIT_SOCKET = BUILDKIT_DIR / "buildkitd.sock"
REGISTRY_DIR = IMAGES_STATE / "registry"
OCI_DIR = IMAGES_STATE / "oci"
BASE_DIR = IMAGES_STATE / "base"
INDEX_FILE = IMAGES_STATE / "images.json"
#: The host's CA bundle: it trusts the TLS-intercepting proxy in front of the package registries.
#: Handed to RUN steps as a BuildKit secret (id `cacert`), never stored in an image.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

#: The base: Debian bookworm, its python3 (3.11) and ca-certificates, and the C++ runtime that
#: manylinux wheels may link against (grpcio does; the `minbase` set gets it through apt).
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "ca-certificates", "libstdc++6")
BASE_REPOSITORY = "mercato-python-base"
#: mmdebstrap's SOURCE_DATE_EPOCH (bookworm's release day): the same packages give the same
#: rootfs, bit for bit, so the base's tag and digest change only when a package does.
BASE_SOURCE_DATE_EPOCH = 1686355200
#: The unprivileged user of every image (the chart's runAsUser).
APP_UID = 10001
APP_USER = "mercato"
IMAGE_PREFIX = "mercato-"
#: Dockerfile: `ARG UV_IMAGE=ghcr.io/astral-sh/uv:<version>` names where uv comes from.
UV_IMAGE_ARG = re.compile(r"^ARG UV_IMAGE=(?P<image>\S+:(?P<version>\d+\.\d+\.\d+))$", re.M)


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


# Running commands -------------------------------------------------------------------------------


def _run(
    command: Sequence[str],
    *,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = BUILD_TIMEOUT_SECONDS,
    heartbeat: float = 30.0,
) -> str:
    """Run ``command`` to completion, printing a line every ``heartbeat`` seconds while it runs.

    Its output goes to ``log_path`` (kept) or a temporary file; on failure the tail of it is in
    the error. Returns the output when no ``log_path`` is given.
    """
    with contextlib.ExitStack() as stack:
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            output = stack.enter_context(log_path.open("w+b"))
        else:
            output = stack.enter_context(tempfile.TemporaryFile())
        started = time.monotonic()
        try:
            child = subprocess.Popen(  # noqa: S603 - fixed tools, no shell
                list(command),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        except FileNotFoundError as error:
            raise ToolError(f"{what}: command not found: {command[0]}") from error
        while True:
            try:
                child.wait(timeout=heartbeat)
                break
            except subprocess.TimeoutExpired as still_running:
                elapsed = time.monotonic() - started
                if elapsed > timeout:
                    child.kill()
                    child.wait()
                    raise ToolError(f"{what}: took over {timeout:.0f} s") from still_running
                log(f"{what}: still running, {elapsed:.0f} s")
        output.seek(0)
        text = output.read().decode("utf-8", "replace")
    if child.returncode != 0:
        where = f" (log: {log_path})" if log_path else ""
        raise ToolError(f"{what} failed (exit {child.returncode}){where}:\n{text[-4000:]}")
    return text


def _locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive file lock at ``path``: side-by-side sessions do the work once."""

    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    return hold()


def _usable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


# Prerequisites --------------------------------------------------------------------------------


def missing_prerequisites() -> str | None:
    """Why images cannot be built and run on this machine (None when they can).

    Root (buildkitd's OCI worker and runc), overlayfs (BuildKit's snapshotter), Go (the tools)
    unless every tool is built already, and apt-get when a Debian package is missing.
    """
    if not process.is_root():
        return "building and running images needs root (buildkitd's OCI worker, runc)"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems.split():
        return "the kernel offers no overlayfs (BuildKit's snapshotter)"
    if not all(_usable(path) for path in _tool_paths().values()) and install.find_go() is None:
        return "Go is needed to build runc, BuildKit, the registry and crane; install Go >= 1.26"
    if _missing_packages() and process.which("apt-get") is None:
        return f"missing Debian packages {_missing_packages()} and no apt-get to install them"
    return None


def _missing_packages() -> list[str]:
    """Debian packages the builds need that the machine lacks."""
    missing = []
    if process.which("mmdebstrap") is None:
        missing.append("mmdebstrap")
    if not _usable(_tool_paths()["runc"]):
        if not Path("/usr/include/seccomp.h").is_file():
            missing.append("libseccomp-dev")
        if process.which("gcc") is None:
            missing += ["gcc", "libc6-dev"]
        if process.which("pkg-config") is None:
            missing.append("pkg-config")
    return missing


def ensure_packages() -> None:
    """Install the missing Debian packages (apt-get, as root), saying which."""
    missing = _missing_packages()
    if not missing:
        return
    log(f"installing Debian packages: {' '.join(missing)}")
    try:
        install.apt_install(missing)
    except StackError as error:
        raise ToolError(str(error)) from error
    for name in missing:
        version = subprocess.run(  # noqa: S603 - fixed tool, no shell
            ["dpkg-query", "-W", "-f=${Version}", name],  # noqa: S607 - dpkg from PATH
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        log(f"installed {name} {version or '(version unknown)'}")


# Building the tools -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    runc: Path
    buildkitd: Path
    buildctl: Path
    registry: Path
    crane: Path


def _tool_paths() -> dict[str, Path]:
    return {
        "runc": TOOLS / f"runc-{RUNC_VERSION}" / "runc",
        "buildkitd": TOOLS / f"buildkit-{BUILDKIT_VERSION}" / "buildkitd",
        "buildctl": TOOLS / f"buildkit-{BUILDKIT_VERSION}" / "buildctl",
        "registry": TOOLS / f"registry-{REGISTRY_VERSION}" / "registry",
        "crane": TOOLS / f"crane-{CRANE_VERSION}" / "crane",
    }


def _module_dir(module: str, version: str) -> Path:
    """The module's source tree in the module cache (downloaded when missing)."""
    TOOLS.mkdir(parents=True, exist_ok=True)
    info = json.loads(
        _run(
            [find_go(module), "mod", "download", "-json", f"{module}@{version}"],
            what=f"go mod download {module}@{version}",
            cwd=TOOLS,
            env=go_env(),
            timeout=1800,
        )
    )
    if info.get("Error"):
        raise ToolError(f"go mod download {module}@{version}: {info['Error']}")
    return Path(info["Dir"])


def _build_in_module(
    module: str,
    version: str,
    packages: Mapping[str, str],
    out_dir: Path,
    *,
    ldflags: str,
    tags: str = "",
    cgo: bool = False,
) -> None:
    """`go build` of ``packages`` (binary name -> package path) inside the module's own tree.

    For modules `go install` refuses (exclude or replace directives) or that need cgo. A
    temporary build cache is removed afterwards; the binaries land in ``out_dir`` together.
    """
    source = _module_dir(module, version)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="go-cache-", dir=out_dir.parent) as gocache,
        tempfile.TemporaryDirectory(prefix="go-bin-", dir=out_dir.parent) as staging,
    ):
        env = go_env(GOCACHE=gocache, CGO_ENABLED="1" if cgo else "0")
        started = time.monotonic()
        for name, package in packages.items():
            command = [find_go(module), "build", "-ldflags", ldflags, "-o", f"{staging}/{name}"]
            if tags:
                command += ["-tags", tags]
            command.append(package)
            log(f"building {name} {version} from {module} (minutes on a cold cache)")
            _run(command, what=f"go build {name}", cwd=source, env=env)
        log(f"{module} {version}: built in {time.monotonic() - started:.0f} s")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
        out_dir.chmod(0o755)
        Path(staging).mkdir()  # for TemporaryDirectory's cleanup


def ensure_tools() -> Tools:
    """runc, buildkitd, buildctl, the registry and crane, each built once (cached)."""
    paths = _tool_paths()
    if all(_usable(path) for path in paths.values()):
        return Tools(**paths)
    reason = missing_prerequisites()
    if reason is not None:
        raise ToolError(reason)
    ensure_packages()
    runc = paths["runc"]
    if not _usable(runc):
        with _locked(TOOLS / f".runc-{RUNC_VERSION}.lock"):
            if not _usable(runc):
                # cgo for libseccomp; upstream's `libpathrs` tag needs a library bookworm lacks.
                _build_in_module(
                    "github.com/opencontainers/runc",
                    RUNC_VERSION,
                    {"runc": "."},
                    runc.parent,
                    ldflags="-s -w",
                    tags="seccomp urfave_cli_no_docs",
                    cgo=True,
                )
    buildkitd, buildctl = paths["buildkitd"], paths["buildctl"]
    if not (_usable(buildkitd) and _usable(buildctl)):
        with _locked(TOOLS / f".buildkit-{BUILDKIT_VERSION}.lock"):
            if not (_usable(buildkitd) and _usable(buildctl)):
                stamp = " ".join(
                    [
                        "-s -w",
                        f"-X github.com/moby/buildkit/version.Version={BUILDKIT_VERSION}",
                        "-X github.com/moby/buildkit/version.Package=github.com/moby/buildkit",
                    ]
                )
                _build_in_module(
                    "github.com/moby/buildkit",
                    BUILDKIT_VERSION,
                    {"buildkitd": "./cmd/buildkitd", "buildctl": "./cmd/buildctl"},
                    buildkitd.parent,
                    ldflags=stamp,
                    tags="osusergo netgo",
                )
    go_install(
        f"{REGISTRY_MODULE}/cmd/registry@{REGISTRY_VERSION}",
        paths["registry"],
        ldflags=f"-s -w -X {REGISTRY_MODULE}/version.version={REGISTRY_VERSION}",
        purpose="the distribution registry",
    )
    go_install(
        f"{CRANE_MODULE}/cmd/crane@{CRANE_VERSION}",
        paths["crane"],
        ldflags=f"-s -w -X {CRANE_MODULE}/cmd/crane/cmd.Version={CRANE_VERSION}",
        purpose="crane",
    )
    return Tools(**paths)


# The registry and buildkitd ------------------------------------------------------------------


@dataclass(frozen=True)
class Daemon:
    """A daemon run from `.state/images/<name>/`: its pid file, log and health check."""

    name: str
    directory: Path
    address: str

    @property
    def pid_path(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    def pid(self) -> int | None:
        return process.read_pidfile(self.pid_path)


REGISTRY_DAEMON = Daemon("registry", REGISTRY_DIR, f"http://{REGISTRY}")
BUILDKIT_DAEMON = Daemon("buildkitd", BUILDKIT_DIR, f"unix://{BUILDKIT_SOCKET}")


def _registry_config() -> Path:
    """The distribution registry's configuration: filesystem storage, loopback, plain HTTP."""
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(REGISTRY_DIR / "data")},
            "delete": {"enabled": True},
        },
        "http": {"addr": REGISTRY, "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    path = REGISTRY_DIR / "config.json"  # YAML is a superset of JSON: the registry reads it
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _buildkitd_config(tools: Tools) -> Path:
    """buildkitd's configuration: the OCI worker (runc, overlayfs) on the host's network, so
    RUN steps reach the package registries and the build reaches the plain-HTTP registry."""
    text = f"""\
root = "{BUILDKIT_DIR / "root"}"

[log]
  level = "warn"

[grpc]
  address = ["unix://{BUILDKIT_SOCKET}"]

[history]
  maxEntries = 20

[worker.oci]
  enabled = true
  snapshotter = "overlayfs"
  binary = "{tools.runc}"
  networkMode = "host"
  gc = true
  reservedSpace = "2GB"
  maxUsedSpace = "20GB"

[worker.containerd]
  enabled = false

[registry."{REGISTRY}"]
  http = true
"""
    path = BUILDKIT_DIR / "buildkitd.toml"
    path.write_text(text)
    return path


def _registry_health() -> str | None:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=2) as reply:
            reply.read()
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except OSError as error:
        return str(error)
    return None


def _buildkit_health(tools: Tools) -> str | None:
    if not BUILDKIT_SOCKET.exists():
        return f"no socket {BUILDKIT_SOCKET}"
    result = subprocess.run(  # noqa: S603 - fixed tool, no shell
        [str(tools.buildctl), "--addr", BUILDKIT_DAEMON.address, "debug", "workers"],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    if result.returncode != 0:
        return (result.stderr or result.stdout).strip()[-300:]
    return None


def _health(daemon: Daemon, tools: Tools) -> str | None:
    return _registry_health() if daemon is REGISTRY_DAEMON else _buildkit_health(tools)


def _start(daemon: Daemon, tools: Tools, timeout: float = 60) -> None:
    """Start ``daemon`` unless it runs, then wait until it answers."""
    if daemon.pid() is None:
        daemon.directory.mkdir(parents=True, exist_ok=True)
        if daemon is REGISTRY_DAEMON:
            if process.port_open(REGISTRY_PORT):
                raise ToolError(
                    f"port {REGISTRY} is taken by a process these scripts did not start "
                    "(set MERCATO_REGISTRY_PORT to move the registry)"
                )
            argv = [str(tools.registry), "serve", str(_registry_config())]
        else:
            BUILDKIT_SOCKET.unlink(missing_ok=True)  # left by a daemon that was killed
            argv = [str(tools.buildkitd), "--config", str(_buildkitd_config(tools))]
        env = {**os.environ, "PATH": f"{tools.runc.parent}:{os.environ.get('PATH', '')}"}
        pid = process.spawn(argv, log_path=daemon.log_path, cwd=daemon.directory, env=env)
        process.write_pidfile(daemon.pid_path, pid)
        log(f"started {daemon.name} (pid {pid}) on {daemon.address}")
    deadline = time.monotonic() + timeout
    while (reason := _health(daemon, tools)) is not None:
        if daemon.pid() is None:
            raise ToolError(
                f"{daemon.name} exited; last lines of {daemon.log_path}:\n"
                + process.tail(daemon.log_path)
            )
        if time.monotonic() > deadline:
            raise ToolError(f"{daemon.name} not answering after {timeout:.0f} s: {reason}")
        time.sleep(0.2)


def up(tools: Tools) -> None:
    """The registry and buildkitd, started when not running (they keep running afterwards)."""
    with _locked(IMAGES_STATE / "daemons.lock"):
        for daemon in (REGISTRY_DAEMON, BUILDKIT_DAEMON):
            _start(daemon, tools)


def down() -> None:
    with _locked(IMAGES_STATE / "daemons.lock"):
        for daemon in (BUILDKIT_DAEMON, REGISTRY_DAEMON):
            pid = daemon.pid()
            if pid is not None:
                log(f"stopping {daemon.name} (pid {pid})")
                process.terminate(pid, timeout=30)
            daemon.pid_path.unlink(missing_ok=True)


def status(tools: Tools) -> bool:
    """Print each daemon; True when both run and answer."""
    healthy = True
    print(f"{'daemon':<10} {'pid':>7}  {'address':<52} health")
    for daemon in (REGISTRY_DAEMON, BUILDKIT_DAEMON):
        pid = daemon.pid()
        reason = "stopped" if pid is None else _health(daemon, tools)
        healthy = healthy and reason is None
        health = "healthy" if reason is None else f"UNHEALTHY: {reason}"
        print(f"{daemon.name:<10} {pid or '-':>7}  {daemon.address:<52} {health}")
    return healthy


# crane ----------------------------------------------------------------------------------------


def crane(tools: Tools, *args: str, timeout: float = 300) -> str:
    """crane's output (``--insecure``: the local registry speaks plain HTTP)."""
    result = subprocess.run(  # noqa: S603 - fixed tool, no shell
        [str(tools.crane), *args, "--insecure"],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise ToolError(f"crane {' '.join(args)}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def registry_digest(tools: Tools, ref: str) -> str | None:
    """The digest ``ref`` has in the registry, None when it is not there."""
    try:
        return crane(tools, "digest", ref).strip() or None
    except ToolError as error:
        if "MANIFEST_UNKNOWN" in str(error) or "NAME_UNKNOWN" in str(error):
            return None
        raise


def repository_of(ref: str) -> str:
    """``ref`` without its tag or digest."""
    name = ref.split("@", 1)[0]
    head, _, tail = name.rpartition(":")
    return head if head and "/" not in tail else name


def platform_manifest(tools: Tools, ref: str) -> tuple[str, dict[str, Any]]:
    """The linux/amd64 image of ``ref`` (an index when it carries attestations): its reference
    by digest and its manifest."""
    digest = crane(tools, "digest", "--platform", PLATFORM, ref).strip()
    pinned = f"{repository_of(ref)}@{digest}"
    return pinned, json.loads(crane(tools, "manifest", pinned))


# Git and labels -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    commit: str
    tag: str
    dirty: bool
    #: The commit's time (seconds since the epoch): the images' creation time.
    committed: int

    @property
    def created(self) -> str:
        return _utc(self.committed)


def _git(*args: str) -> str:
    result = subprocess.run(  # noqa: S603 - fixed tool, no shell
        ["git", "-C", str(ROOT), *args],  # noqa: S607 - git from PATH
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ToolError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def revision() -> Revision:
    """The commit, the image tag (short commit, `-dirty` with uncommitted or untracked files)."""
    commit = _git("rev-parse", "HEAD")
    short = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain"))
    committed = int(_git("show", "-s", "--format=%ct", "HEAD"))
    return Revision(commit, f"{short}-dirty" if dirty else short, dirty, committed)


def image_source() -> str | None:
    """Where the source is published: $MERCATO_IMAGE_SOURCE, else the `origin` remote's URL
    (credentials removed), else None (the label is then left out)."""
    explicit = os.environ.get("MERCATO_IMAGE_SOURCE")
    if explicit:
        return explicit
    try:
        url = _git("remote", "get-url", "origin")
    except ToolError:
        return None
    return re.sub(r"^(\w+://)[^@/]+@", r"\1", url) or None


def _utc(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _labels(title: str, description: str, version: str, rev: Revision) -> dict[str, str]:
    license_id = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    labels = {
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": rev.commit,
        # Dated by the commit (also with uncommitted changes), like the image configuration
        # (SOURCE_DATE_EPOCH): a rebuild of unchanged inputs gives the same image.
        "org.opencontainers.image.created": rev.created,
        "org.opencontainers.image.licenses": str(license_id),
    }
    source = image_source()
    if source:
        labels["org.opencontainers.image.source"] = source
    return labels


# BuildKit builds ------------------------------------------------------------------------------


def _buildctl(
    tools: Tools,
    *,
    what: str,
    context: Path,
    dockerfile_dir: Path,
    ref: str,
    archive: Path,
    options: Mapping[str, str],
    named_contexts: Mapping[str, Path] = {},
    log_path: Path,
) -> str:
    """One `buildctl build` with the Dockerfile frontend: an OCI archive and a push of ``ref``
    in the same run. Returns the digest pushed."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="buildctl-", dir=IMAGES_STATE) as scratch:
        metadata = Path(scratch) / "metadata.json"
        command = [
            str(tools.buildctl),
            "--addr",
            BUILDKIT_DAEMON.address,
            "build",
            "--progress=plain",
            "--frontend=dockerfile.v0",
            "--local",
            f"context={context}",
            "--local",
            f"dockerfile={dockerfile_dir}",
            "--output",
            f"type=oci,dest={partial},name={ref}",
            "--output",
            f"type=image,name={ref},push=true",
            "--metadata-file",
            str(metadata),
        ]
        if HOST_CA_BUNDLE.is_file():
            command += ["--secret", f"id=cacert,src={HOST_CA_BUNDLE}"]
        for name, folder in named_contexts.items():
            local = re.sub(r"[^a-z0-9]", "-", name.lower())
            command += ["--opt", f"context:{name}=local:{local}", "--local", f"{local}={folder}"]
        for key, value in options.items():
            command += ["--opt", f"{key}={value}"]
        _run(command, what=what, log_path=log_path)
        result = json.loads(metadata.read_text())
    partial.chmod(0o644)
    os.replace(partial, archive)
    digest = result.get("containerimage.digest")
    if not isinstance(digest, str):
        raise ToolError(f"{what}: BuildKit reported no image digest (see {log_path})")
    return digest


# The base image -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseImage:
    ref: str
    digest: str
    tag: str
    rootfs_sha256: str

    @property
    def pinned(self) -> str:
        """The reference by digest the Dockerfiles get as PYTHON_IMAGE."""
        return f"{repository_of(self.ref)}@{self.digest}"


#: mmdebstrap's hooks: the user of the images, and no host files left in the rootfs.
BASE_HOOKS = (
    f'echo "{APP_USER}:x:{APP_UID}:" >> "$1/etc/group"',
    f'echo "{APP_USER}:x:{APP_UID}:{APP_UID}:{APP_USER}:/nonexistent:/usr/sbin/nologin"'
    ' >> "$1/etc/passwd"',
    'rm -f "$1/etc/resolv.conf" "$1/etc/hostname"',
)


def _mmdebstrap_args() -> list[str]:
    """mmdebstrap's arguments but the output: the `essential` package set (no apt, no package
    manager beyond dpkg) plus python3 and ca-certificates, merged /usr without usrmerge (which
    would pull in perl), no documentation, manual pages or translations, no /dev nodes."""
    args = [
        "--variant=essential",
        "--format=tar",
        f"--include={','.join(BASE_PACKAGES)}",
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--skip=output/dev",
        "--aptopt=Acquire::Retries 3",
    ]
    for excluded in ("doc", "man", "info", "locale", "lintian", "linda"):
        args.append(f"--dpkgopt=path-exclude=/usr/share/{excluded}/*")
    args += [f"--customize-hook={hook}" for hook in BASE_HOOKS]
    return [*args, BASE_SUITE]


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def ensure_base(tools: Tools, *, rebuild: bool = False) -> BaseImage:
    """The base image in the registry: reused when its record matches the recipe and the
    registry still has it; else the rootfs is made (mmdebstrap, about a minute) and imported."""
    record = BASE_DIR / "base.json"
    recipe = json.dumps({"mmdebstrap": _mmdebstrap_args(), "epoch": BASE_SOURCE_DATE_EPOCH})
    with _locked(BASE_DIR / "base.lock"):
        if not rebuild and record.is_file():
            saved = json.loads(record.read_text())
            if saved.get("recipe") == recipe:
                base = BaseImage(**saved["image"])
                # Pushed to this registry (MERCATO_REGISTRY_PORT may have moved it) and still there.
                here = base.ref.startswith(f"{REGISTRY}/")
                if here and registry_digest(tools, base.ref) == base.digest:
                    log(f"base image {base.ref} ({base.digest[:19]}) reused")
                    return base
        rootfs = BASE_DIR / "rootfs.tar"
        if (
            rebuild
            or not rootfs.is_file()
            or not record.is_file()
            or (json.loads(record.read_text()).get("recipe") != recipe)
        ):
            ensure_packages()
            partial = BASE_DIR / "rootfs.tar.partial"
            log(f"base image: mmdebstrap {BASE_SUITE} with {', '.join(BASE_PACKAGES)}")
            started = time.monotonic()
            _run(
                ["mmdebstrap", *_mmdebstrap_args(), str(partial)],
                what="mmdebstrap",
                log_path=BASE_DIR / "mmdebstrap.log",
                env={
                    **os.environ,
                    "TMPDIR": str(BASE_DIR),
                    "SOURCE_DATE_EPOCH": str(BASE_SOURCE_DATE_EPOCH),
                },
            )
            os.replace(partial, rootfs)
            seconds = time.monotonic() - started
            log(f"base rootfs: {rootfs.stat().st_size >> 20} MiB in {seconds:.0f} s")
        checksum = _sha256(rootfs)
        tag = f"3.11-{BASE_SUITE}-{checksum[:12]}"
        ref = f"{REGISTRY}/{BASE_REPOSITORY}:{tag}"
        context = BASE_DIR / "context"
        shutil.rmtree(context, ignore_errors=True)
        context.mkdir(parents=True)
        os.link(rootfs, context / "rootfs.tar")
        (context / "Dockerfile").write_text(
            "# The Debian rootfs made by mmdebstrap (tools/images.py), as one layer.\n"
            "FROM scratch\n"
            "ADD rootfs.tar /\n"
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\\n"
            "    LANG=C.UTF-8\n"
            'CMD ["python3"]\n'
        )
        # Nothing from the checkout (no revision): the same packages give the same image.
        labels = {
            "org.opencontainers.image.title": BASE_REPOSITORY,
            "org.opencontainers.image.description": (
                f"Debian {BASE_SUITE} (essential set) with {', '.join(BASE_PACKAGES)}; "
                f"user {APP_UID} ({APP_USER})"
            ),
            "org.opencontainers.image.version": tag,
            "org.opencontainers.image.created": _utc(BASE_SOURCE_DATE_EPOCH),
            "org.opencontainers.image.base.name": f"debian:{BASE_SUITE}",
        }
        started = time.monotonic()
        digest = _buildctl(
            tools,
            what="base image build",
            context=context,
            dockerfile_dir=context,
            ref=ref,
            archive=BASE_DIR / f"{BASE_REPOSITORY}-{tag}.oci.tar",
            options={
                **{f"label:{key}": value for key, value in labels.items()},
                "build-arg:SOURCE_DATE_EPOCH": str(BASE_SOURCE_DATE_EPOCH),
            },
            log_path=BASE_DIR / "build.log",
        )
        shutil.rmtree(context)
        for older in BASE_DIR.glob(f"{BASE_REPOSITORY}-*.oci.tar"):
            if older.name != f"{BASE_REPOSITORY}-{tag}.oci.tar":
                older.unlink()
        base = BaseImage(ref=ref, digest=digest, tag=tag, rootfs_sha256=checksum)
        record.write_text(json.dumps({"recipe": recipe, "image": asdict(base)}, indent=2) + "\n")
        log(f"base image {ref} ({digest[:19]}) in {time.monotonic() - started:.0f} s")
        return base


# The service images ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceImage:
    service: str
    ref: str
    digest: str
    archive: str | None
    seconds: float
    reused: bool

    @property
    def pinned(self) -> str:
        return f"{repository_of(self.ref)}@{self.digest}"


def services() -> list[str]:
    """The services of services/services.toml, in its order."""
    return list(load_manifest().names)


def uv_context(services: Sequence[str]) -> tuple[str, Path]:
    """The Dockerfiles' UV_IMAGE (the same in every one) and a folder holding that uv version's
    binary as `/uv`, to stand in for the image as a named build context."""
    images = set()
    for name in services:
        text = (ROOT / "services" / name / "Dockerfile").read_text()
        found = UV_IMAGE_ARG.search(text)
        if found is None:
            raise ToolError(f"services/{name}/Dockerfile: no `ARG UV_IMAGE=<image>:<x.y.z>`")
        images.add((found["image"], found["version"]))
    if len(images) != 1:
        raise ToolError(f"the Dockerfiles disagree on UV_IMAGE: {sorted(images)}")
    [(image, version)] = images
    binary = _uv_binary(version)
    folder = IMAGES_STATE / "contexts" / f"uv-{version}"
    if not (folder / "uv").is_file() or _sha256(folder / "uv") != _sha256(binary):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, folder / "uv.partial")
        os.replace(folder / "uv.partial", folder / "uv")
    return image, folder


def _uv_version(binary: str | Path) -> str | None:
    result = subprocess.run(  # noqa: S603 - a uv binary, no shell
        [str(binary), "--version"], capture_output=True, text=True, check=False
    )
    words = result.stdout.split()
    return words[1] if result.returncode == 0 and len(words) > 1 else None


def _uv_binary(version: str) -> Path:
    """The uv binary of ``version``: the project's or the machine's when it is that version,
    else installed from PyPI into `.state/tools/uv-<version>/`."""
    candidates = [TOOLS / f"uv-{version}" / "bin" / "uv", TOOLS / "uv" / "lib" / "bin" / "uv"]
    found = shutil.which("uv")
    if found:
        candidates.append(Path(found).resolve())
    for candidate in candidates:
        if _usable(candidate) and _uv_version(candidate) == version:
            return candidate
    target = TOOLS / f"uv-{version}"
    log(f"installing uv {version} from PyPI into {target}")
    # With the uv that runs the project: its virtual environment (sys.executable) has no pip.
    installer = next((c for c in candidates[1:] if _usable(c)), None)
    if installer is None:
        raise ToolError(f"no uv to install uv {version} with: run `make sync` first")
    _run(
        [
            str(installer),
            "pip",
            "install",
            "--quiet",
            "--python",
            sys.executable,
            "--target",
            str(target),
            f"uv=={version}",
        ],
        what=f"uv pip install uv=={version}",
    )
    binary = target / "bin" / "uv"
    if _uv_version(binary) != version:
        raise ToolError(f"{binary} is not uv {version}")
    return binary


def _service_meta(name: str) -> tuple[str, str]:
    """The version and description of a service's own pyproject.toml."""
    project = tomllib.loads((ROOT / "services" / name / "pyproject.toml").read_text())["project"]
    return str(project["version"]), str(project.get("description", f"mercato {name}"))


def _write_index(rev: Revision, base: BaseImage, built: Sequence[ServiceImage]) -> None:
    """`.state/images/images.json`: the images of this tag (merged with earlier runs of it)."""
    index: dict[str, Any] = {}
    if INDEX_FILE.is_file():
        index = json.loads(INDEX_FILE.read_text())
    if index.get("tag") != rev.tag:
        index = {"images": {}}
    index.update(
        tag=rev.tag,
        revision=rev.commit,
        dirty=rev.dirty,
        registry=REGISTRY,
        base=asdict(base) | {"pinned": base.pinned},
    )
    for image in built:
        index["images"][image.service] = asdict(image) | {"pinned": image.pinned}
    partial = INDEX_FILE.with_suffix(".json.partial")
    partial.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(partial, INDEX_FILE)


def read_index() -> dict[str, Any]:
    """What the last `build` wrote (empty when nothing was built)."""
    if not INDEX_FILE.is_file():
        return {}
    return dict(json.loads(INDEX_FILE.read_text()))


def build_images(tools: Tools, names: Sequence[str] | None = None) -> list[ServiceImage]:
    """Every service image of ``names`` (default: all), in the manifest's order."""
    names = list(names or services())
    unknown = sorted(set(names) - set(services()))
    if unknown:
        raise ToolError(f"no such service: {', '.join(unknown)} (services/services.toml)")
    base = ensure_base(tools)
    uv_image, uv_folder = uv_context(names)
    rev = revision()
    built: list[ServiceImage] = []
    with _locked(IMAGES_STATE / "build.lock"):
        for name in names:
            repository = f"{REGISTRY}/{IMAGE_PREFIX}{name}"
            ref = f"{repository}:{rev.tag}"
            if not rev.dirty and (existing := registry_digest(tools, ref)) is not None:
                # Tags of commits are immutable: an image of this commit is never replaced.
                log(f"{ref} exists ({existing[:19]}): reused")
                built.append(ServiceImage(name, ref, existing, None, 0.0, True))
                continue
            version, description = _service_meta(name)
            labels = _labels(f"{IMAGE_PREFIX}{name}", description, version, rev)
            labels["org.opencontainers.image.base.name"] = base.ref
            labels["org.opencontainers.image.base.digest"] = base.digest
            options = {f"label:{key}": value for key, value in labels.items()}
            options["build-arg:PYTHON_IMAGE"] = base.pinned
            options["build-arg:SOURCE_DATE_EPOCH"] = str(rev.committed)
            # Provenance (SLSA) is made by BuildKit itself; an SBOM needs its scanner image,
            # which no reachable registry serves (docs/images.md).
            options["attest:provenance"] = "mode=max"
            archive = OCI_DIR / f"{IMAGE_PREFIX}{name}-{rev.tag}.oci.tar"
            log(f"building {ref}")
            started = time.monotonic()
            digest = _buildctl(
                tools,
                what=f"{name} image build",
                context=ROOT,
                dockerfile_dir=ROOT / "services" / name,
                ref=ref,
                archive=archive,
                options=options,
                named_contexts={uv_image: uv_folder},
                log_path=IMAGES_STATE / "logs" / f"{name}.log",
            )
            seconds = round(time.monotonic() - started, 1)
            log(f"{ref} ({digest[:19]}) in {seconds:.0f} s")
            for older in OCI_DIR.glob(f"{IMAGE_PREFIX}{name}-*.oci.tar"):
                if older != archive:
                    older.unlink()
            built.append(ServiceImage(name, ref, digest, str(archive), seconds, False))
        _write_index(rev, base, built)
    return built


# Sizes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSizes:
    """Bytes of an image: as pulled (compressed layers and config) and as unpacked."""

    compressed: int
    uncompressed: int
    layers: int


def image_sizes(tools: Tools, ref: str) -> ImageSizes:
    """The linux/amd64 image of ``ref``: its layers' sizes from the manifest, and each layer
    streamed from the registry and decompressed to count its unpacked bytes."""
    pinned, manifest = platform_manifest(tools, ref)
    repository = repository_of(pinned)
    compressed = int(manifest["config"]["size"])
    uncompressed = 0
    for layer in manifest["layers"]:
        compressed += int(layer["size"])
        gzipped = str(layer["mediaType"]).endswith("gzip")
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        with subprocess.Popen(  # noqa: S603 - fixed tool, no shell
            [str(tools.crane), "blob", f"{repository}@{layer['digest']}", "--insecure"],
            stdout=subprocess.PIPE,
        ) as blob:
            stream = blob.stdout
            assert stream is not None
            while chunk := stream.read(1 << 20):
                uncompressed += len(inflate.decompress(chunk)) if gzipped else len(chunk)
        if blob.returncode != 0:
            raise ToolError(f"crane blob {layer['digest']} failed")
    return ImageSizes(compressed, uncompressed, len(manifest["layers"]))


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def print_table(tools: Tools, rows: Sequence[tuple[str, str, str]]) -> None:
    """One line per (name, reference, digest) with its sizes."""
    print(f"{'image':<10} {'pulled':>10} {'unpacked':>10} {'layers':>6}  reference")
    for name, ref, digest in rows:
        sizes = image_sizes(tools, ref)
        print(
            f"{name:<10} {_mb(sizes.compressed):>10} {_mb(sizes.uncompressed):>10} "
            f"{sizes.layers:>6}  {ref} ({digest[:19]})"
        )


# Running an image with runc ---------------------------------------------------------------------


RUNC_ROOT = IMAGES_STATE / "runc"
BUNDLES = IMAGES_STATE / "bundles"


def image_config(tools: Tools, ref: str) -> dict[str, Any]:
    """The image configuration of ``ref``'s linux/amd64 image (`config`: User, Env, Labels...)."""
    pinned, _ = platform_manifest(tools, ref)
    config: dict[str, Any] = json.loads(crane(tools, "config", pinned))
    return config


def export_rootfs(tools: Tools, ref: str) -> Path:
    """The image's filesystem, unpacked once per image digest under `.state/images/bundles/`
    (`crane export` applies the layers, whiteouts included); the previous one of the same
    repository is removed."""
    pinned, _ = platform_manifest(tools, ref)
    repository = repository_of(pinned).rsplit("/", 1)[1]
    folder = BUNDLES / f"{repository}-{pinned.rsplit(':', 1)[1][:16]}"
    rootfs = folder / "rootfs"
    with _locked(BUNDLES / f".{repository}.lock"):
        if (folder / ".complete").is_file():
            return rootfs
        # One unpacked image per repository is kept: the older ones go.
        for older in BUNDLES.glob(f"{repository}-*"):
            if older.is_dir():
                shutil.rmtree(older, ignore_errors=True)
        rootfs.mkdir(parents=True)
        with subprocess.Popen(  # noqa: S603 - fixed tool, no shell
            [str(tools.crane), "export", pinned, "-", "--insecure"], stdout=subprocess.PIPE
        ) as export:
            unpacked = subprocess.run(  # noqa: S603 - fixed tool, no shell
                ["tar", "-x", "--numeric-owner", "-C", str(rootfs)],  # noqa: S607 - tar
                stdin=export.stdout,
                capture_output=True,
                check=False,
            )
        if export.returncode != 0 or unpacked.returncode != 0:
            raise ToolError(f"unpacking {pinned} failed: {unpacked.stderr.decode()[-2000:]}")
        (folder / ".complete").write_text(pinned + "\n")
    return rootfs


def _numeric_user(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise ToolError(f"the image's USER {user!r} is not numeric (uid:gid)")
    return int(uid), int(gid or uid)


@dataclass
class Container:
    """A container run by runc in the foreground (its output in ``log_path``)."""

    id: str
    bundle: Path
    log_path: Path
    runc: Path
    child: subprocess.Popen[bytes]

    def _runc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - fixed tool, no shell
            [str(self.runc), "--root", str(RUNC_ROOT), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    def running(self) -> bool:
        return self.child.poll() is None

    def state(self) -> dict[str, Any]:
        """`runc state`: status and the pid of the container's first process."""
        result = self._runc("state", self.id)
        return dict(json.loads(result.stdout)) if result.returncode == 0 else {}

    def terminate(self) -> None:
        """Ask the container to stop (SIGTERM), without waiting."""
        if self.running():
            self._runc("kill", self.id, "TERM")

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, SIGKILL after ``timeout``; the container is deleted. Returns its exit code."""
        if self.running():
            self.terminate()
            try:
                self.child.wait(timeout)
            except subprocess.TimeoutExpired:
                self._runc("kill", self.id, "KILL")
                self.child.wait(10)
        self._runc("delete", "--force", self.id)
        shutil.rmtree(self.bundle, ignore_errors=True)
        return self.child.returncode


def run_container(
    tools: Tools,
    ref: str,
    *,
    name: str,
    env: Mapping[str, str],
    log_path: Path,
    tmpfs: Sequence[str] = ("/tmp",),  # noqa: S108 - a mount point inside the container
) -> Container:
    """Start ``ref`` with runc as a Kubernetes restricted pod would run it: the image's numeric
    user, a read-only root filesystem, no capabilities, no new privileges, a tmpfs at /tmp. It
    shares the host's network (no network namespace), so it reaches services on 127.0.0.1."""
    rootfs = export_rootfs(tools, ref)
    config = image_config(tools, ref).get("config", {})
    uid, gid = _numeric_user(str(config.get("User") or "0"))
    bundle = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=IMAGES_STATE))
    _run([str(tools.runc), "spec", "--bundle", str(bundle)], what="runc spec")
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["hostname"] = name
    spec["process"].update(
        terminal=False,
        args=[*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])],
        env=[*(config.get("Env") or []), *(f"{key}={value}" for key, value in env.items())],
        cwd=config.get("WorkingDir") or "/",
        user={"uid": uid, "gid": gid},
        noNewPrivileges=True,
        capabilities={key: [] for key in ("bounding", "effective", "permitted", "ambient")},
    )
    spec["linux"]["namespaces"] = [
        ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"
    ]
    for target in tmpfs:
        spec["mounts"].append(
            {
                "destination": target,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=64m"],
            }
        )
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))
    RUNC_ROOT.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    container_id = f"{name}-{os.getpid()}"
    with log_path.open("ab") as output:
        child = subprocess.Popen(  # noqa: S603 - fixed tool, no shell
            [
                str(tools.runc),
                "--root",
                str(RUNC_ROOT),
                "run",
                "--bundle",
                str(bundle),
                container_id,
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Container(container_id, bundle, log_path, tools.runc, child)


# Command line ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/images.py", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("tools", "up", "down", "status", "list"):
        sub.add_parser(command)
    base = sub.add_parser("base")
    base.add_argument("--rebuild", action="store_true", help="a fresh rootfs (new packages)")
    build = sub.add_parser("build")
    build.add_argument("services", nargs="*", help="default: every service of the manifest")
    args = parser.parse_args(argv)
    try:
        if args.command == "down":
            down()
            return 0
        started = time.monotonic()
        tools = ensure_tools()
        if args.command == "tools":
            for key, path in asdict(tools).items():
                print(f"{key:<10} {path}")
        elif args.command == "status":
            return 0 if status(tools) else 1
        elif args.command == "up":
            up(tools)
        elif args.command == "base":
            up(tools)
            image = ensure_base(tools, rebuild=args.rebuild)
            print_table(tools, [("base", image.ref, image.digest)])
        elif args.command == "build":
            up(tools)
            built = build_images(tools, args.services)
            log(f"{len(built)} images in {time.monotonic() - started:.0f} s")
            print_table(tools, [(image.service, image.ref, image.digest) for image in built])
        elif args.command == "list":
            index = read_index()
            if not index:
                raise ToolError("no images built yet: make images")
            up(tools)
            rows = [("base", index["base"]["ref"], index["base"]["digest"])]
            rows += [(name, i["ref"], i["digest"]) for name, i in index["images"].items()]
            print_table(tools, rows)
    except ToolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
