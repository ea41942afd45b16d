"""The hook Jobs (migrations, topics) run before the release's own resources exist: their
ServiceAccount and NetworkPolicy are hooks of the same events with a lower weight, and every
hook is deleted once its event succeeded (nothing of them is left after an install)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from .conftest import API_VERSION_ARGS, KUBE_NEWEST, REQUIRED, VALUES_SETS

HOOK = "helm.sh/hook"
WEIGHT = "helm.sh/hook-weight"
DELETE = "helm.sh/hook-delete-policy"


def _hooks(documents: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [
        doc
        for doc in documents
        if event in (doc["metadata"].get("annotations") or {}).get(HOOK, "").split(",")
    ]


def _weight(doc: dict[str, Any]) -> int:
    return int(doc["metadata"]["annotations"].get(WEIGHT, "0"))


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("values_set", VALUES_SETS)
@pytest.mark.parametrize("event", ["pre-install", "pre-upgrade"])
def test_jobs_come_after_their_account_and_network_policy(
    render: Any, helpers: Any, values_set: str, event: str
) -> None:
    hooks = _hooks(render(values_set), event)
    jobs = [doc for doc in hooks if doc["kind"] == "Job"]
    if not jobs:
        assert hooks == [], f"{event}: hooks without a Job: {[d['kind'] for d in hooks]}"
        return
    accounts = [doc for doc in hooks if doc["kind"] == "ServiceAccount"]
    policies = [doc for doc in hooks if doc["kind"] == "NetworkPolicy"]
    assert [a["metadata"]["name"] for a in accounts] == ["shop-mercato-hooks"]
    assert [p["metadata"]["name"] for p in policies] == ["shop-mercato-hooks"]
    (account,) = accounts
    (policy,) = policies
    first_job = min(_weight(job) for job in jobs)
    assert _weight(account) < _weight(policy) < first_job
    assert account["automountServiceAccountToken"] is False
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for job in jobs:
        pod = job["spec"]["template"]
        assert pod["spec"]["serviceAccountName"] == "shop-mercato-hooks", job["metadata"]["name"]
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert _matches(selector, pod["metadata"]["labels"]), job["metadata"]["name"]
    # The NetworkPolicy selects no pod of the services.
    for deployment in helpers.by_kind(render(values_set), "Deployment").values():
        assert not _matches(selector, deployment["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_no_hook_leaks(render: Any, values_set: str) -> None:
    """Every hook is replaced by its next run (before-hook-creation) and deleted once its event
    succeeded (hook-succeeded): after an install nothing of the hooks is left, and `helm
    uninstall` (which deletes no hook) leaves nothing behind."""
    for doc in render(values_set):
        annotations = doc["metadata"].get("annotations") or {}
        if HOOK in annotations:
            policies = set(annotations.get(DELETE, "").split(","))
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            assert {"before-hook-creation", "hook-succeeded"} <= policies, name


def test_hook_network_policy_egress(render: Any, helpers: Any) -> None:
    """Only DNS, the migrating components' databases and (for the topic Job) Kafka."""
    policy = helpers.by_kind(_hooks(render("default"), "pre-install"), "NetworkPolicy")[
        "shop-mercato-hooks"
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == []
    ports = sorted(p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"])
    assert ports == [53, 53, 5432, 9092, 27017]
    # No regular (non-hook) NetworkPolicy is left for the Jobs.
    for other in helpers.by_kind(render("default"), "NetworkPolicy").values():
        labels = other["spec"]["podSelector"].get("matchLabels", {})
        assert "mercato.io/job" not in labels or HOOK in other["metadata"]["annotations"]


def test_hook_network_policy_with_operator_databases(render: Any, helpers: Any) -> None:
    """With CloudNativePG and MongoDB run by operators, the Jobs (before upgrades only) reach
    those pods; without a topic Job (KafkaTopics instead), no Kafka."""
    hooks = _hooks(render("operators"), "pre-upgrade")
    assert _hooks(render("operators"), "pre-install") == []
    policy = helpers.by_kind(hooks, "NetworkPolicy")["shop-mercato-hooks"]
    peers = [peer for rule in policy["spec"]["egress"] for peer in rule.get("to", [])]
    clusters = {
        peer["podSelector"]["matchLabels"].get("cnpg.io/cluster")
        for peer in peers
        if "podSelector" in peer
    }
    assert {"shop-mercato-auth-db", "shop-mercato-orders-db"} <= clusters
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert 9092 not in ports


def test_hook_account_annotations(render: Any, helpers: Any) -> None:
    documents = render("default", "--set", "migrations.serviceAccount.annotations.a\\.b/c=d")
    account = helpers.by_kind(_hooks(documents, "pre-install"), "ServiceAccount")[
        "shop-mercato-hooks"
    ]
    assert account["metadata"]["annotations"]["a.b/c"] == "d"
    assert account["metadata"]["annotations"][HOOK] == "pre-install,pre-upgrade"


def test_no_hook_without_jobs(helm: Any, helpers: Any) -> None:
    args = [f"components.{c}.migration.enabled=false" for c in helpers.COMPONENTS]
    result = helm(
        "template", "x", str(helpers.CHART), "--kube-version", KUBE_NEWEST,
        *REQUIRED, *API_VERSION_ARGS, "--set", ",".join(args),
        "--set", "kafka.topics.create=false", "--set", "tests.enabled=false",
    )  # fmt: skip
    documents = [doc for doc in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if doc]
    assert [d for d in documents if HOOK in (d["metadata"].get("annotations") or {})] == []
