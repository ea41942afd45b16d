"""Fixtures of the chart's tests on a real API server: the local control plane (tools/k8s.py),
the CRDs of the chart's optional parts, the pinned Helm and the official Kubernetes client.

The control plane is brought up when it is not running, and stopped at the end of the session
only when this session started it. Pods run on kwok's fake nodes: they become Ready and hook
Jobs complete, but no container runs (images, commands and probes are not exercised).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from kubernetes import client, config, dynamic, watch
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "mercato"
VALUES_SETS = sorted(
    path.stem.removesuffix("-values") for path in (CHART / "ci").glob("*-values.yaml")
)
RELEASE = "shop"
#: Seconds `helm --wait` may take (kwok makes pods Ready within about a second).
HELM_TIMEOUT = "120s"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "k8s: needs the local Kubernetes control plane (make test-k8s)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.k8s)


@cache
def load_tool(name: str) -> ModuleType:
    """A script of tools/ (k8s.py, helm.py) as a module."""
    spec = importlib.util.spec_from_file_location(
        f"mercato_tools_{name}", ROOT / "tools" / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    """The admin kubeconfig of a running control plane (brought up here when needed)."""
    k8s = load_tool("k8s")
    plane = k8s.ControlPlane(k8s.k8s_version())
    with k8s.exclusive():
        started_here = not plane.running()
        plane.up()
    try:
        yield Path(k8s.KUBECONFIG)
    finally:
        if started_here:
            with k8s.exclusive():
                plane.down()


@pytest.fixture(scope="session")
def api(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


@cache
def crd_folder() -> Path | None:
    """Where the CRDs of the chart's optional parts are (tools/crds.py `crd_dir`:
    MERCATO_CRDS_DIR, ../shared/crds beside the project, else fetched into .state/crds)."""
    folder: Path | None = load_tool("crds").crd_dir()
    return folder


@pytest.fixture(scope="session")
def absent_crd_groups() -> dict[str, list[str]]:
    """The API groups whose CRD files the folder lacks (a fetch that could not get them all),
    each with the files missing."""
    folder = crd_folder()
    absent: dict[str, list[str]] = {}
    if folder is not None:
        for name in load_tool("crds").missing(folder):
            absent.setdefault(name.partition("_")[0], []).append(name)
    return absent


@pytest.fixture
def crds(api: client.ApiClient) -> list[str]:
    """Every CRD of the folder, applied (once; later calls find them) and Established; their
    names."""
    folder = crd_folder()
    if folder is None:
        pytest.skip("no CRD folder: MERCATO_CRDS_DIR, ../shared/crds, tools/crds.py fetch: none")
    extensions = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(folder.glob("*.yaml")):
        body = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        name = body["metadata"]["name"]
        names.append(name)
        try:
            # Not deserialised: the client's models reject some valid CRD status fields.
            extensions.create_custom_resource_definition(body, _preload_content=False)
        except ApiException as error:
            if error.status != 409:  # already there from an earlier test or session
                raise
    deadline = time.monotonic() + 60
    for name in names:
        while True:
            crd = extensions.read_custom_resource_definition(name, _preload_content=False)
            conditions = (
                yaml.load(crd.data, Loader=yaml.CSafeLoader).get("status", {}).get("conditions")
                or []
            )
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            assert time.monotonic() < deadline, f"CRD {name} not Established"
            time.sleep(0.2)
    return names


@pytest.fixture
def bare_cluster(api: client.ApiClient) -> None:
    """A cluster without any CustomResourceDefinition (as one without the operators is):
    those of an earlier test are deleted, and gone from discovery."""
    extensions = client.ApiextensionsV1Api(api)
    listed = extensions.list_custom_resource_definition(_preload_content=False)
    names = [
        item["metadata"]["name"]
        for item in yaml.load(listed.data, Loader=yaml.CSafeLoader)["items"]
    ]
    for name in names:
        try:
            extensions.delete_custom_resource_definition(name)
        except ApiException as error:
            if error.status != 404:
                raise
    deadline = time.monotonic() + 120
    for name in names:
        while True:
            try:
                extensions.read_custom_resource_definition(name, _preload_content=False)
            except ApiException as error:
                if error.status == 404:
                    break
                raise
            assert time.monotonic() < deadline, f"CRD {name} still there"
            time.sleep(0.3)


@dataclass
class HelmResult:
    returncode: int
    stdout: str
    stderr: str

    def warnings(self) -> list[str]:
        """Warnings of the API server (client-go logs them as `W<date> ... warnings.go`) or
        of Helm itself. client-go's info lines (`I<date> ...`) are not: one says "Warning:
        watch ended with error ... context canceled" when Helm's wait stops its watch."""
        return [
            line
            for line in self.stderr.splitlines()
            if not (line[:1] == "I" and line[1:5].isdigit())
            and ("warning" in line.lower() or (line[:1] == "W" and line[1:5].isdigit()))
        ]


Helm = Callable[..., HelmResult]


def not_ready(api: client.ApiClient, namespace: str) -> str:
    """What a failed ``--wait`` was waiting for: the Deployments short of their replicas and
    the pods that are not Ready, with their conditions, for the failure message."""
    lines: list[str] = []
    for deployment in client.AppsV1Api(api).list_namespaced_deployment(namespace).items:
        status, want = deployment.status, deployment.spec.replicas or 0
        if (status.available_replicas or 0) < want or (status.updated_replicas or 0) < want:
            conditions = "; ".join(
                f"{c.type}={c.status} {c.reason}: {c.message}" for c in status.conditions or ()
            )
            lines.append(
                f"deployment {deployment.metadata.name}: want {want}, updated "
                f"{status.updated_replicas}, available {status.available_replicas} ({conditions})"
            )
    for pod in client.CoreV1Api(api).list_namespaced_pod(namespace).items:
        conditions = {c.type: c for c in pod.status.conditions or ()}
        ready = conditions.get("Ready")
        if ready is None or ready.status != "True":
            scheduled = conditions.get("PodScheduled")
            why = scheduled.message if scheduled is not None and scheduled.message else ""
            lines.append(
                f"pod {pod.metadata.name}: {pod.status.phase} on {pod.spec.node_name} {why}"
            )
    return "\n".join(lines) or "(every Deployment and pod is ready)"


@pytest.fixture(scope="session")
def helm(kubeconfig: Path, api: client.ApiClient) -> Helm:
    """Run the pinned helm (tools/helm.py) against the local control plane."""
    binary = load_tool("helm").ensure_helm()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(ROOT / ".state" / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(ROOT / ".state" / "helm" / "config"),
        "HELM_DATA_HOME": str(ROOT / ".state" / "helm" / "data"),
        # Discovery cached per cluster address: a control plane made anew on the same port must
        # not be described by the last one's cache (~/.kube/cache keeps it for hours).
        "KUBECACHEDIR": str(ROOT / ".state" / "k8s" / "kube-cache"),
    }

    def run(*args: str, check: bool = True) -> HelmResult:
        started = time.monotonic()
        done = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=env, check=False
        )
        result = HelmResult(done.returncode, done.stdout, done.stderr)
        if args[0] in ("install", "upgrade", "rollback", "uninstall"):
            # The session's log names each step of each values set with its duration.
            flags = [flag for flag in ("--namespace", "-n") if flag in args]
            namespace = args[args.index(flags[0]) + 1] if flags else ""
            outcome = "ok" if done.returncode == 0 else f"exit {done.returncode}"
            elapsed = time.monotonic() - started
            dry_run = any(arg.startswith("--dry-run") for arg in args)
            step = f"{args[0]} --dry-run" if dry_run else args[0]
            print(f"helm {step} {namespace}: {outcome} in {elapsed:.1f} s", file=sys.stderr)
        if check and done.returncode != 0:
            waiting = ""
            if "--wait" in args and "--namespace" in args:
                waiting = "\nnot ready:\n" + not_ready(api, args[args.index("--namespace") + 1])
            pytest.fail(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}{waiting}")
        return result

    return run


@pytest.fixture
def namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace enforcing the `restricted` Pod Security Standard, deleted after."""
    # Named after the test's parameters (the values set), else after the test.
    params = getattr(request.node, "callspec", None)
    suffix = params.id if params else request.node.name.removeprefix("test_")
    name = f"k8s-{suffix}".lower().replace("_", "-")[:63].rstrip("-")
    core = client.CoreV1Api(api)
    delete_namespace(core, name)
    labels = {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
    }
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    yield name
    # Not waited for: the next test has a namespace of its own, and a later run of this one
    # waits above. Waiting here cost 5 to 6 s a test (the namespace controller's sweep).
    delete_namespace(core, name, wait=False)


def delete_namespace(
    core: client.CoreV1Api, name: str, timeout: float = 120, *, wait: bool = True
) -> None:
    try:
        core.delete_namespace(name)
    except ApiException as error:
        if error.status == 404:
            return
        raise
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespace(name)
        except ApiException as error:
            if error.status == 404:
                return
            raise
        time.sleep(0.3)
    pytest.fail(f"namespace {name} still there after {timeout:.0f} s")


@dataclass
class JobEvent:
    """One watch event of a Job: its order is the API server's order."""

    kind: str
    name: str
    uid: str
    annotations: dict[str, str]
    created: Any
    completed: Any
    complete: bool


@dataclass
class JobWatcher:
    """Records every Job event of a namespace while Helm runs (hook Jobs are deleted once
    they succeed, so only a watch sees them)."""

    api: client.ApiClient
    namespace: str
    events: list[JobEvent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> JobWatcher:
        batch = client.BatchV1Api(self.api)
        version = batch.list_namespaced_job(self.namespace).metadata.resource_version
        self._thread = threading.Thread(target=self._run, args=(batch, version), daemon=True)
        self._thread.start()
        return self

    def _run(self, batch: client.BatchV1Api, version: str) -> None:
        while not self._stop.is_set():
            stream = watch.Watch().stream(
                batch.list_namespaced_job,
                self.namespace,
                resource_version=version,
                timeout_seconds=1,
            )
            for event in stream:
                job = event["object"]
                version = job.metadata.resource_version
                conditions = (job.status.conditions if job.status else None) or []
                self.events.append(
                    JobEvent(
                        kind=event["type"],
                        name=job.metadata.name,
                        uid=job.metadata.uid,
                        annotations=dict(job.metadata.annotations or {}),
                        created=job.metadata.creation_timestamp,
                        completed=job.status.completion_time if job.status else None,
                        complete=any(
                            c.type == "Complete" and c.status == "True" for c in conditions
                        ),
                    )
                )

    def __exit__(self, *exc: object) -> None:
        # A last second for the events of the final hook's deletion to arrive.
        time.sleep(1)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


# What the cluster says -------------------------------------------------------------------------


def deployment_state(api: client.ApiClient, namespace: str) -> dict[str, tuple[int, str]]:
    """Per Deployment: its generation and the pod-template-hash of its current ReplicaSet."""
    apps = client.AppsV1Api(api)
    current: dict[str, str] = {}
    for replica_set in apps.list_namespaced_replica_set(namespace).items:
        owners = replica_set.metadata.owner_references or []
        revision = (replica_set.metadata.annotations or {}).get("deployment.kubernetes.io/revision")
        for owner in owners:
            if owner.kind == "Deployment":
                labels = replica_set.metadata.labels
                current[f"{owner.name}@{revision}"] = labels["pod-template-hash"]
    state = {}
    for deployment in apps.list_namespaced_deployment(namespace).items:
        revision = deployment.metadata.annotations["deployment.kubernetes.io/revision"]
        name = deployment.metadata.name
        state[name] = (deployment.metadata.generation, current[f"{name}@{revision}"])
    return state


def leftovers(api: client.ApiClient, namespace: str, objects: list[dict[str, Any]]) -> list[str]:
    """Objects of the release still there (whether the chart keeps them or not), plus any
    ReplicaSet, Pod or Job of the namespace."""
    resources = dynamic.DynamicClient(api).resources
    found = []
    for document in objects:
        kind, name = document["kind"], document["metadata"]["name"]
        resource = resources.get(api_version=document["apiVersion"], kind=kind)
        try:
            if resource.namespaced:
                resource.get(name=name, namespace=namespace)
            else:
                resource.get(name=name)
        except dynamic.exceptions.NotFoundError:
            continue
        found.append(f"{kind}/{name}")
    apps, core, batch = client.AppsV1Api(api), client.CoreV1Api(api), client.BatchV1Api(api)
    for listing, kind in (
        (apps.list_namespaced_replica_set, "ReplicaSet"),
        (core.list_namespaced_pod, "Pod"),
        (batch.list_namespaced_job, "Job"),
    ):
        found += [f"{kind}/{item.metadata.name}" for item in listing(namespace).items]
    return found
