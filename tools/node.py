"""A real Kubernetes node joined to the local control plane, so the chart's pods run containers.

    python tools/node.py build    build (or reuse) the node's programs
    python tools/node.py up       join the node to the running control plane, start CoreDNS
    python tools/node.py down     drain and stop it; remove what it put on the host
    python tools/node.py status   each process with pid and health; exit 1 if unhealthy

`make k8s-up NODE=real` brings the control plane (tools/k8s.py) up first, then this node;
`make k8s-down` stops both. The node `mercato-node` (zone `zone-a`, label
`mercato.dev/node=real`) runs:

- containerd with runc (tools/images.py builds runc and runs the local registry the images come
  from) and the CNI plugins bridge, host-local, loopback and portmap: pods get addresses in
  POD_CIDR on the bridge `mercato0`, whose address POD_GATEWAY is also the node's address;
- kubelet (cgroup v1 accepted, cgroupfs driver) and kube-proxy (iptables, masquerading every
  Service connection, so pod-to-own-Service traffic on one bridge returns through the host);
- CoreDNS as the cluster's `kube-dns` Service at DNS_SERVICE_IP.

Every program is built from its pinned Go module into `.state/tools/`; kubelet and kube-proxy
like the control plane (tools/k8s.py). The pod sandbox (`pause`) is compiled from Kubernetes'
own C source in that module and, like CoreDNS, pushed to the local registry as an image built
by BuildKit (no public registry is reachable here).

The fake kwok nodes get the taint `mercato.dev/fake-node:NoSchedule` while the real node is up,
so new pods land on it; `down` removes the taint again.

State lives in `.state/node/`. Some places cannot be moved by configuration and are cleaned by
`down`: `/run/containerd`, `/var/lib/cni`, `/var/log/pods`, `/var/log/containers`,
`/var/lib/kubelet`, the `kubepods` cgroups, the KUBE-* iptables chains and the bridge.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images
import k8s
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gotool import STATE, TOOLS, ToolError, go_install

from mercato_devstack import install, process
from mercato_devstack.errors import StackError

CONTAINERD_VERSION = "v2.4.2"
CNI_PLUGINS_VERSION = "v1.10.0"
COREDNS_VERSION = "v1.15.0"
#: Kubernetes' pod sandbox, compiled from build/pause/linux/pause.c of the k8s.io/kubernetes
#: module (the tag its build/pause/Makefile gives).
PAUSE_VERSION = "3.10.2"
NODE_COMMANDS = ("kubelet", "kube-proxy")
CNI_PLUGINS = {
    "bridge": "./plugins/main/bridge",
    "host-local": "./plugins/ipam/host-local",
    "loopback": "./plugins/main/loopback",
    "portmap": "./plugins/meta/portmap",
}
#: Debian packages the node needs on the host (kube-proxy's and the CNI plugins' tools).
HOST_PACKAGES = {"iptables": "iptables", "conntrack": "conntrack", "ip": "iproute2"}

NODE_NAME = "mercato-node"
NODE_ZONE = "zone-a"
NODE_LABEL = "mercato.dev/node"
FAKE_NODE_TAINT = "mercato.dev/fake-node"
BRIDGE = "mercato0"
POD_CIDR = "10.85.0.0/16"
#: The bridge's address: the pods' gateway, the node's InternalIP, and where the host's
#: services are reachable from pods (tests/pods starts its stack there).
POD_GATEWAY = k8s.ADVERTISE_ADDRESS
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
KUBELET_PORT = 20250
KUBELET_HEALTHZ_PORT = 20248
KUBE_PROXY_HEALTHZ_PORT = 20256
KUBE_PROXY_METRICS_PORT = 20249

NODE_STATE = STATE / "node"
PKI = NODE_STATE / "pki"
CONTAINERD_DIR = NODE_STATE / "containerd"
CONTAINERD_SOCKET = CONTAINERD_DIR / "containerd.sock"
CNI_CONF_DIR = NODE_STATE / "cni" / "net.d"
#: kubelet's root directory (pods' volumes, plugins); its log and pid file are in `kubelet/`.
KUBELET_DIR = NODE_STATE / "kubelet-root"
#: The host paths the programs use whatever their configuration says (removed by `down`).
FIXED_PATHS = (
    Path("/run/containerd"),
    Path("/var/lib/cni"),
    Path("/var/log/pods"),
    Path("/var/log/containers"),
    Path("/var/lib/kubelet"),
)
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def log(message: str) -> None:
    print(f"node: {message}", file=sys.stderr, flush=True)


# Building ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeBinaries:
    containerd: Path
    shim: Path
    ctr: Path
    cni_dir: Path
    kubelet: Path
    kube_proxy: Path
    coredns: Path
    pause: Path


def _containerd() -> Path:
    out_dir = TOOLS / f"containerd-{CONTAINERD_VERSION}"
    if not all(_usable(out_dir / name) for name in ("containerd", "containerd-shim-runc-v2")):
        with images._locked(TOOLS / f".containerd-{CONTAINERD_VERSION}.lock"):
            if not _usable(out_dir / "containerd"):
                module = "github.com/containerd/containerd/v2"
                images._build_in_module(
                    module,
                    CONTAINERD_VERSION,
                    {
                        "containerd": "./cmd/containerd",
                        "containerd-shim-runc-v2": "./cmd/containerd-shim-runc-v2",
                        "ctr": "./cmd/ctr",
                    },
                    out_dir,
                    ldflags=f"-s -w -X {module}/version.Version={CONTAINERD_VERSION}",
                    tags="no_btrfs",
                )
    return out_dir


def _cni_plugins() -> Path:
    out_dir = TOOLS / f"cni-plugins-{CNI_PLUGINS_VERSION}"
    if not all(_usable(out_dir / name) for name in CNI_PLUGINS):
        with images._locked(TOOLS / f".cni-plugins-{CNI_PLUGINS_VERSION}.lock"):
            if not all(_usable(out_dir / name) for name in CNI_PLUGINS):
                images._build_in_module(
                    "github.com/containernetworking/plugins",
                    CNI_PLUGINS_VERSION,
                    CNI_PLUGINS,
                    out_dir,
                    ldflags="-s -w",
                )
    return out_dir


def _pause(version: str) -> Path:
    """The sandbox program: Kubernetes' pause.c, compiled statically as its Makefile does."""
    binary = TOOLS / f"pause-{PAUSE_VERSION}" / "pause"
    if _usable(binary):
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ToolError("gcc is needed to compile the pod sandbox (apt-get install gcc libc6-dev)")
    source = images._module_dir("k8s.io/kubernetes", f"v{version}") / "build/pause/linux/pause.c"
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    images._run(
        [
            gcc,
            "-Os",
            "-Wall",
            "-Werror",
            "-static",
            f"-DVERSION=v{PAUSE_VERSION}",
            "-o",
            str(partial),
            str(source),
        ],
        what="gcc pause.c",
    )
    subprocess.run(["strip", str(partial)], check=False)  # noqa: S603, S607 - optional
    os.replace(partial, binary)
    return binary


def build(version: str) -> NodeBinaries:
    """Every program of the node, built when missing (cached afterwards)."""
    images.ensure_tools()
    ensure_host_packages()
    kube = k8s.ensure_kube(version, NODE_COMMANDS, flavour="node")
    containerd = _containerd()
    cni = _cni_plugins()
    coredns = go_install(
        f"github.com/coredns/coredns@{COREDNS_VERSION}",
        TOOLS / f"coredns-{COREDNS_VERSION}" / "coredns",
        ldflags=f"-s -w -X github.com/coredns/coredns/coremain.GitCommit={COREDNS_VERSION}",
        purpose="CoreDNS",
    )
    return NodeBinaries(
        containerd=containerd / "containerd",
        shim=containerd / "containerd-shim-runc-v2",
        ctr=containerd / "ctr",
        cni_dir=cni,
        kubelet=kube["kubelet"],
        kube_proxy=kube["kube-proxy"],
        coredns=coredns,
        pause=_pause(version),
    )


def _usable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def ensure_host_packages() -> None:
    """iptables, conntrack and ip, installed with apt-get when missing."""
    missing = [package for command, package in HOST_PACKAGES.items() if not shutil.which(command)]
    if shutil.which("gcc") is None:
        missing += ["gcc", "libc6-dev"]
    if missing:
        log(f"installing Debian packages: {' '.join(missing)}")
        try:
            install.apt_install(missing)
        except StackError as error:
            raise ToolError(str(error)) from error


# Certificates and configuration ---------------------------------------------------------------


def write_pki(control_plane: k8s.ControlPlane) -> None:
    """The node's certificates, signed by the control plane's CA (made on every `up`, so they
    always match the running version's CA): kubelet's client (user `system:node:<name>` in
    `system:nodes`, which the Node authorizer knows) and serving certificates, kube-proxy's
    client (`system:kube-proxy`, bound to `system:node-proxier` by the bootstrap RBAC)."""
    PKI.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_pem = (control_plane.pki / "ca.crt").read_bytes()
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key((control_plane.pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    (PKI / "ca.crt").write_bytes(ca_pem)
    issued = {
        "kubelet": (k8s._name(f"system:node:{NODE_NAME}", "system:nodes"), True, ()),
        "kubelet-serving": (k8s._name(NODE_NAME), False, (NODE_NAME, POD_GATEWAY, "127.0.0.1")),
        "kube-proxy": (k8s._name("system:kube-proxy"), True, ()),
    }
    for name, (subject, client, server_names) in issued.items():
        key = k8s._new_key()
        cert = k8s._certificate(
            subject, key, (ca, ca_key), client=client, server_names=server_names
        )
        k8s._write_key(PKI / f"{name}.key", key)
        (PKI / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for client in ("kubelet", "kube-proxy"):
        k8s.write_kubeconfig(NODE_STATE / f"{client}.kubeconfig", PKI, client)


def containerd_config(binaries: NodeBinaries, runc: Path) -> Path:
    """containerd's configuration (version 4, the format `containerd config default` writes):
    CRI with runc (cgroupfs), the local registry over plain HTTP, the pause image built here as
    the sandbox, the CNI plugins and folders."""
    certs = CONTAINERD_DIR / "certs.d" / images.REGISTRY
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "hosts.toml").write_text(
        f'server = "http://{images.REGISTRY}"\n\n'
        f'[host."http://{images.REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    text = f"""\
version = 4
root = "{CONTAINERD_DIR / "root"}"
state = "{CONTAINERD_DIR / "state"}"
imports = []

[plugins."io.containerd.server.v1.grpc"]
  address = "{CONTAINERD_SOCKET}"

[plugins."io.containerd.server.v1.ttrpc"]
  address = "{CONTAINERD_SOCKET}.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause_ref()}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{CONTAINERD_DIR / "certs.d"}"

[plugins."io.containerd.transfer.v1.local"]
  config_path = "{CONTAINERD_DIR / "certs.d"}"

[plugins."io.containerd.cri.v1.runtime"]
  # Root here lacks CAP_SYS_RESOURCE: lowering a container's oom_score_adj would fail.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{binaries.cni_dir}"]
    conf_dir = "{CNI_CONF_DIR}"

[plugins."io.containerd.nri.v1.nri"]
  disable = true
"""
    path = CONTAINERD_DIR / "config.toml"
    path.write_text(text)
    return path


def cni_config() -> None:
    """One network: the bridge (gateway, masquerade off-net traffic), host-local addresses,
    hostPort support."""
    CNI_CONF_DIR.mkdir(parents=True, exist_ok=True)
    network = {
        "cniVersion": "1.0.0",
        "name": "mercato",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(NODE_STATE / "cni" / "ipam"),
                    "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (CNI_CONF_DIR / "10-mercato.conflist").write_text(json.dumps(network, indent=2) + "\n")


def kubelet_config() -> Path:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": POD_GATEWAY,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(PKI / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(PKI / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(PKI / "kubelet-serving.key"),
        "cgroupDriver": "cgroupfs",
        # The machine has cgroup v1 controllers; kubelet refuses them unless told otherwise.
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        # A shared development disk: evict only when it is really full.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "serializeImagePulls": False,
        "registerNode": True,
        "nodeStatusReportFrequency": "10s",
    }
    path = NODE_STATE / "kubelet.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def kube_proxy_config() -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(NODE_STATE / "kube-proxy.kubeconfig")},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{KUBE_PROXY_METRICS_PORT}",
        # Without br_netfilter, a pod reaching its own Service's backend on the same bridge
        # would get the reply straight from that pod: masquerading routes it back through here.
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
        # Leave the host's conntrack sysctls alone (a container may not write them).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
    path = NODE_STATE / "kube-proxy.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


# Images of the node ---------------------------------------------------------------------------


def pause_ref() -> str:
    return f"{images.REGISTRY}/mercato-node/pause:{PAUSE_VERSION}"


def coredns_ref() -> str:
    return f"{images.REGISTRY}/mercato-node/coredns:{COREDNS_VERSION}"


def _push_static_image(tools: images.Tools, binary: Path, ref: str, user: str) -> None:
    """A `FROM scratch` image of one static binary, built by BuildKit and pushed (once)."""
    if images.registry_digest(tools, ref) is not None:
        return
    name = binary.name
    context = NODE_STATE / "images" / name
    context.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, context / name)
    (context / "Dockerfile").write_text(
        f'FROM scratch\nCOPY {name} /{name}\nUSER {user}\nENTRYPOINT ["/{name}"]\n'
    )
    log(f"building {ref}")
    images._buildctl(
        tools,
        what=f"image {ref}",
        context=context,
        dockerfile_dir=context,
        ref=ref,
        archive=images.OCI_DIR / f"node-{name}.tar",
        options={},
        log_path=context / "build.log",
    )


def push_images(binaries: NodeBinaries, tools: images.Tools) -> None:
    images.up(tools)
    _push_static_image(tools, binaries.pause, pause_ref(), "65535:65535")
    _push_static_image(tools, binaries.coredns, coredns_ref(), "65532:65532")


# Processes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Daemon(images.Daemon):
    """A process of the node: its folder, pid file and log (as the image daemons'), how to
    start it and how to tell it is healthy."""

    argv: Callable[[], list[str]]
    health: Callable[[], str | None]


def _http_health(url: str) -> str | None:
    """None when ``url`` answers 200 (kubelet says `ok`, kube-proxy a JSON document)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 - fixed local URL
            reply.read()
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}: {error.read().decode(errors='replace')[:200]}"
    except OSError as error:
        return str(error)
    return None


class Node:
    def __init__(self, version: str) -> None:
        self.version = version
        self.control_plane = k8s.ControlPlane(version)
        self.binaries: NodeBinaries | None = None
        self.tools: images.Tools | None = None
        kubelet_health = f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz"
        proxy_health = f"http://127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}/healthz"
        self.daemons = [
            Daemon(
                "containerd",
                NODE_STATE / "containerd",
                f"unix://{CONTAINERD_SOCKET}",
                self._containerd_argv,
                self._containerd_health,
            ),
            Daemon(
                "kubelet",
                NODE_STATE / "kubelet",
                kubelet_health,
                self._kubelet_argv,
                lambda: _http_health(kubelet_health),
            ),
            Daemon(
                "kube-proxy",
                NODE_STATE / "kube-proxy",
                proxy_health,
                self._kube_proxy_argv,
                lambda: _http_health(proxy_health),
            ),
        ]

    def _built(self) -> NodeBinaries:
        if self.binaries is None:
            self.binaries = build(self.version)
        return self.binaries

    def _tools(self) -> images.Tools:
        if self.tools is None:
            self.tools = images.ensure_tools()
        return self.tools

    def _containerd_argv(self) -> list[str]:
        config = containerd_config(self._built(), self._tools().runc)
        return [str(self._built().containerd), "--config", str(config), "--log-level", "warn"]

    def _containerd_health(self) -> str | None:
        if not CONTAINERD_SOCKET.exists():
            return f"no socket {CONTAINERD_SOCKET}"
        result = subprocess.run(  # noqa: S603 - fixed tool, no shell
            [str(self._built().ctr), "--address", str(CONTAINERD_SOCKET), "version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        return None if result.returncode == 0 else (result.stderr or result.stdout)[-300:]

    def _kubelet_argv(self) -> list[str]:
        labels = {
            NODE_LABEL: "real",
            "topology.kubernetes.io/zone": NODE_ZONE,
            "topology.kubernetes.io/region": "local",
        }
        return [
            str(self._built().kubelet),
            f"--config={kubelet_config()}",
            f"--kubeconfig={NODE_STATE / 'kubelet.kubeconfig'}",
            f"--root-dir={KUBELET_DIR}",
            f"--cert-dir={PKI}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={POD_GATEWAY}",
            "--node-labels=" + ",".join(f"{k}={v}" for k, v in labels.items()),
            "--v=1",
        ]

    def _kube_proxy_argv(self) -> list[str]:
        return [str(self._built().kube_proxy), f"--config={kube_proxy_config()}", "--v=1"]

    # Life cycle ---------------------------------------------------------------------------

    def start(self, daemon: Daemon, timeout: float = 120) -> None:
        if daemon.pid() is None:
            daemon.directory.mkdir(parents=True, exist_ok=True)
            env = {
                **os.environ,
                # containerd finds the shim and runc, kubelet and kube-proxy find iptables.
                "PATH": os.pathsep.join(
                    [
                        str(self._built().shim.parent),
                        str(self._tools().runc.parent),
                        os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    ]
                ),
            }
            pid = process.spawn(
                daemon.argv(), log_path=daemon.log_path, cwd=daemon.directory, env=env
            )
            process.write_pidfile(daemon.pid_path, pid)
            log(f"started {daemon.name} (pid {pid})")
        deadline = time.monotonic() + timeout
        while (reason := daemon.health()) is not None:
            if daemon.pid() is None:
                raise ToolError(
                    f"{daemon.name} exited; last lines of {daemon.log_path}:\n"
                    + process.tail(daemon.log_path)
                )
            if time.monotonic() > deadline:
                raise ToolError(f"{daemon.name} not healthy after {timeout:.0f} s: {reason}")
            time.sleep(0.3)

    def up(self) -> None:
        started = time.monotonic()
        if not process.is_root():
            raise ToolError("a real node needs root (containerd, kubelet, iptables, cgroups)")
        if not self.control_plane.running():
            raise ToolError("the control plane is not running: `make k8s-up` first")
        binaries = self._built()
        push_images(binaries, self._tools())
        NODE_STATE.mkdir(parents=True, exist_ok=True)
        write_pki(self.control_plane)
        cni_config()
        host_network_up()
        for daemon in self.daemons:
            self.start(daemon)
        api = k8s.Api(self.control_plane.pki)
        taint_fake_nodes(api, taint=True)
        wait_node_ready(api)
        apply_coredns(api)
        wait_coredns(api)
        log(f"node {NODE_NAME} Ready with CoreDNS in {time.monotonic() - started:.1f} s")

    def running(self) -> bool:
        return any(daemon.pid() is not None for daemon in self.daemons)

    def down(self) -> None:
        """Pods first (while kubelet still runs), then kube-proxy, kubelet, containerd; then what
        they left on the host."""
        if not (NODE_STATE / "created-paths.json").exists() and not self.running():
            return  # never up (or already down): nothing to undo
        api = k8s.Api(self.control_plane.pki) if self.control_plane.running() else None
        if api is not None and self.running():
            drain(api)
        for daemon in reversed(self.daemons):
            pid = daemon.pid()
            if pid is not None:
                log(f"stopping {daemon.name} (pid {pid})")
                process.terminate(pid, timeout=20, sig=signal.SIGTERM)
            daemon.pid_path.unlink(missing_ok=True)
        stop_leftover_containers()
        if api is not None:
            api.request("DELETE", f"/api/v1/nodes/{NODE_NAME}")
            taint_fake_nodes(api, taint=False)
        host_network_down()
        clean_host_paths()

    def status(self) -> bool:
        print(f"node {NODE_NAME}  state {NODE_STATE}")
        healthy = True
        for daemon in self.daemons:
            pid = daemon.pid()
            reason = "stopped" if pid is None else daemon.health()
            healthy = healthy and reason is None
            print(f"{daemon.name:<12} {pid or '-':>7}  {'healthy' if reason is None else reason}")
        return healthy


# The host ----------------------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603 - fixed tool, no shell
        ["ip", *args],  # noqa: S607 - iproute2 from PATH
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise ToolError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def host_network_up() -> None:
    """IP forwarding on (the old value kept for `down`), and the bridge with the pods' gateway
    address, made before any pod so the host's services can listen on that address first."""
    saved = NODE_STATE / "ip_forward.saved"
    if not saved.exists():
        saved.write_text(IP_FORWARD.read_text())
    IP_FORWARD.write_text("1\n")
    if _ip("link", "show", BRIDGE, check=False).returncode != 0:
        _ip("link", "add", BRIDGE, "type", "bridge")
    prefix = ipaddress.ip_network(POD_CIDR).prefixlen
    if f" {POD_GATEWAY}/" not in _ip("-4", "addr", "show", BRIDGE).stdout:
        _ip("addr", "add", f"{POD_GATEWAY}/{prefix}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    created = NODE_STATE / "created-paths.json"
    if not created.exists():
        # Only what did not exist before is removed by `down` (never a real node's folders).
        created.write_text(json.dumps([str(p) for p in FIXED_PATHS if not p.exists()]))


def host_network_down() -> None:
    _ip("link", "del", BRIDGE, check=False)
    binary = TOOLS / f"kubernetes-node-v{k8s.k8s_version()}" / "kube-proxy"
    if _usable(binary) and shutil.which("iptables"):
        subprocess.run(  # noqa: S603 - fixed tool, no shell
            [str(binary), "--cleanup"], capture_output=True, check=False, timeout=60
        )
        for command in ("iptables", "ip6tables"):
            _remove_kube_chains(command)
    saved = NODE_STATE / "ip_forward.saved"
    if saved.exists():
        IP_FORWARD.write_text(saved.read_text())
        saved.unlink()


def _remove_kube_chains(command: str) -> None:
    """The KUBE-* chains kubelet and kube-proxy made (kube-proxy --cleanup leaves kubelet's):
    first every rule that jumps to one, then the chains."""
    for table in ("filter", "nat", "mangle"):
        listing = subprocess.run(  # noqa: S603 - fixed tool, no shell
            [command, "-t", table, "-S"], capture_output=True, text=True, check=False
        )
        rules = listing.stdout.splitlines()
        for rule in rules:
            words = rule.split()
            if (
                words[:1] == ["-A"]
                and "-j" in words
                and words[words.index("-j") + 1].startswith("KUBE-")
            ):
                subprocess.run(  # noqa: S603 - fixed tool, no shell
                    [command, "-t", table, "-D", *words[1:]], capture_output=True, check=False
                )
        chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
        for flag in ("-F", "-X"):
            for chain in chains:
                subprocess.run(  # noqa: S603 - fixed tool, no shell
                    [command, "-t", table, flag, chain], capture_output=True, check=False
                )


def _mounts_under(roots: Sequence[Path]) -> list[str]:
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
            mounts.append(point)
    return sorted(set(mounts), key=len, reverse=True)


def _cgroup_dirs() -> list[Path]:
    """The `kubepods` cgroups in every hierarchy, deepest first."""
    found: list[Path] = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found += [top, *(d for d in top.rglob("*") if d.is_dir())]
    return sorted(found, key=lambda d: len(d.parts), reverse=True)


def stop_leftover_containers() -> None:
    """Kill whatever still runs in the pods' cgroups and remove those cgroups, then the shims
    (which outlive containerd by design)."""
    for _ in range(3):
        for cgroup in _cgroup_dirs():
            with contextlib.suppress(OSError):
                for pid in (cgroup / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.5)
    shim = TOOLS / f"containerd-{CONTAINERD_VERSION}" / "containerd-shim-runc-v2"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "exe") == str(shim):
                    os.kill(int(entry.name), signal.SIGKILL)
    for cgroup in _cgroup_dirs():
        with contextlib.suppress(OSError):
            cgroup.rmdir()


def clean_host_paths() -> None:
    """Unmount what the node mounted (volumes, overlay snapshots, network namespaces), then
    remove its state and the fixed paths it created."""
    created_file = NODE_STATE / "created-paths.json"
    created = (
        [Path(p) for p in json.loads(created_file.read_text())] if created_file.exists() else []
    )
    roots = [NODE_STATE, *FIXED_PATHS]
    for _ in range(3):
        mounts = _mounts_under(roots)
        if not mounts:
            break
        for point in mounts:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)  # noqa: S603, S607
    for path in created:
        shutil.rmtree(path, ignore_errors=True)
    # The logs stay (a failed run can be read afterwards); what ran and was mounted goes.
    for folder in (CONTAINERD_DIR / "root", CONTAINERD_DIR / "state", KUBELET_DIR, PKI):
        shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(NODE_STATE / "cni", ignore_errors=True)
    created_file.unlink(missing_ok=True)


# The cluster side ------------------------------------------------------------------------------


def taint_fake_nodes(api: k8s.Api, *, taint: bool) -> None:
    """While the real node is up, new pods avoid the fake ones (where no container runs)."""
    for name in k8s.NODES:
        status, text = api.request("GET", f"/api/v1/nodes/{name}")
        if status != 200:
            continue
        taints = [
            t for t in json.loads(text)["spec"].get("taints") or [] if t["key"] != FAKE_NODE_TAINT
        ]
        if taint:
            taints.append({"key": FAKE_NODE_TAINT, "value": "true", "effect": "NoSchedule"})
        api.request(
            "PATCH",
            f"/api/v1/nodes/{name}",
            {"spec": {"taints": taints}},
            content_type="application/merge-patch+json",
        )


def _node_ready(api: k8s.Api) -> str | None:
    status, text = api.request("GET", f"/api/v1/nodes/{NODE_NAME}")
    if status != 200:
        return f"node {NODE_NAME} not registered (HTTP {status})"
    for condition in json.loads(text).get("status", {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return None if condition["status"] == "True" else condition.get("message", "not Ready")
    return "no Ready condition yet"


def wait_node_ready(api: k8s.Api, timeout: float = 120) -> None:
    _wait(lambda: _node_ready(api), timeout, f"node {NODE_NAME} Ready")


def _wait(check: Callable[[], str | None], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while (reason := check()) is not None:
        if time.monotonic() > deadline:
            raise ToolError(f"{what}: not after {timeout:.0f} s: {reason}")
        time.sleep(0.5)


COREFILE = f"""\
.:53 {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    prometheus :9153
    cache 30
}}
"""


def coredns_objects() -> list[tuple[str, dict[str, object]]]:
    """CoreDNS as the cluster's `kube-dns`: (API path, object) pairs for server-side apply.
    Only cluster names are answered: nothing outside is reachable from here anyway."""
    labels = {"k8s-app": "kube-dns"}
    namespace = "/api/v1/namespaces/kube-system"
    return [
        (
            f"{namespace}/serviceaccounts/coredns",
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
            },
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:coredns",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "system:coredns"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["endpoints", "services", "pods", "namespaces"],
                        "verbs": ["list", "watch"],
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["list", "watch"],
                    },
                ],
            },
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/system:coredns",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "system:coredns"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:coredns",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}
                ],
            },
        ),
        (
            f"{namespace}/configmaps/coredns",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
                "data": {"Corefile": COREFILE},
            },
        ),
        (
            "/apis/apps/v1/namespaces/kube-system/deployments/coredns",
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": "coredns",
                            "priorityClassName": "system-cluster-critical",
                            "nodeSelector": {NODE_LABEL: "real"},
                            "dnsPolicy": "Default",
                            "securityContext": {
                                "runAsNonRoot": True,
                                "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"},
                                # Port 53 without a capability: a namespaced, "safe" sysctl.
                                "sysctls": [
                                    {"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"}
                                ],
                            },
                            "containers": [
                                {
                                    "name": "coredns",
                                    "image": coredns_ref(),
                                    "args": ["-conf", "/etc/coredns/Corefile"],
                                    "ports": [
                                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                        {
                                            "name": "metrics",
                                            "containerPort": 9153,
                                            "protocol": "TCP",
                                        },
                                    ],
                                    "readinessProbe": {
                                        "httpGet": {"path": "/ready", "port": 8181},
                                        "periodSeconds": 2,
                                    },
                                    "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                                    "resources": {
                                        "requests": {"cpu": "50m", "memory": "32Mi"},
                                        "limits": {"memory": "128Mi"},
                                    },
                                    "securityContext": {
                                        "allowPrivilegeEscalation": False,
                                        "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]},
                                    },
                                    "volumeMounts": [
                                        {"name": "config", "mountPath": "/etc/coredns"}
                                    ],
                                }
                            ],
                            "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                        },
                    },
                },
            },
        ),
        (
            f"{namespace}/services/kube-dns",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
                "spec": {
                    "clusterIP": DNS_SERVICE_IP,
                    "selector": labels,
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    ],
                },
            },
        ),
    ]


def apply_coredns(api: k8s.Api) -> None:
    for path, body in coredns_objects():
        api.apply(path, body)


def _coredns_available(api: k8s.Api) -> str | None:
    deployment = api.get_json("/apis/apps/v1/namespaces/kube-system/deployments/coredns")
    status = deployment.get("status")
    available = status.get("availableReplicas", 0) if isinstance(status, dict) else 0
    return None if available else "CoreDNS has no available replica"


def wait_coredns(api: k8s.Api, timeout: float = 180) -> None:
    _wait(lambda: _coredns_available(api), timeout, "CoreDNS available")


def _pods_on_node(api: k8s.Api) -> list[tuple[str, str]]:
    pods = api.get_json(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE_NAME}").get("items")
    return [
        (p["metadata"]["namespace"], p["metadata"]["name"])
        for p in (pods if isinstance(pods, list) else [])
    ]


def drain(api: k8s.Api, timeout: float = 90) -> None:
    """Delete the node's pods and wait until kubelet has stopped them (so their networks and
    volumes are torn down the normal way)."""
    for namespace, name in _pods_on_node(api):
        api.request(
            "DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", {"gracePeriodSeconds": 5}
        )
    # Controllers make new pods: they must not come back here.
    api.request(
        "PATCH",
        f"/api/v1/nodes/{NODE_NAME}",
        {"spec": {"unschedulable": True}},
        content_type="application/merge-patch+json",
    )
    with contextlib.suppress(ToolError):
        _wait(
            lambda: f"{len(_pods_on_node(api))} pods left" if _pods_on_node(api) else None,
            timeout,
            "drain",
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/node.py", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("build", "up", "down", "status"):
        sub.add_parser(command)
    args = parser.parse_args(argv)
    try:
        version = k8s.k8s_version()
        if args.command == "build":
            build(version)
            return 0
        node = Node(version)
        if args.command == "up":
            with k8s.exclusive():
                node.up()
        elif args.command == "down":
            with k8s.exclusive():
                node.down()
        elif args.command == "status":
            return 0 if node.status() else 1
    except ToolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
