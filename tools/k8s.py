"""A local Kubernetes control plane as processes under `.state/k8s/`, for the chart's tests.

    python tools/k8s.py build     build (or reuse) the pinned binaries into `.state/tools/`
    python tools/k8s.py up        build, start and wait until a node is Ready; print the kubeconfig
    python tools/k8s.py down      stop everything (kwok first, etcd last), leave no process
    python tools/k8s.py status    each component with pid, port and health; exit 1 if unhealthy
    python tools/k8s.py kubeconfig  print the admin kubeconfig's path

The components are etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (which
plays the kubelets of fake nodes: pods become Ready and Jobs complete, no container runs). Every
binary is built from its pinned Go module with the machine's Go, the module cache under
`.state/cache/go/` (as Helm and promtool are, tools/gotool.py):

- etcd: a tiny generated `main` calling `etcdmain.Main`;
- Kubernetes: `k8s.io/kubernetes` cannot be `go install`ed (its go.mod replaces its staging
  modules with local folders), so a generated module requires it and replaces every staging
  module it requires with the published `k8s.io/<name> v0.<minor>.<patch>`; the list is read from
  the downloaded go.mod. The version is stamped with ldflags, else the server reports
  `v0.0.0-master` and clients cannot parse it;
- kwok: `go install`; its stage files (node and pod life cycles) come from the module cache.

`K8S_VERSION` (default 1.37.2) chooses the Kubernetes version; each version has its own binaries
and its own state folder `.state/k8s/<version>/` (certificates, etcd data, logs, pid files),
reached through the `.state/k8s/current` link that `up` sets. The admin kubeconfig is written to
`.state/k8s/kubeconfig`. Ports stay clear of the local stack and of CI: etcd 23790/23800,
apiserver 26443, controller-manager 27257, scheduler 27259, kwok 27247.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gotool import STATE, TOOLS, ToolError, find_go, go_env, go_install
from helm import ensure_helm

from mercato_devstack import install, process
from mercato_devstack.errors import StackError
from mercato_devstack.pki import alt_names

ETCD_VERSION = "v3.7.3"
KWOK_VERSION = "v0.8.0"
DEFAULT_K8S_VERSION = "1.37.2"
BUILD_TIMEOUT_SECONDS = 3600

K8S_STATE = STATE / "k8s"
KUBECONFIG = K8S_STATE / "kubeconfig"
HOST = "127.0.0.1"
ETCD_PORT = 23790
ETCD_PEER_PORT = 23800
APISERVER_PORT = 26443
CONTROLLER_MANAGER_PORT = 27257
SCHEDULER_PORT = 27259
KWOK_PORT = 27247
#: The nodes' Lease duration (a kubelet's default); kwok renews it well within.
NODE_LEASE_SECONDS = 40
SERVICE_CIDR = "10.96.0.0/16"
#: The first address of SERVICE_CIDR: the `kubernetes` Service, in the apiserver's certificate.
SERVICE_IP = "10.96.0.1"
#: The address the apiserver advertises (the `kubernetes` Service's endpoint): the bridge
#: address of a real node (tools/node.py), the one address of this machine its pods reach. The
#: apiserver listens on every address for that, with anonymous requests refused.
ADVERTISE_ADDRESS = "10.85.0.1"

#: The fake nodes: two per zone, so topology spread constraints and PDBs have a choice.
NODES = {
    "kwok-a-1": "zone-a",
    "kwok-a-2": "zone-a",
    "kwok-b-1": "zone-b",
    "kwok-b-2": "zone-b",
}
#: kwok's upstream stages (kustomize/stage/ in its module): node and pod life cycles.
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def log(message: str) -> None:
    print(f"k8s: {message}", file=sys.stderr, flush=True)


def k8s_version() -> str:
    """The Kubernetes version to build and run: $K8S_VERSION (major.minor.patch), no leading v."""
    version = (os.environ.get("K8S_VERSION") or DEFAULT_K8S_VERSION).removeprefix("v")
    if not re.fullmatch(r"1\.\d+\.\d+", version):
        raise ToolError(f"K8S_VERSION={version!r}: expected a release such as 1.37.2")
    return version


# Building ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    """Paths of the built control-plane programs."""

    etcd: Path
    kube: dict[str, Path]
    kwok: Path
    kwok_stages: Path


def _go(args: Sequence[str], *, cwd: Path, what: str, env: dict[str, str] | None = None) -> str:
    """Run the machine's Go in ``cwd`` with the project's build environment."""
    try:
        return install.run_go(
            args, env=env or go_env(), what=what, timeout=BUILD_TIMEOUT_SECONDS, cwd=cwd
        )
    except StackError as error:
        raise ToolError(str(error)) from error


def _build_module(
    name: str,
    go_mod: str,
    main_go: str | None,
    packages: Sequence[str],
    out_dir: Path,
    *,
    ldflags: str,
) -> None:
    """Build ``packages`` of a generated module into ``out_dir`` (one binary per package).

    The module lives in a temporary folder beside ``out_dir`` with a temporary build cache, both
    removed afterwards (the Kubernetes build cache is several GB); the module cache is kept.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=f"{name}-module-", dir=out_dir.parent) as module,
        tempfile.TemporaryDirectory(prefix=f"{name}-cache-", dir=out_dir.parent) as gocache,
        tempfile.TemporaryDirectory(prefix=f"{name}-bin-", dir=out_dir.parent) as staging,
    ):
        folder = Path(module)
        (folder / "go.mod").write_text(go_mod)
        if main_go is not None:
            (folder / "main.go").write_text(main_go)
        log(f"{name}: resolving modules (go mod tidy)")
        _go(["mod", "tidy"], cwd=folder, what=name)
        log(f"{name}: compiling {', '.join(packages)} (minutes on a cold cache)")
        started = time.monotonic()
        env = go_env(GOCACHE=gocache)
        _build_with_progress(
            ["build", "-ldflags", ldflags, "-o", staging + "/", *packages],
            cwd=folder,
            env=env,
            what=name,
        )
        log(f"{name}: built in {time.monotonic() - started:.0f} s")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
        out_dir.chmod(0o755)  # a temporary folder is private; the binaries are not
        # TemporaryDirectory's cleanup must find something to remove.
        Path(staging).mkdir()


def _build_with_progress(args: Sequence[str], *, cwd: Path, env: dict[str, str], what: str) -> None:
    """`go build`, printing a line every half minute so a cold build visibly progresses."""
    command = [find_go(what), *args]
    with tempfile.TemporaryFile() as output:
        build = subprocess.Popen(  # noqa: S603 - fixed tool, no shell
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT
        )
        started = time.monotonic()
        while True:
            try:
                build.wait(timeout=30)
                break
            except subprocess.TimeoutExpired as still_running:
                elapsed = time.monotonic() - started
                if elapsed > BUILD_TIMEOUT_SECONDS:
                    build.kill()
                    build.wait()
                    raise ToolError(
                        f"{what}: go build took over {BUILD_TIMEOUT_SECONDS} s"
                    ) from still_running
                cache = Path(env["GOCACHE"])
                size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
                log(f"{what}: still compiling, {elapsed:.0f} s, build cache {size >> 20} MiB")
        if build.returncode != 0:
            output.seek(0)
            text = output.read().decode("utf-8", "replace")
            raise ToolError(f"{what}: go build failed:\n{text[-4000:]}")


def _locked(target_dir: Path) -> int:
    """An exclusive lock beside ``target_dir``: parallel sessions build once."""
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target_dir.parent / f".{target_dir.name}.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def _usable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


ETCD_MAIN = """\
// The etcd server: etcd's own main package is not a module of its own, so this calls it.
package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


def ensure_etcd() -> Path:
    out_dir = TOOLS / f"etcd-{ETCD_VERSION}"
    binary = out_dir / "etcd"
    if _usable(binary):
        return binary
    lock = _locked(out_dir)
    try:
        if not _usable(binary):
            go_mod = (
                "module mercato.local/etcd\n\ngo 1.26\n\n"
                f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
            )
            # `go build -o DIR/ .` names the binary after the module's last element: etcd.
            _build_module("etcd", go_mod, ETCD_MAIN, ["."], out_dir, ldflags="-s -w")
    finally:
        os.close(lock)
    return binary


def _staging_replaces(kubernetes_go_mod: str, version: str) -> list[str]:
    """`replace` lines: each staging module k8s.io/kubernetes requires, at its published tag.

    Its go.mod replaces `k8s.io/<name>` with `./staging/src/k8s.io/<name>`; only those it also
    requires are needed (the proxy refuses the samples it does not require).
    """
    required: set[str] = set()
    staged: set[str] = set()
    for line in kubernetes_go_mod.splitlines():
        words = line.replace("replace", "").replace("require", "").replace("(", "").split()
        if len(words) >= 3 and words[1] == "=>" and words[2].startswith("./staging/"):
            staged.add(words[0])
        elif len(words) >= 2 and words[0].startswith("k8s.io/") and "=>" not in words:
            required.add(words[0])
    _, minor, patch = version.split(".")
    return [f"replace {name} => {name} v0.{minor}.{patch}" for name in sorted(staged & required)]


def _version_ldflags(version: str) -> str:
    major, minor, _ = version.split(".")
    build_date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        for key, value in (
            ("gitVersion", f"v{version}"),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
            ("buildDate", build_date),
        ):
            flags.append(f"-X {package}.{key}={value}")
    return " ".join(flags)


def ensure_kube(
    version: str, commands: Sequence[str] = KUBE_COMMANDS, *, flavour: str = ""
) -> dict[str, Path]:
    """The ``commands`` of Kubernetes ``version`` (one build, into
    `.state/tools/kubernetes[-flavour]-v<version>/`)."""
    out_dir = TOOLS / f"kubernetes{'-' + flavour if flavour else ''}-v{version}"
    binaries = {name: out_dir / name for name in commands}
    if all(_usable(path) for path in binaries.values()):
        return binaries
    lock = _locked(out_dir)
    try:
        if not all(_usable(path) for path in binaries.values()):
            module = f"k8s.io/kubernetes@v{version}"
            log(f"kubernetes {version}: downloading {module}")
            info = json.loads(_go(["mod", "download", "-json", module], cwd=TOOLS, what=module))
            replaces = _staging_replaces(Path(info["GoMod"]).read_text(), version)
            go_mod = "\n".join(
                [
                    "module mercato.local/kubernetes",
                    "",
                    "go 1.26",
                    "",
                    f"require k8s.io/kubernetes v{version}",
                    "",
                    *replaces,
                    "",
                    *(f"tool k8s.io/kubernetes/cmd/{name}" for name in commands),
                    "",
                ]
            )
            log(f"kubernetes {version}: {len(replaces)} staging modules replaced")
            _build_module(
                f"kubernetes-{version}",
                go_mod,
                None,
                [f"k8s.io/kubernetes/cmd/{name}" for name in commands],
                out_dir,
                ldflags=_version_ldflags(version),
            )
    finally:
        os.close(lock)
    return binaries


def ensure_kwok() -> tuple[Path, Path]:
    """The kwok binary and one file holding its upstream stages."""
    out_dir = TOOLS / f"kwok-{KWOK_VERSION}"
    binary = go_install(
        f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}", out_dir / "kwok", purpose="kwok"
    )
    stages = out_dir / "stages.yaml"
    if not stages.is_file():
        # The module's folder in the cache (downloaded again if the cache was cleaned).
        module = f"sigs.k8s.io/kwok@{KWOK_VERSION}"
        info = json.loads(_go(["mod", "download", "-json", module], cwd=TOOLS, what=module))
        source = Path(info["Dir"]) / "kustomize" / "stage"
        documents = [(source / name).read_text().strip() for name in KWOK_STAGES]
        stages.write_text("\n---\n".join(documents) + "\n")
    return binary, stages


def build(version: str) -> Binaries:
    """Every binary of the control plane, built when missing (cached afterwards)."""
    TOOLS.mkdir(parents=True, exist_ok=True)
    etcd = ensure_etcd()
    kwok, stages = ensure_kwok()
    kube = ensure_kube(version)
    return Binaries(etcd=etcd, kube=kube, kwok=kwok, kwok_stages=stages)


# Certificates -----------------------------------------------------------------------------------


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _certificate(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    *,
    ca: bool = False,
    server_names: Sequence[str] = (),
    client: bool = False,
) -> x509.Certificate:
    """A certificate for ``key``, signed by ``issuer`` (self-signed when None), ten years."""
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alt_names(server_names)), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


#: Client identities: the bootstrap RBAC roles of the apiserver know the first two by name;
#: the admin and kwok (which writes node and pod status) are cluster administrators.
CLIENTS = {
    "admin": ("mercato-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kwok": ("kwok-controller", "system:masters"),
}


def ensure_pki(pki: Path) -> None:
    """The cluster CA, the apiserver's serving certificate, one client certificate per
    component and the service-account key pair, made once (the CA signs them all, so the
    controller-manager's `--root-ca-file` is the CA alone)."""
    if (pki / "done").is_file():
        return
    pki.mkdir(mode=0o700, parents=True, exist_ok=True)
    log(f"generating certificates in {pki}")
    ca_key = _new_key()
    ca = _certificate(_name("mercato-local-ca"), ca_key, None, ca=True)
    _write_key(pki / "ca.key", ca_key)
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_key = _new_key()
    server_names = [
        HOST,
        "localhost",
        SERVICE_IP,
        ADVERTISE_ADDRESS,
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    server = _certificate(
        _name("kube-apiserver"), server_key, (ca, ca_key), server_names=server_names
    )
    _write_key(pki / "apiserver.key", server_key)
    (pki / "apiserver.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    for client, (user, group) in CLIENTS.items():
        key = _new_key()
        cert = _certificate(_name(user, group), key, (ca, ca_key), client=True)
        _write_key(pki / f"{client}.key", key)
        (pki / f"{client}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    service_account_key = _new_key()
    _write_key(pki / "sa.key", service_account_key)
    (pki / "sa.pub").write_bytes(
        service_account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (pki / "done").write_text("")


def write_kubeconfig(path: Path, pki: Path, client: str) -> None:
    """A kubeconfig with the CA and the client's certificate embedded (copyable anywhere)."""

    def data(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "mercato-local",
                "cluster": {
                    "server": f"https://{HOST}:{APISERVER_PORT}",
                    "certificate-authority-data": data("ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": client,
                "user": {
                    "client-certificate-data": data(f"{client}.crt"),
                    "client-key-data": data(f"{client}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "mercato-local", "context": {"cluster": "mercato-local", "user": client}}
        ],
        "current-context": "mercato-local",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# The API ----------------------------------------------------------------------------------------


class Api:
    """Just enough of the Kubernetes REST API for bringing the cluster up (JSON over HTTPS with
    the admin's client certificate)."""

    def __init__(self, pki: Path) -> None:
        self.context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.base = f"https://{HOST}:{APISERVER_PORT}"

    def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = 10,
    ) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - https to the local apiserver
            self.base + path, data=data, method=method, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=timeout) as reply:  # noqa: S310
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def get_json(self, path: str) -> dict[str, object]:
        status, text = self.request("GET", path)
        if status != 200:
            raise ToolError(f"GET {path}: HTTP {status}: {text[:500]}")
        result: dict[str, object] = json.loads(text)
        return result

    def apply(self, path: str, body: Mapping[str, object]) -> None:
        """Server-side apply of ``body`` at ``path`` (created or updated)."""
        status, text = self.request(
            "PATCH",
            f"{path}?fieldManager=mercato-k8s&force=true",
            body,
            content_type="application/apply-patch+yaml",
        )
        if status not in (200, 201):
            raise ToolError(f"apply {path}: HTTP {status}: {text[:500]}")


# Components -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One process of the control plane: how to start it and how to tell it is healthy."""

    name: str
    port: int
    argv: Callable[[], list[str]]
    health_url: str
    #: Whether the health endpoint needs the admin's client certificate (the apiserver's does).
    authenticated: bool = False


class ControlPlane:
    """The control plane of one Kubernetes version, its state in `.state/k8s/<version>/`."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.dir = K8S_STATE / version
        self.pki = self.dir / "pki"
        binaries = {
            "etcd": TOOLS / f"etcd-{ETCD_VERSION}" / "etcd",
            "kwok": TOOLS / f"kwok-{KWOK_VERSION}" / "kwok",
            **{name: TOOLS / f"kubernetes-v{version}" / name for name in KUBE_COMMANDS},
        }
        self.binaries = binaries
        self.kwok_stages = TOOLS / f"kwok-{KWOK_VERSION}" / "stages.yaml"
        pki = self.pki
        self.components = [
            Component(
                "etcd",
                ETCD_PORT,
                lambda: [
                    str(binaries["etcd"]),
                    "--name=local",
                    f"--data-dir={self.dir / 'etcd' / 'data'}",
                    f"--listen-client-urls=http://{HOST}:{ETCD_PORT}",
                    f"--advertise-client-urls=http://{HOST}:{ETCD_PORT}",
                    f"--listen-peer-urls=http://{HOST}:{ETCD_PEER_PORT}",
                    f"--initial-advertise-peer-urls=http://{HOST}:{ETCD_PEER_PORT}",
                    f"--initial-cluster=local=http://{HOST}:{ETCD_PEER_PORT}",
                    # A throw-away test cluster: no fsync keeps it fast on a shared disk.
                    "--unsafe-no-fsync=true",
                    "--quota-backend-bytes=2147483648",
                    "--log-level=warn",
                ],
                f"http://{HOST}:{ETCD_PORT}/health",
            ),
            Component(
                "kube-apiserver",
                APISERVER_PORT,
                lambda: [
                    str(binaries["kube-apiserver"]),
                    f"--etcd-servers=http://{HOST}:{ETCD_PORT}",
                    "--bind-address=0.0.0.0",
                    f"--advertise-address={ADVERTISE_ADDRESS}",
                    "--anonymous-auth=false",
                    f"--secure-port={APISERVER_PORT}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--authorization-mode=Node,RBAC",
                    # Logs and exec on a real node (tools/node.py): the apiserver calls the
                    # kubelet as the cluster admin.
                    f"--kubelet-client-certificate={pki / 'admin.crt'}",
                    f"--kubelet-client-key={pki / 'admin.key'}",
                    "--kubelet-preferred-address-types=InternalIP",
                    "--profiling=false",
                ],
                f"https://{HOST}:{APISERVER_PORT}/readyz",
                authenticated=True,
            ),
            Component(
                "kube-controller-manager",
                CONTROLLER_MANAGER_PORT,
                lambda: [
                    str(binaries["kube-controller-manager"]),
                    f"--kubeconfig={self.dir / 'controller-manager.kubeconfig'}",
                    f"--bind-address={HOST}",
                    f"--secure-port={CONTROLLER_MANAGER_PORT}",
                    f"--cert-dir={self.dir / 'kube-controller-manager'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                    f"--cluster-signing-key-file={pki / 'ca.key'}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--use-service-account-credentials=true",
                    "--leader-elect=false",
                    "--profiling=false",
                ],
                f"https://{HOST}:{CONTROLLER_MANAGER_PORT}/healthz",
            ),
            Component(
                "kube-scheduler",
                SCHEDULER_PORT,
                lambda: [
                    str(binaries["kube-scheduler"]),
                    f"--kubeconfig={self.dir / 'scheduler.kubeconfig'}",
                    f"--bind-address={HOST}",
                    f"--secure-port={SCHEDULER_PORT}",
                    f"--cert-dir={self.dir / 'kube-scheduler'}",
                    "--leader-elect=false",
                    "--profiling=false",
                ],
                f"https://{HOST}:{SCHEDULER_PORT}/healthz",
            ),
            Component(
                "kwok",
                KWOK_PORT,
                lambda: [
                    str(binaries["kwok"]),
                    f"--kubeconfig={self.dir / 'kwok.kubeconfig'}",
                    f"--config={self.kwok_stages}",
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    f"--node-ip={HOST}",
                    "--cidr=10.244.0.1/16",
                    # Heartbeats by Lease, as a kubelet does: the upstream heartbeat stage patches
                    # node status only every ~10 minutes, trusting the lease; without one the node
                    # lifecycle controller takes the nodes for lost after its grace period and marks
                    # every pod on them not Ready (which kwok's pod-ready stage never undoes).
                    f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
                    f"--server-address={HOST}:{KWOK_PORT}",
                ],
                f"http://{HOST}:{KWOK_PORT}/healthz",
            ),
        ]

    # Paths ---------------------------------------------------------------------------------

    def component_dir(self, component: Component) -> Path:
        return self.dir / component.name

    def log_path(self, component: Component) -> Path:
        return self.component_dir(component) / f"{component.name}.log"

    def pid_path(self, component: Component) -> Path:
        return self.component_dir(component) / f"{component.name}.pid"

    def pid(self, component: Component) -> int | None:
        return process.read_pidfile(self.pid_path(component))

    # Health ---------------------------------------------------------------------------------

    def probe(self, component: Component) -> str | None:
        """None when the component answers healthy, else the reason."""
        if component.authenticated:
            context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        else:
            # The controller-manager's and scheduler's serving certificates are self-signed.
            context = ssl._create_unverified_context()  # noqa: S323 - loopback health check
        try:
            with urllib.request.urlopen(  # noqa: S310 - fixed local URL
                component.health_url, context=context, timeout=2
            ) as reply:
                body: str = reply.read().decode()
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}: {error.read().decode()[:200]}"
        except (OSError, ValueError) as error:
            return str(error)
        if component.name == "etcd" and '"health":"true"' not in body.replace(" ", ""):
            return body[:200]
        return None

    # Life cycle -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Certificates, keys and the components' kubeconfigs (made once per version)."""
        ensure_pki(self.pki)
        for client in ("controller-manager", "scheduler", "kwok"):
            write_kubeconfig(self.dir / f"{client}.kubeconfig", self.pki, client)
        write_kubeconfig(self.dir / "admin.kubeconfig", self.pki, "admin")
        K8S_STATE.mkdir(parents=True, exist_ok=True)
        # The shared kubeconfig and `current` point at the version that was brought up last.
        current = K8S_STATE / "current"
        current.unlink(missing_ok=True)
        current.symlink_to(self.version)
        shutil.copyfile(self.dir / "admin.kubeconfig", KUBECONFIG)
        KUBECONFIG.chmod(0o600)

    def start(self, component: Component, timeout: float = 120) -> None:
        """Start ``component`` unless it runs, then wait until it answers healthy."""
        if self.pid(component) is None:
            if process.port_open(component.port):
                raise ToolError(
                    f"{component.name}: port {HOST}:{component.port} is taken by a process "
                    "this control plane did not start (another version up? `make k8s-down`)"
                )
            self.component_dir(component).mkdir(parents=True, exist_ok=True)
            pid = process.spawn(
                component.argv(),
                log_path=self.log_path(component),
                cwd=self.component_dir(component),
            )
            process.write_pidfile(self.pid_path(component), pid)
        deadline = time.monotonic() + timeout
        while (reason := self.probe(component)) is not None:
            if self.pid(component) is None:
                raise ToolError(
                    f"{component.name} exited; last lines of {self.log_path(component)}:\n"
                    + process.tail(self.log_path(component))
                )
            if time.monotonic() > deadline:
                raise ToolError(f"{component.name} not healthy after {timeout:.0f} s: {reason}")
            time.sleep(0.2)

    def up(self) -> None:
        started = time.monotonic()
        build(self.version)
        self.prepare()
        for component in self.components:
            self.start(component)
        api = Api(self.pki)
        self.check_version(api)
        self.ensure_nodes(api)
        self.wait_ready(api)
        log(f"Kubernetes {self.version} up in {time.monotonic() - started:.1f} s")

    def check_version(self, api: Api) -> None:
        served = api.get_json("/version").get("gitVersion")
        if served != f"v{self.version}":
            raise ToolError(f"the apiserver reports {served}, expected v{self.version}")

    def ensure_nodes(self, api: Api) -> None:
        """The fake nodes, kwok's by their annotation, in two zones."""
        for name, zone in NODES.items():
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                        "topology.kubernetes.io/zone": zone,
                        "topology.kubernetes.io/region": "local",
                    },
                },
            }
            api.apply(f"/api/v1/nodes/{name}", node)

    def wait_ready(self, api: Api, timeout: float = 60) -> None:
        """Until every fake node is Ready and the `default` ServiceAccount exists (the
        controller-manager's first work, which namespaced installs rely on)."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = self.not_ready(api)
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise ToolError(f"not ready after {timeout:.0f} s: {', '.join(waiting)}")
            time.sleep(0.3)

    def not_ready(self, api: Api) -> list[str]:
        nodes = api.get_json("/api/v1/nodes").get("items")
        ready = set()
        for node in nodes if isinstance(nodes, list) else []:
            conditions = node.get("status", {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                ready.add(node["metadata"]["name"])
        waiting = [f"node {name}" for name in NODES if name not in ready]
        status, _ = api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        if status != 200:
            waiting.append("ServiceAccount default/default")
        return waiting

    def down(self) -> None:
        """Stop in reverse order (the apiserver before etcd); SIGKILL what does not stop."""
        for component in reversed(self.components):
            pid = self.pid(component)
            if pid is not None:
                log(f"stopping {component.name} (pid {pid})")
                process.terminate(pid, timeout=20, sig=signal.SIGTERM)
                # Until the init process has reaped it: no zombie is listed after `down`.
                deadline = time.monotonic() + 3
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            self.pid_path(component).unlink(missing_ok=True)

    def running(self) -> bool:
        return any(self.pid(component) is not None for component in self.components)

    def status(self) -> bool:
        """Print each component; True when all run and answer healthy."""
        print(f"Kubernetes {self.version}  state {self.dir}  kubeconfig {KUBECONFIG}")
        print(f"{'component':<24} {'pid':>7} {'port':>6} {'rss MiB':>8}  health")
        healthy = True
        for component in self.components:
            pid = self.pid(component)
            if pid is None:
                health, rss = "stopped", "-"
                healthy = False
            else:
                reason = self.probe(component)
                health = "healthy" if reason is None else f"UNHEALTHY: {reason}"
                healthy = healthy and reason is None
                rss = f"{process.rss_kib(process.process_tree(pid)) / 1024:.0f}"
            print(f"{component.name:<24} {pid or '-':>7} {component.port:>6} {rss:>8}  {health}")
        return healthy


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """One `up` or `down` at a time (a test session and a typed `make k8s-up` may overlap)."""
    K8S_STATE.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(K8S_STATE / "k8s.lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def shell_environment() -> str:
    """The line that points a shell at the control plane: its kubeconfig, and the pinned Helm
    (linked into a folder of its own) first on PATH."""
    bin_dir = K8S_STATE / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / "helm"
    link.unlink(missing_ok=True)
    link.symlink_to(ensure_helm())
    return f'export KUBECONFIG="{KUBECONFIG}" PATH="{bin_dir}:$PATH"'


def running_versions() -> list[str]:
    """The versions whose control plane has a process running (at most one, by the ports)."""
    if not K8S_STATE.is_dir():
        return []
    versions = [d.name for d in K8S_STATE.iterdir() if d.is_dir() and not d.is_symlink()]
    return [v for v in sorted(versions) if ControlPlane(v).running()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/k8s.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("build", "up", "down", "status", "kubeconfig"):
        sub.add_parser(command)
    args = parser.parse_args(argv)
    try:
        version = k8s_version()
        if args.command == "build":
            build(version)
        elif args.command == "up":
            with exclusive():
                ControlPlane(version).up()
            print(shell_environment())
        elif args.command == "down":
            with exclusive():
                # Whatever version runs, not only $K8S_VERSION: nothing is left behind.
                for running in sorted({*running_versions(), version}):
                    ControlPlane(running).down()
        elif args.command == "status":
            return 0 if ControlPlane(version).status() else 1
        elif args.command == "kubeconfig":
            print(KUBECONFIG)
    except ToolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
