"""The chart on a real API server: every values set of `ci/` installed with `--wait` into a
namespace enforcing the `restricted` Pod Security Standard, with zero API-server warnings and
its hooks in their declared order; then upgraded (one service's values changed rolls only its
Deployment), rolled back and uninstalled (nothing left but what the chart keeps). Values the
schema refuses never reach the cluster.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import yaml
from kubernetes import client

from .conftest import (
    CHART,
    HELM_TIMEOUT,
    RELEASE,
    VALUES_SETS,
    Helm,
    JobEvent,
    JobWatcher,
    deployment_state,
    leftovers,
)

#: The service whose values the upgrade changes; the other Deployments must not roll.
CHANGED_SERVICE = "catalog"
#: The annotation by which the chart keeps a resource on uninstall (docs/deploy.md).
KEEP = "helm.sh/resource-policy"


def values_args(values_set: str) -> list[str]:
    return ["-f", str(CHART / "ci" / f"{values_set}-values.yaml")]


def install_args(namespace: str, values_set: str) -> list[str]:
    return [
        "install", RELEASE, str(CHART),
        "--namespace", namespace,
        *values_args(values_set),
        "--wait", "--timeout", HELM_TIMEOUT,
    ]  # fmt: skip


# What the cluster says -------------------------------------------------------------------------


def settle_autoscalers(api: client.ApiClient, namespace: str, timeout: float = 60) -> None:
    """Wait until each HorizontalPodAutoscaler has brought its Deployment to its minimum
    (the chart leaves `replicas` to the autoscaler, which raises it on its first sync): that
    scale bumps the Deployment's generation, and must not be taken for a roll."""
    autoscaling, apps = client.AutoscalingV2Api(api), client.AppsV1Api(api)
    deadline = time.monotonic() + timeout
    for autoscaler in autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items:
        target = autoscaler.spec.scale_target_ref.name
        while True:
            replicas = apps.read_namespaced_deployment(target, namespace).spec.replicas or 0
            if replicas >= (autoscaler.spec.min_replicas or 1):
                break
            assert time.monotonic() < deadline, f"{target} not scaled to its minimum"
            time.sleep(0.5)


def config_checksum(api: client.ApiClient, namespace: str, deployment: str) -> str:
    """The checksum of its ConfigMap that a Deployment's pod template carries."""
    read = client.AppsV1Api(api).read_namespaced_deployment(deployment, namespace)
    return read.spec.template.metadata.annotations["checksum/config"]


def hook_jobs(helm: Helm, namespace: str, revision: int, event: str) -> dict[str, int]:
    """The hook Jobs a revision declares for ``event`` (pre-install, pre-upgrade), by name,
    with their weight."""
    hooks = helm("get", "hooks", RELEASE, "--namespace", namespace, "--revision", str(revision))
    jobs = {}
    for document in yaml.load_all(hooks.stdout, Loader=yaml.CSafeLoader):
        if not document or document["kind"] != "Job":
            continue
        annotations = document["metadata"].get("annotations", {})
        if event in annotations.get("helm.sh/hook", "").split(","):
            jobs[document["metadata"]["name"]] = int(annotations.get("helm.sh/hook-weight", "0"))
    return jobs


def assert_hooks_in_order(events: list[JobEvent], declared: dict[str, int]) -> None:
    """Each declared hook Job ran to completion, and each was created only after the one
    before it (in weight order) had completed."""
    created_at: dict[str, int] = {}
    completed_at: dict[str, int] = {}
    first: dict[str, JobEvent] = {}
    done: dict[str, JobEvent] = {}
    for index, event in enumerate(events):
        if event.kind == "ADDED" and event.name not in created_at:
            created_at[event.name] = index
            first[event.name] = event
        if event.complete and event.name not in completed_at:
            completed_at[event.name] = index
            done[event.name] = event
    assert set(created_at) == set(declared), (
        f"hook Jobs seen {sorted(created_at)}, declared {sorted(declared)}"
    )
    assert set(completed_at) == set(declared), f"not completed: {set(declared) - set(completed_at)}"
    order = sorted(created_at, key=created_at.__getitem__)
    weights = [declared[name] for name in order]
    assert weights == sorted(weights), f"hooks created out of weight order: {order} {weights}"
    for before, after in itertools.pairwise(order):
        assert completed_at[before] < created_at[after], f"{after} started before {before} ended"
        # The same from the objects' own timestamps (one-second resolution).
        assert first[after].created >= done[before].completed, (before, after)


def release_objects(helm: Helm, namespace: str) -> list[dict[str, Any]]:
    manifest = helm("get", "manifest", RELEASE, "--namespace", namespace).stdout
    return [document for document in yaml.load_all(manifest, Loader=yaml.CSafeLoader) if document]


#: What a ServiceAccount of the chart must not be able to do: the services never call the
#: Kubernetes API (no token is mounted), so none of them is granted anything; a Role added
#: for a real need belongs in NEEDED with a test of its own.
FORBIDDEN = [
    # (verb, group, resource, subresource, namespaced)
    ("get", "", "secrets", "", True),
    ("list", "", "secrets", "", True),
    ("watch", "", "secrets", "", True),
    ("list", "", "configmaps", "", True),
    ("create", "", "pods", "", True),
    ("create", "", "pods", "exec", True),
    ("create", "", "serviceaccounts", "token", True),
    ("patch", "apps", "deployments", "", True),
    ("delete", "batch", "jobs", "", True),
    ("*", "*", "*", "", True),
    ("list", "", "nodes", "", False),
    ("list", "", "namespaces", "", False),
]
#: Permissions a component's ServiceAccount needs, by component (none today).
NEEDED: dict[str, list[tuple[str, str, str, str, bool]]] = {}


def service_accounts(objects: list[dict[str, Any]], hooks: list[dict[str, Any]]) -> list[str]:
    """The ServiceAccounts the release creates (its hooks' included)."""
    return sorted(
        {o["metadata"]["name"] for o in [*objects, *hooks] if o["kind"] == "ServiceAccount"}
    )


def allowed(
    api: client.ApiClient, namespace: str, account: str, check: tuple[str, str, str, str, bool]
) -> bool:
    """SubjectAccessReview: may ``account`` (with the groups every ServiceAccount of the
    namespace has) do ``check``?"""
    verb, group, resource, subresource, namespaced = check
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{namespace}:{account}",
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                group=group,
                resource=resource,
                subresource=subresource or None,
                namespace=namespace if namespaced else None,
            ),
        )
    )
    answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
    return bool(answer.status.allowed)


def assert_least_privilege(
    api: client.ApiClient, helm: Helm, namespace: str, objects: list[dict[str, Any]]
) -> None:
    """Every ServiceAccount of the release can do what its component needs and nothing of
    FORBIDDEN; every pod runs as its component's own account, without an API token."""
    hooks = [
        document
        for document in yaml.load_all(
            helm("get", "hooks", RELEASE, "--namespace", namespace).stdout, Loader=yaml.CSafeLoader
        )
        if document
    ]
    accounts = service_accounts(objects, hooks)
    assert accounts, "the release creates no ServiceAccount"
    granted = {
        (account, check): allowed(api, namespace, account, check)
        for account in accounts
        for check in FORBIDDEN
    }
    assert [key for key, yes in granted.items() if yes] == []
    for component, needs in NEEDED.items():
        account = f"{RELEASE}-mercato-{component}"
        assert all(allowed(api, namespace, account, need) for need in needs), component
    for deployment in client.AppsV1Api(api).list_namespaced_deployment(namespace).items:
        pod = deployment.spec.template.spec
        assert pod.service_account_name == deployment.metadata.name, deployment.metadata.name
        assert pod.automount_service_account_token is False, deployment.metadata.name


def skip_without_its_crds(
    helm: Helm, namespace: str, values_set: str, absent_crd_groups: dict[str, list[str]]
) -> None:
    """Skip, by name, a values set that needs an operator whose CRDs could not be had here: the
    chart itself refuses it at render on this cluster, naming the APIs it lacks."""
    if not absent_crd_groups:
        return
    probe = helm(*install_args(namespace, values_set), "--dry-run=server", check=False)
    lacking = sorted(group for group in absent_crd_groups if f"{group}/" in probe.stderr)
    if probe.returncode != 0 and lacking:
        files = [name for group in lacking for name in absent_crd_groups[group]]
        pytest.skip(f"{values_set}: CRDs not available here (tools/crds.py): {', '.join(files)}")


# The tests -------------------------------------------------------------------------------------


@pytest.mark.timeout(600)  # four Helm steps, each allowed HELM_TIMEOUT
@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_values_set_lifecycle(
    values_set: str,
    namespace: str,
    api: client.ApiClient,
    helm: Helm,
    crds: list[str],
    absent_crd_groups: dict[str, list[str]],
) -> None:
    skip_without_its_crds(helm, namespace, values_set, absent_crd_groups)
    # Install: admitted as `restricted`, no warning, hooks in their declared order.
    with JobWatcher(api, namespace) as watcher:
        installed = helm(*install_args(namespace, values_set))
    assert installed.warnings() == [], installed.stderr
    assert_hooks_in_order(watcher.events, hook_jobs(helm, namespace, 1, "pre-install"))
    settle_autoscalers(api, namespace)
    before = deployment_state(api, namespace)
    assert before, "no Deployment installed"
    changed = f"{RELEASE}-mercato-{CHANGED_SERVICE}"
    assert changed in before, sorted(before)
    assert_least_privilege(api, helm, namespace, release_objects(helm, namespace))
    checksum_before = config_checksum(api, namespace, changed)

    # Upgrade: one service's values change; only its Deployment rolls.
    with JobWatcher(api, namespace) as watcher:
        upgraded = helm(
            "upgrade", RELEASE, str(CHART),
            "--namespace", namespace,
            *values_args(values_set),
            "--set", f"components.{CHANGED_SERVICE}.env.MERCATO_CATALOG_LOG_LEVEL=DEBUG",
            "--wait", "--timeout", HELM_TIMEOUT,
        )  # fmt: skip
    assert upgraded.warnings() == [], upgraded.stderr
    assert_hooks_in_order(watcher.events, hook_jobs(helm, namespace, 2, "pre-upgrade"))
    after = deployment_state(api, namespace)
    assert after.keys() == before.keys()
    assert after[changed][0] > before[changed][0], "the changed Deployment kept its generation"
    assert after[changed][1] != before[changed][1], "the changed Deployment kept its pods"
    # It rolled because the ConfigMap it reads changed: the pod template carries its checksum.
    config = client.CoreV1Api(api).read_namespaced_config_map(changed, namespace).data
    assert config["MERCATO_CATALOG_LOG_LEVEL"] == "DEBUG", config
    assert config_checksum(api, namespace, changed) != checksum_before
    unchanged = {name: state for name, state in before.items() if name != changed}
    assert {name: after[name] for name in unchanged} == unchanged, "other Deployments rolled"

    # Rollback: revision 3 is revision 1 again, down to the pod templates.
    rolled = helm(
        "rollback", RELEASE, "1", "--namespace", namespace, "--wait", "--timeout", HELM_TIMEOUT
    )
    assert rolled.warnings() == [], rolled.stderr
    history = helm("history", RELEASE, "--namespace", namespace, "-o", "yaml").stdout
    last = yaml.load(history, Loader=yaml.CSafeLoader)[-1]
    assert (last["revision"], last["status"]) == (3, "deployed"), last
    rolled_back = deployment_state(api, namespace)
    assert {name: state[1] for name, state in rolled_back.items()} == {
        name: state[1] for name, state in before.items()
    }
    values = [helm("get", "values", RELEASE, "-n", namespace, "--revision", r).stdout for r in "13"]
    assert values[0] == values[1]

    # Uninstall: nothing left but what the chart documents as kept.
    objects = release_objects(helm, namespace)
    kept = {
        f"{o['kind']}/{o['metadata']['name']}"
        for o in objects
        if (o["metadata"].get("annotations") or {}).get(KEEP) == "keep"
    }
    uninstalled = helm(
        "uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", HELM_TIMEOUT
    )
    assert uninstalled.warnings() == [], uninstalled.stderr
    remaining: list[str] = []
    for _ in range(100):  # the garbage collector removes ReplicaSets and Pods shortly after
        remaining = leftovers(api, namespace, objects)
        if set(remaining) <= kept:
            break
        time.sleep(0.3)
    assert sorted(set(remaining) - kept) == []
    assert set(remaining) == kept, "a resource marked as kept was deleted"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        # An unknown key (a typo of replicaCount).
        (["--set", f"components.{CHANGED_SERVICE}.replicaCuont=2"], "replicaCuont"),
        # A wrong type: a string where the schema wants an integer.
        (["--set-string", f"components.{CHANGED_SERVICE}.replicaCount=two"], "replicaCount"),
    ],
    ids=["unknown-key", "wrong-type"],
)
def test_schema_refuses_bad_values_before_the_cluster(
    setting: list[str], message: str, namespace: str, api: client.ApiClient, helm: Helm
) -> None:
    refused = helm(*install_args(namespace, "default"), *setting, check=False)
    assert refused.returncode != 0
    assert "values don't meet the specifications of the schema" in refused.stderr, refused.stderr
    assert message in refused.stderr
    # Nothing reached the cluster: no release record, no object of the chart.
    core = client.CoreV1Api(api)
    secrets = core.list_namespaced_secret(namespace, label_selector="owner=helm").items
    assert secrets == []
    for listing in (
        client.AppsV1Api(api).list_namespaced_deployment,
        core.list_namespaced_service,
        core.list_namespaced_service_account,
    ):
        names = [item.metadata.name for item in listing(namespace).items]
        assert [name for name in names if name != "default"] == []


def test_fake_nodes_span_two_zones(api: client.ApiClient) -> None:
    nodes = client.CoreV1Api(api).list_node().items
    ready = [
        node
        for node in nodes
        if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    ]
    zones = {node.metadata.labels.get("topology.kubernetes.io/zone") for node in ready}
    assert len(ready) >= 4, [node.metadata.name for node in ready]
    assert len(zones) == 2, zones


def test_fake_nodes_renew_their_leases(api: client.ApiClient) -> None:
    """Each fake node heartbeats through its Lease, as a kubelet does: without it the node
    lifecycle controller takes the nodes for lost and marks their pods not Ready mid-test."""
    leases = client.CoordinationV1Api(api).list_namespaced_lease("kube-node-lease").items
    renewed = {lease.metadata.name: lease for lease in leases}
    now = time.time()
    for node in client.CoreV1Api(api).list_node().items:
        lease = renewed.get(node.metadata.name)
        assert lease is not None, f"node {node.metadata.name} has no Lease"
        age = now - lease.spec.renew_time.timestamp()
        assert age < lease.spec.lease_duration_seconds, (node.metadata.name, age)
