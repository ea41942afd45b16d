"""grpc-gateway (Go) serving mercato's CatalogService: the Python gateway's peer in `make bench`.

    python tools/grpc_gateway_peer.py build   build the peer when missing or stale (cached)
    python tools/grpc_gateway_peer.py path    print the path of the peer binary, building first
    python tools/grpc_gateway_peer.py tidy    after changing the versions in go.mod: generate,
                                              `go mod tidy`, and rewrite go.mod and go.sum

The committed sources are deploy/local/grpc-gateway-peer/ (go.mod, go.sum, main.go). The Go code
of the protos is generated at build time, never committed, from protos/ (the files the Python
stubs come from) with buf (pinned in tools/buf) and three protoc plugins: protoc-gen-go,
protoc-gen-go-grpc and protoc-gen-grpc-gateway. Only CatalogService's file and its imports are
generated; google/api comes from the genproto module and the well-known types from the protobuf
module, as usual in Go. The protos carry no Go options: buf's managed mode gives every generated
file a Go package under GO_PACKAGE_PREFIX.

The plugins are installed with `go install` into `.state/tools/<plugin>-<version>/`; the versions
of protoc-gen-go and protoc-gen-grpc-gateway are those of their modules in go.mod (the runtime
the generated code is compiled with), protoc-gen-go-grpc's is PROTOC_GEN_GO_GRPC_VERSION. The
build happens in `.build/grpc-gateway-peer/` (a copy of the sources plus the generated code)
with the module and build caches under `.state/cache/go/`; the binary goes to
`.state/tools/grpc-gateway-peer/`, next to a stamp of its inputs (protos/, the Go sources, the
versions): it is rebuilt only when one of them changes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gotool import GO_CACHE, ROOT, TOOLS, ToolError, find_go, go_env, go_install

import protos  # tools/protos.py: buf and the third-party imports
from mercato_devstack import install

SOURCE = ROOT / "deploy" / "local" / "grpc-gateway-peer"
SOURCE_FILES = ("go.mod", "go.sum", "main.go")
STAGING = ROOT / ".build" / "grpc-gateway-peer"
BINARY = TOOLS / "grpc-gateway-peer" / "grpc-gateway-peer"
STAMP = BINARY.with_name("inputs.sha256")

MODULE = "mercato.local/grpcgatewaypeer"
GO_PACKAGE_PREFIX = f"{MODULE}/gen"
#: The proto whose service the peer serves; its imports are generated with it.
SERVICE_PROTO = "mercato/catalog/v1/catalog.proto"
#: Imports that come compiled from Go modules: well-known types (google.golang.org/protobuf)
#: and google/api (google.golang.org/genproto/googleapis/api).
PRECOMPILED_PREFIX = "google/"

PROTOBUF_MODULE = "google.golang.org/protobuf"
GATEWAY_MODULE = "github.com/grpc-ecosystem/grpc-gateway/v2"
PROTOC_GEN_GO_GRPC_VERSION = "v1.6.2"

#: Part of the inputs' stamp: bump it when a change of this file changes what gets built.
BUILD_RECIPE = "1"


#: A failure with a message for the user (the same type as the other Go tools' failures).
PeerError = ToolError


def _run(
    cmd: Sequence[str | Path], what: str, *, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> str:
    args = [str(c) for c in cmd]
    try:
        result = subprocess.run(  # noqa: S603 - fixed tools, no shell
            args, cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
    except FileNotFoundError as exc:
        raise PeerError(f"{what}: {args[0]} not found") from exc
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        raise PeerError(f"{what} failed ({result.returncode}): {' '.join(args)}\n{output[-4000:]}")
    return result.stdout


def _go() -> str:
    return find_go("the grpc-gateway peer (go install, go build)")


def _go_env(*, readonly: bool = True) -> dict[str, str]:
    # The build cache is kept (rebuilds after a proto change take seconds); the committed
    # go.sum is the truth, except for `tidy`, which rewrites it.
    flags = "-modcacherw -buildvcs=false"
    return go_env(
        GOCACHE=str(GO_CACHE / "build"), GOFLAGS=f"-mod=readonly {flags}" if readonly else flags
    )


def required_version(module: str) -> str:
    """The version of ``module`` that deploy/local/grpc-gateway-peer/go.mod requires."""
    text = (SOURCE / "go.mod").read_text(encoding="utf-8")
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if found is None:
        raise PeerError(f"{SOURCE / 'go.mod'} does not require {module}")
    return found.group(1)


def plugins() -> dict[str, str]:
    """protoc plugin name -> `go install` package@version."""
    return {
        "protoc-gen-go": f"{PROTOBUF_MODULE}/cmd/protoc-gen-go@{required_version(PROTOBUF_MODULE)}",
        "protoc-gen-go-grpc": (
            f"google.golang.org/grpc/cmd/protoc-gen-go-grpc@{PROTOC_GEN_GO_GRPC_VERSION}"
        ),
        "protoc-gen-grpc-gateway": (
            f"{GATEWAY_MODULE}/protoc-gen-grpc-gateway@{required_version(GATEWAY_MODULE)}"
        ),
    }


def ensure_plugin(name: str, package: str) -> Path:
    """The plugin binary, `go install`-ed into .state/tools/<name>-<version>/ when missing."""
    version = package.rpartition("@")[2]
    return go_install(package, TOOLS / f"{name}-{version}" / name, purpose=name)


def inputs_digest() -> str:
    """A hash of everything the binary is built from; a change means a rebuild."""
    sha = hashlib.sha256(f"recipe {BUILD_RECIPE}\n".encode())
    for name, package in sorted(plugins().items()):
        sha.update(f"plugin {name} {package}\n".encode())
    sha.update(f"validate {protos.VALIDATE_PROTO_SHA256}\n".encode())
    files = [SOURCE / name for name in SOURCE_FILES]
    files.append(protos.BUF_DIR / "package-lock.json")
    files += sorted(p for p in (protos.PROTOS / "mercato").rglob("*.proto") if p.is_file())
    for path in files:
        data = path.read_bytes()
        sha.update(f"file {path.relative_to(ROOT).as_posix()} {len(data)}\n".encode())
        sha.update(data)
    return sha.hexdigest()


def is_fresh() -> bool:
    return install.is_fresh(STAMP, inputs_digest(), BINARY)


def _files_to_generate(buf: Path, workdir: Path) -> list[str]:
    """SERVICE_PROTO and its transitive imports, minus those compiled in Go modules."""
    image = workdir / "catalog.binpb"
    _run([buf, "build", "--path", SERVICE_PROTO, "-o", image], "buf build", cwd=protos.PROTOS)
    names = [f.name for f in descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file]
    image.unlink()
    return sorted(n for n in names if not n.startswith(PRECOMPILED_PREFIX))


def _template(plugin_paths: dict[str, Path], out: Path) -> str:
    """buf.gen.yaml (v2): managed mode for go_package, local plugins, source-relative output."""
    lines = [
        "version: v2",
        "managed:",
        "  enabled: true",
        # google/api keeps its own go_package: the genproto module's compiled package.
        "  disable:",
        "    - file_option: go_package",
        "      path: google/api",
        "  override:",
        "    - file_option: go_package_prefix",
        f"      value: {GO_PACKAGE_PREFIX}",
        "plugins:",
    ]
    for path in plugin_paths.values():
        lines += [f"  - local: {path}", f"    out: {out}", "    opt: paths=source_relative"]
    return "\n".join(lines) + "\n"


def stage() -> Path:
    """A fresh .build/grpc-gateway-peer: the committed sources plus the generated Go code."""
    try:
        buf = protos.buf()
        protos.fetch_deps()
    except protos.ProtosError as exc:
        raise PeerError(f"protos: {exc}") from exc
    plugin_paths = {name: ensure_plugin(name, pkg) for name, pkg in plugins().items()}
    shutil.rmtree(STAGING, ignore_errors=True)
    STAGING.mkdir(parents=True)
    for name in SOURCE_FILES:
        shutil.copyfile(SOURCE / name, STAGING / name)
    files = _files_to_generate(buf, STAGING)
    template = STAGING / "buf.gen.yaml"
    template.write_text(_template(plugin_paths, STAGING / "gen"), encoding="utf-8")
    paths = [arg for name in files for arg in ("--path", _workspace_path(name))]
    _run([buf, "generate", "--template", template, *paths], "buf generate", cwd=protos.PROTOS)
    generated = STAGING / "gen" / Path(SERVICE_PROTO).parent
    if not any(generated.glob("*.pb.gw.go")):
        raise PeerError(f"buf generate wrote no grpc-gateway handler into {generated}")
    return STAGING


def _workspace_path(name: str) -> str:
    """A file's path inside the buf workspace protos/ (third-party imports: third_party/)."""
    if (protos.PROTOS / name).is_file():
        return name
    return f"third_party/{name}"


def build(*, force: bool = False) -> Path:
    """The peer binary, built first when missing or stale."""
    if not force and is_fresh():
        return BINARY
    go = _go()
    expected = inputs_digest()
    print("grpc-gateway-peer: building (generate, go build)", file=sys.stderr, flush=True)
    staging = stage()
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    partial = BINARY.with_name(BINARY.name + ".partial")
    _run(
        [go, "build", "-trimpath", "-ldflags=-s -w", "-o", partial, "."],
        "go build of the grpc-gateway peer",
        cwd=staging,
        env=_go_env(),
    )
    os.replace(partial, BINARY)
    STAMP.write_text(expected + "\n", encoding="utf-8")
    return BINARY


def tidy() -> None:
    """Regenerate, run `go mod tidy` on the staged module and copy go.mod/go.sum back."""
    go = _go()
    staging = stage()
    _run([go, "mod", "tidy"], "go mod tidy", cwd=staging, env=_go_env(readonly=False))
    for name in ("go.mod", "go.sum"):
        shutil.copyfile(staging / name, SOURCE / name)
    print(f"grpc-gateway-peer: rewrote {SOURCE.relative_to(ROOT)}/go.mod and go.sum")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/grpc_gateway_peer.py", description=(__doc__ or "").split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="build the peer when missing or stale")
    build_cmd.add_argument("--force", action="store_true", help="build even when fresh")
    sub.add_parser("path", help="print the peer binary's path, building it first")
    sub.add_parser("tidy", help="go mod tidy after a version change in go.mod")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            fresh = not args.force and is_fresh()
            binary = build(force=args.force)
            state = "up to date" if fresh else "built"
            print(f"grpc-gateway-peer: {state}: {binary}")
        elif args.command == "path":
            print(build())
        else:
            tidy()
    except PeerError as exc:
        print(f"grpc-gateway-peer: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
