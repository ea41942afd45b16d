"""Pinned Helm for the chart checks, and the generated gRPC method list of the mesh templates.

    python tools/helm.py path       print the path of the pinned helm binary, building it first
                                    when missing (`go install` of its Go module)
    python tools/helm.py version    the pinned version
    python tools/helm.py methods    rewrite deploy/helm/mercato/files/grpc-methods.yaml from the
                                    compiled proto descriptors (libs/contracts)
    python tools/helm.py methods --check
                                    fail when the committed file differs from what it would write
    python tools/helm.py -- ARGS    run the pinned helm with ARGS

Helm 3 is built from its Go module with the machine's Go toolchain into the git-ignored
`.state/tools/helm-<version>/helm` (module and build caches under `.state/cache/go/`, the build
cache removed afterwards). The release ldflags are set so `helm version` tells the truth and the
Kubernetes version Helm assumes without `--kube-version` is `KUBE_VERSION` (the tests pass
`--kube-version` anyway).

The method list: a mesh may retry only calls that are safe to repeat. Each RPC's proto
`idempotency_level` decides (NO_SIDE_EFFECTS and IDEMPOTENT are retryable), minus
`NEVER_RETRIED_BY_MESH` (see docs/deploy.md, "Retries").
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.21.4"
# The Kubernetes version Helm assumes when none is given (Capabilities.KubeVersion).
KUBE_VERSION = (1, 33)
STATE = Path(os.environ.get("MERCATO_STATE_DIR", ROOT / ".state"))
TOOLS = STATE / "tools"
CHART = ROOT / "deploy" / "helm" / "mercato"
METHODS_FILE = CHART / "files" / "grpc-methods.yaml"

#: The gRPC packages of the services, by component name.
SERVICES = {
    "auth": "mercato.auth.v1",
    "catalog": "mercato.catalog.v1",
    "orders": "mercato.orders.v1",
    "analytics": "mercato.analytics.v1",
}

#: Methods marked IDEMPOTENT in their contract that a mesh must still not retry. CreateOrder is
#: idempotent only through its client-supplied idempotency key: a duplicate that arrives while
#: the first attempt still holds the key waits (up to IDEMPOTENCY_WAIT_SECONDS) and then fails
#: ABORTED, so a proxy retry after a timeout adds load and latency without helping. The caller
#: that owns the key (client, gateway) retries with the same key instead.
NEVER_RETRIED_BY_MESH = frozenset({"mercato.orders.v1.OrdersService/CreateOrder"})


class ToolError(Exception):
    """A failure with a message for the user."""


def helm_path() -> Path:
    return TOOLS / f"helm-{HELM_VERSION}" / "helm"


def ensure_helm() -> Path:
    """The pinned helm binary, built with `go install` when it is not there yet."""
    target = helm_path()
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = shutil.which("go")
    if go is None:
        raise ToolError("Go is needed to build Helm (go install); install Go >= 1.24")
    target.parent.mkdir(parents=True, exist_ok=True)
    major, minor = KUBE_VERSION
    ldflags = " ".join(
        [
            "-s -w",
            f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
            f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={major}",
            f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={minor}",
        ]
    )
    with tempfile.TemporaryDirectory(prefix="helm-build-", dir=target.parent) as gobin:
        env = {
            **os.environ,
            "GOBIN": gobin,
            "GOFLAGS": "-modcacherw -buildvcs=false",
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "0",
        }
        command = [go, "install", "-ldflags", ldflags, f"{HELM_MODULE}/cmd/helm@{HELM_VERSION}"]
        print(f"building helm {HELM_VERSION}: {' '.join(command)}", file=sys.stderr)
        result = subprocess.run(  # noqa: S603 - fixed tool, no shell
            command, env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ToolError(f"go install of helm failed:\n{result.stderr[-4000:]}")
        os.replace(Path(gobin) / "helm", target)
    return target


# gRPC methods ---------------------------------------------------------------------------------


def grpc_methods() -> dict[str, Any]:
    """Every RPC of the services with its idempotency level and whether a mesh may retry it."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    retryable_levels = {
        descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        descriptor_pb2.MethodOptions.IDEMPOTENT,
    }
    level_names = descriptor_pb2.MethodOptions.IdempotencyLevel
    pool = descriptor_pool.Default()
    document: dict[str, Any] = {}
    for component, package in SERVICES.items():
        module = importlib.import_module(f"{package}.{component}_pb2")
        services = []
        for service in module.DESCRIPTOR.services_by_name.values():
            service = pool.FindServiceByName(service.full_name)
            retry, no_retry = [], []
            for method in service.methods:
                full = f"{service.full_name}/{method.name}"
                level = method.GetOptions().idempotency_level
                entry = {"name": method.name, "idempotency": level_names.Name(level)}
                if level in retryable_levels and full not in NEVER_RETRIED_BY_MESH:
                    retry.append(entry)
                else:
                    no_retry.append(entry)
            services.append({"name": service.full_name, "retry": retry, "noRetry": no_retry})
        document[component] = {"services": services}
    return document


def render_methods() -> str:
    import yaml

    header = (
        "# Generated by `python tools/helm.py methods` from the proto descriptors "
        "(libs/contracts). DO NOT EDIT.\n"
        "# Per component, its gRPC services and their methods, split into those a mesh may\n"
        "# retry (idempotency_level NO_SIDE_EFFECTS or IDEMPOTENT) and the others. Excluded\n"
        "# although marked IDEMPOTENT: "
        + ", ".join(sorted(NEVER_RETRIED_BY_MESH))
        + " (see docs/deploy.md).\n"
    )
    return header + yaml.safe_dump(grpc_methods(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/helm.py", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("path")
    sub.add_parser("version")
    methods = sub.add_parser("methods")
    methods.add_argument("--check", action="store_true")
    sub.add_parser("run").add_argument("args", nargs=argparse.REMAINDER)
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["--"]:
        args_in = ["run", *args_in[1:]]
    args = parser.parse_args(args_in)
    try:
        if args.command == "path":
            print(ensure_helm())
        elif args.command == "version":
            print(HELM_VERSION)
        elif args.command == "methods":
            text = render_methods()
            if args.check:
                if not METHODS_FILE.is_file() or METHODS_FILE.read_text() != text:
                    print(
                        f"{METHODS_FILE.relative_to(ROOT)} is stale: "
                        "run `python tools/helm.py methods`",
                        file=sys.stderr,
                    )
                    return 1
            else:
                METHODS_FILE.write_text(text)
        elif args.command == "run":
            helm = ensure_helm()
            return subprocess.run([str(helm), *args.args], check=False).returncode  # noqa: S603
    except ToolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
