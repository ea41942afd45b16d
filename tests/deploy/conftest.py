"""Fixtures of the deployment checks: the pinned Helm, the chart rendered once per values set.

No network and no cluster: Helm is built from its Go module on first use (tools/helm.py, into
.state/tools), manifests are rendered with `helm template` and checked offline. Everything
rendered is cached for the session.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from mercato_common.settings import Settings
from mercato_devstack.manifest import load_manifest, manifest_path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "mercato"
VALUES_SETS = sorted(
    path.stem.removesuffix("-values") for path in (CHART / "ci").glob("*-values.yaml")
)
#: The Kubernetes versions the chart supports (Chart.yaml kubeVersion) and is validated against:
#: the oldest and the newest whose schemas kubernetes-validate bundles.
KUBE_OLDEST = "1.30.0"
KUBE_NEWEST = "1.37.0"
RELEASE = "shop"
NAMESPACE = "mercato"
#: Every optional (operator) API the chart may render, as `group/version/Kind`: what a cluster
#: with all the operators serves. `helm template` knows no CRD unless told, so `render` passes
#: these as `--api-versions` (test_capabilities.py renders without them, and checks this list
#: against the CRDs and the rendered kinds).
CRD_APIS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "monitoring.coreos.com/v1/PodMonitor",
    "postgresql.cnpg.io/v1/Cluster",
    "kafka.strimzi.io/v1/Kafka",
    "kafka.strimzi.io/v1/KafkaNodePool",
    "kafka.strimzi.io/v1/KafkaTopic",
    "mongodbcommunity.mongodb.com/v1/MongoDBCommunity",
    "keda.sh/v1alpha1/ScaledObject",
    "security.istio.io/v1/PeerAuthentication",
    "security.istio.io/v1/AuthorizationPolicy",
    "networking.istio.io/v1/DestinationRule",
    "networking.istio.io/v1/VirtualService",
    "policy.linkerd.io/v1beta3/Server",
    "policy.linkerd.io/v1beta3/HTTPRoute",
    "policy.linkerd.io/v1alpha1/AuthorizationPolicy",
    "policy.linkerd.io/v1alpha1/MeshTLSAuthentication",
    "policy.linkerd.io/v1alpha1/NetworkAuthentication",
    "gateway.networking.k8s.io/v1/GRPCRoute",
    "gateway.networking.k8s.io/v1/HTTPRoute",
    "cert-manager.io/v1/Certificate",
    "cert-manager.io/v1/Issuer",
)
API_VERSION_ARGS = tuple(arg for api in CRD_APIS for arg in ("--api-versions", api))
#: The values without a default the chart requires (docs/deploy.md), for renders without a
#: values set of ci/.
REQUIRED = (
    "--set", "config.tokenIssuer=https://api.example.com",
    "--set", "kafka.bootstrapServers=kafka.kafka.svc:9092",
    "--set", "redis.url=redis://redis.redis.svc:6379/0",
    "--set", "payments.provider=dev",
)  # fmt: skip
#: Every service, as services/services.toml lists them (test_manifest.py checks the chart,
#: skaffold, the topics and the dashboards against it).
MANIFEST = load_manifest(manifest_path(ROOT))
COMPONENTS = MANIFEST.names


@cache
def load_module(path: Path, name: str) -> ModuleType:
    """A Python file outside any package (tools/helm.py, chart files) as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def settings_model(component: str) -> type[Settings]:
    """The one settings model of a service: the class in its settings.py with its prefix."""
    prefix = MANIFEST.service(component).env_prefix
    module = importlib.import_module(f"{MANIFEST.service(component).module}.settings")
    models = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Settings)
        and value.__module__ == module.__name__
        and value.env_prefix == prefix
    ]
    assert len(models) == 1, f"{component}: expected one settings model with prefix {prefix}"
    return models[0]


@pytest.fixture(scope="session")
def helm_tool() -> ModuleType:
    return load_module(ROOT / "tools" / "helm.py", "mercato_tools_helm")


@pytest.fixture(scope="session")
def helm(helm_tool: ModuleType) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the pinned helm (built when missing) with the given arguments."""
    binary = helm_tool.ensure_helm()

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(ROOT / ".state" / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(ROOT / ".state" / "helm" / "config"),
            "HELM_DATA_HOME": str(ROOT / ".state" / "helm" / "data"),
        }
        result = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=env, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return run


def values_file(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


@pytest.fixture(scope="session")
def render(
    helm: Callable[..., subprocess.CompletedProcess[str]],
) -> Callable[..., list[dict[str, Any]]]:
    """`render(values_set, *extra_args)`: the manifests `helm template` gives, parsed (cached),
    on a cluster that serves every optional API (CRD_APIS)."""
    rendered: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def run(values_set: str, *extra: str) -> list[dict[str, Any]]:
        key = (values_set, *extra)
        if key not in rendered:
            result = helm(
                "template", RELEASE, str(CHART),
                "--namespace", NAMESPACE,
                "--kube-version", KUBE_NEWEST,
                "-f", str(values_file(values_set)),
                *API_VERSION_ARGS,
                *extra,
            )  # fmt: skip
            documents = [
                doc for doc in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if doc
            ]
            rendered[key] = documents
        return rendered[key]

    return run


@pytest.fixture(scope="session")
def topics_declaration() -> dict[str, Any]:
    return yaml.load((CHART / "files" / "topics.yaml").read_text(), Loader=yaml.CSafeLoader)


def crds_tool() -> ModuleType:
    """tools/crds.py: where the CRDs of the optional operators are (shared folder or fetched)."""
    return load_module(ROOT / "tools" / "crds.py", "mercato_tools_crds")


@pytest.fixture(scope="session")
def crds_dir() -> Path | None:
    """The folder of CRD YAML files (tools/crds.py `crd_dir`: MERCATO_CRDS_DIR, ../shared/crds,
    else fetched from the pinned packages into .state/crds), or None."""
    folder: Path | None = crds_tool().crd_dir()
    return folder


@pytest.fixture(scope="session")
def absent_crd_groups(crds_dir: Path | None) -> dict[str, list[str]]:
    """The API groups the CRD folder lacks files of (a fetch that could not get them all),
    each with the files missing."""
    if crds_dir is None:
        return {}
    absent: dict[str, list[str]] = {}
    for name in crds_tool().missing(crds_dir):
        absent.setdefault(name.partition("_")[0], []).append(name)
    return absent


def pod_templates(documents: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every Deployment, Job and Pod (the `helm test` Pods)."""
    pods = []
    for doc in documents:
        if doc["kind"] in ("Deployment", "Job"):
            pods.append(
                (f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
            )
        elif doc["kind"] == "Pod":
            pods.append((f"Pod/{doc['metadata']['name']}", doc["spec"]))
    return pods


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == kind}


def component_of(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"].get("app.kubernetes.io/component", "")


@pytest.fixture(scope="session")
def helpers() -> ModuleType:
    """This module, for tests that need its plain functions (importlib import mode)."""
    return sys.modules[__name__]
