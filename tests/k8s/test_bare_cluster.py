"""The chart on a cluster that serves none of the operators' APIs (no CustomResourceDefinition
at all), installed exactly as the README's "Deploy to Kubernetes" section shows: it must
render no resource of a missing kind, and a feature that needs a missing operator must be
refused by name before anything reaches the cluster.
"""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from kubernetes import client

from .conftest import CHART, HELM_TIMEOUT, ROOT, Helm

#: The API groups every cluster serves (what the chart may create without an operator).
BUILT_IN_GROUPS = {
    "",
    "apps",
    "autoscaling",
    "batch",
    "networking.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
}


def readme_install() -> list[str]:
    """The arguments of the README's `helm install` (after `helm`), continuation lines joined."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploy to Kubernetes", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no shell block in the README's Deploy to Kubernetes section"
    commands = block.group(1).replace("\\\n", " ").splitlines()
    installs = [shlex.split(line) for line in commands if line.startswith("helm install")]
    assert len(installs) == 1, commands
    return installs[0][1:]


def in_namespace(arguments: list[str], namespace: str) -> list[str]:
    """The same arguments with the namespace replaced (the test's own, restricted one)."""
    replaced = list(arguments)
    for flag in ("-n", "--namespace"):
        if flag in replaced:
            replaced[replaced.index(flag) + 1] = namespace
    return replaced


def manifest_groups(helm: Helm, release: str, namespace: str) -> dict[str, str]:
    """Each object of the release (hooks included) with its API group."""
    groups = {}
    for what in ("manifest", "hooks"):
        text = helm("get", what, release, "--namespace", namespace).stdout
        for document in yaml.load_all(text, Loader=yaml.CSafeLoader):
            if document:
                group = document["apiVersion"].rpartition("/")[0]
                groups[f"{document['kind']}/{document['metadata']['name']}"] = group
    return groups


def test_readme_install_on_a_cluster_without_crds(
    bare_cluster: None, namespace: str, api: client.ApiClient, helm: Helm
) -> None:
    arguments = in_namespace(readme_install(), namespace)
    release = arguments[1]
    installed = helm(*arguments, "--timeout", HELM_TIMEOUT)
    assert installed.warnings() == [], installed.stderr
    groups = manifest_groups(helm, release, namespace)
    assert {name: g for name, g in groups.items() if g not in BUILT_IN_GROUPS} == {}
    deployments = client.AppsV1Api(api).list_namespaced_deployment(namespace).items
    assert len(deployments) == 5, [d.metadata.name for d in deployments]
    assert all(d.status.available_replicas for d in deployments)
    helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", HELM_TIMEOUT)


@pytest.mark.parametrize(
    ("values_set", "operators"),
    [("operators", ["CloudNativePG", "Strimzi", "MongoDB", "KEDA"])],
)
def test_a_feature_without_its_operator_is_refused_by_name(
    values_set: str,
    operators: list[str],
    bare_cluster: None,
    namespace: str,
    api: client.ApiClient,
    helm: Helm,
) -> None:
    refused = helm(
        "install", "shop", str(CHART),
        "--namespace", namespace,
        "-f", str(CHART / "ci" / f"{values_set}-values.yaml"),
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    # Every missing operator the values ask for is named, not only the first one met.
    missing = [operator for operator in operators if operator not in refused.stderr]
    assert missing == [], refused.stderr
    # Refused at render: no release record and no object reached the cluster.
    core = client.CoreV1Api(api)
    assert core.list_namespaced_secret(namespace, label_selector="owner=helm").items == []
    assert client.AppsV1Api(api).list_namespaced_deployment(namespace).items == []
