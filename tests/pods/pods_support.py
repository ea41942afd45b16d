"""What the pods tests share: constants, the tools as modules, Helm, the release's handle and
the session's timings (one module, imported by name by the conftest and the tests alike)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

from kubernetes import client

from mercato_devstack.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "mercato"
VALUES = Path(__file__).with_name("values-local-stack.yaml")
NAMESPACE = "pods"
RELEASE = "shop"
FULLNAME = f"{RELEASE}-mercato"
ADMIN_EMAIL = "admin@mercato.local"
#: `helm install --wait`: images are pulled and five Python services start on two cores.
INSTALL_TIMEOUT = "15m"

#: The pods' stack: on the node's bridge (pods cannot reach the host's loopback), on ports of
#: its own (values-local-stack.yaml names them), state in .state/pods.
STACK_DEFAULTS = {
    "MERCATO_STATE_DIR": str(ROOT / ".state" / "pods"),
    "MERCATO_PG_PORT": "21432",
    "MERCATO_KAFKA_PORT": "21092",
    "MERCATO_KAFKA_CONTROLLER_PORT": "21093",
    "MERCATO_MONGO_PORT": "21018",
    "MERCATO_REDIS_PORT": "21379",
}


@cache
def load_tool(name: str) -> ModuleType:
    """A script of tools/ as a module, by its own name: the scripts import each other so."""
    tools = str(ROOT / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    return importlib.import_module(name)


#: Seconds each stage of the session took, printed at the end (the note's timings).
TIMINGS: dict[str, float] = {}


@dataclass(frozen=True)
class Images:
    registry: str
    tag: str
    digests: dict[str, str]


def helm(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    binary = load_tool("helm").ensure_helm()
    kubeconfig = load_tool("k8s").KUBECONFIG
    return subprocess.run(
        [str(binary), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def put_secret(core: client.CoreV1Api, name: str, data: dict[str, str]) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=NAMESPACE),
        string_data=data,
    )
    try:
        core.create_namespaced_secret(NAMESPACE, body)
    except client.ApiException as error:
        if error.status != 409:
            raise
        core.replace_namespaced_secret(name, NAMESPACE, body)


@dataclass
class Release:
    gateway_url: str
    admin_password: str
    stack: Stack
    core: client.CoreV1Api
    #: The image digest each component was installed with.
    digests: dict[str, str]

    def pods(self, component: str) -> list[client.V1Pod]:
        selector = f"app.kubernetes.io/component={component},app.kubernetes.io/instance={RELEASE}"
        pods = self.core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
        return [pod for pod in pods if not pod.metadata.deletion_timestamp]


def describe_failures(core: client.CoreV1Api) -> str:
    """The pods that are not Ready, with their last events and log lines."""
    lines = []
    for pod in core.list_namespaced_pod(NAMESPACE).items:
        statuses = pod.status.container_statuses or []
        if statuses and all(s.ready for s in statuses):
            continue
        lines.append(f"pod {pod.metadata.name}: {pod.status.phase}")
        for status in statuses:
            lines.append(f"  {status.name}: ready={status.ready} state={status.state}")
        with_logs = core.read_namespaced_pod_log
        try:
            lines.append(with_logs(pod.metadata.name, NAMESPACE, tail_lines=15))
        except client.ApiException as error:
            lines.append(f"  (no log: {error.reason})")
    events = core.list_namespaced_event(NAMESPACE).items[-20:]
    lines += [f"event {e.involved_object.name}: {e.reason} {e.message}" for e in events]
    return "\n".join(lines)
