"""The Ansible playbooks of deploy/ansible on the local control plane (`make test-iac`).

In order, in a namespace that does not exist before: site.yml from nothing (namespace, Secrets,
release, every Deployment available); again with nothing changed (changed=0); `--check --diff`
with one value changed (the diff names that value only, nothing changes); that value changed for
real (only its Deployment rolls); a hand-scaled Deployment reported and put back; rotate.yml (a
new key-encryption key with the old one kept; a new client secret in both Secrets; auth rolled
with both secrets, then orders, then auth with the new one only); teardown.yml (nothing of the
release left but the Secrets and namespace it keeps), and with purge=true (the namespace gone).
An environment without its store URLs is refused before anything reaches the cluster.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from ..conftest import ROOT, Helm, crd_folder, deployment_state, leftovers, load_tool

PLAYBOOKS = ROOT / "deploy" / "ansible"
LOCAL_VARS = PLAYBOOKS / "inventories" / "local" / "group_vars" / "mercato.yml"
RELEASE = "mercato"
NAMESPACE = "iac-mercato"
#: The Secrets site.yml writes, by key (docs/deploy.md, "Secrets to create first").
SECRETS = {
    "mercato-auth-db": {"url"},
    "mercato-orders-db": {"url"},
    "mercato-catalog-mongodb": {"url"},
    "mercato-analytics-mongodb": {"url"},
    "mercato-auth-signing": {"kek", "previous_keks"},
    "mercato-auth-service-clients": {"clients.json"},
    "mercato-orders-service-client": {"secret"},
}
RECAP = re.compile(
    r"^localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


class Run:
    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.returncode, self.output = done.returncode, done.stdout + done.stderr
        recap = RECAP.search(self.output)
        self.changed = int(recap.group(2)) if recap else -1
        self.failed = int(recap.group(4)) if recap else -1


@pytest.fixture(scope="module")
def playbook(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Run a playbook of deploy/ansible with the local inventory, in NAMESPACE, with the pinned
    helm; ``values`` replaces mercato_values (written to an extra-vars file)."""
    helm_binary = load_tool("helm").ensure_helm()
    folder = tmp_path_factory.mktemp("ansible")
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "LC_ALL": "C.UTF-8",  # ansible-core refuses any other locale encoding
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(folder / "tmp"),
        "HELM_CACHE_HOME": str(ROOT / ".state" / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(ROOT / ".state" / "helm" / "config"),
        "HELM_DATA_HOME": str(ROOT / ".state" / "helm" / "data"),
        "KUBECACHEDIR": str(ROOT / ".state" / "k8s" / "kube-cache"),
    }

    def run(name: str, *args: str, values: dict[str, Any] | None = None, **extra: Any) -> Run:
        extra_vars: dict[str, Any] = {
            "mercato_namespace": NAMESPACE,
            "mercato_helm_binary": str(helm_binary),
            **extra,
        }
        if values is not None:
            extra_vars["mercato_values"] = values
        vars_file = folder / "extra-vars.json"
        vars_file.write_text(json.dumps(extra_vars))
        command = [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i", "inventories/local", name, "-e", f"@{vars_file}", *args,
        ]  # fmt: skip
        done = subprocess.run(
            command, cwd=PLAYBOOKS, env=env, capture_output=True, text=True, timeout=600
        )
        print(f"ansible-playbook {name} {' '.join(args)}: rc {done.returncode}", file=sys.stderr)
        return Run(done)

    yield run
    run("teardown.yml", purge=True)


def local_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.load(LOCAL_VARS.read_text(), Loader=yaml.CSafeLoader)[
        "mercato_values"
    ]
    return values


def secret_data(api: client.ApiClient, name: str) -> dict[str, str]:
    secret = client.CoreV1Api(api).read_namespaced_secret(name, NAMESPACE)
    return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}


def template_hashes(api: client.ApiClient) -> dict[str, str]:
    return {name: state[1] for name, state in deployment_state(api, NAMESPACE).items()}


def revisions(api: client.ApiClient) -> dict[str, int]:
    """Each Deployment's rollout revision (one more per roll)."""
    return {
        d.metadata.name: int(d.metadata.annotations["deployment.kubernetes.io/revision"])
        for d in client.AppsV1Api(api).list_namespaced_deployment(NAMESPACE).items
    }


def assert_ok(run: Run) -> None:
    assert run.returncode == 0, run.output[-6000:]
    assert run.failed == 0, run.output[-6000:]


def test_refuses_an_environment_without_its_store_urls(
    playbook: Any, api: client.ApiClient
) -> None:
    urls = {"auth": "", "orders": "", "catalog": "mongodb://c", "analytics": "mongodb://a"}
    run = playbook("site.yml", mercato_database_urls=urls)
    assert run.returncode != 0
    assert "mercato_database_urls lacks auth, orders" in run.output
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(api).read_namespace(NAMESPACE)
    assert refused.value.status == 404


def test_site_from_an_empty_namespace(playbook: Any, api: client.ApiClient, helm: Helm) -> None:
    # The operators' CRDs too, as an environment on a cluster without them asks for.
    folder = crd_folder()
    run = playbook("site.yml", **({"mercato_crds_dir": str(folder)} if folder else {}))
    assert_ok(run)
    if folder is not None:
        extensions = client.ApiextensionsV1Api(api)
        for path in sorted(folder.glob("*.yaml")):
            name = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)["metadata"]["name"]
            extensions.read_custom_resource_definition(name, _preload_content=False)
    labels = client.CoreV1Api(api).read_namespace(NAMESPACE).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    status = json.loads(helm("status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    for name, keys in SECRETS.items():
        assert set(secret_data(api, name)) == keys, name
    kek = secret_data(api, "mercato-auth-signing")["kek"]
    assert len(base64.b64decode(kek)) == 32
    clients = json.loads(secret_data(api, "mercato-auth-service-clients")["clients.json"])
    client_secret = secret_data(api, "mercato-orders-service-client")["secret"]
    assert clients == [
        {"client_id": "orders", "secret": client_secret, "scopes": ["catalog:reserve"]}
    ]
    assert len(client_secret) >= 16
    deployments = client.AppsV1Api(api).list_namespaced_deployment(NAMESPACE).items
    assert {d.metadata.name for d in deployments} == {
        f"mercato-{name}" for name in ("auth", "catalog", "orders", "analytics", "gateway")
    }
    for deployment in deployments:
        assert deployment.status.available_replicas == deployment.spec.replicas == 1
    # The secrets never reach the output.
    assert kek not in run.output
    assert client_secret not in run.output


def test_second_run_changes_nothing(playbook: Any, api: client.ApiClient) -> None:
    kek = secret_data(api, "mercato-auth-signing")["kek"]
    run = playbook("site.yml")
    assert_ok(run)
    assert run.changed == 0, run.output[-6000:]
    assert secret_data(api, "mercato-auth-signing")["kek"] == kek


def test_check_diff_shows_exactly_the_changed_value(
    playbook: Any, api: client.ApiClient, helm: Helm
) -> None:
    values = local_values()
    values["config"]["logLevel"] = "DEBUG"
    revision = json.loads(helm("status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)["version"]
    before = template_hashes(api)
    run = playbook("site.yml", "--check", "--diff", values=values)
    assert_ok(run)
    changed_lines = [line for line in run.output.splitlines() if re.match(r"^[-+]\s+\"", line)]
    assert changed_lines == ['-        "logLevel": "INFO",', '+        "logLevel": "DEBUG",'], (
        run.output[-6000:]
    )
    assert "changed: [localhost]" in run.output
    after = json.loads(helm("status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)["version"]
    assert after == revision
    assert template_hashes(api) == before


def test_one_changed_value_rolls_only_its_deployment(playbook: Any, api: client.ApiClient) -> None:
    values = local_values()
    values["components"] = {"catalog": {"env": {"MERCATO_CATALOG_CACHE_TTL_SECONDS": "30"}}}
    before = template_hashes(api)
    assert_ok(playbook("site.yml", values=values))
    after = template_hashes(api)
    assert {name for name in before if before[name] != after[name]} == {"mercato-catalog"}
    # Back to the inventory's values for the next steps.
    assert_ok(playbook("site.yml"))


def test_stripe_needs_its_secrets_and_rolls_only_orders(
    playbook: Any, api: client.ApiClient
) -> None:
    values = local_values()
    values["payments"] = {"provider": "stripe", "stripe": {"existingSecret": "mercato-stripe"}}
    refused = playbook("site.yml", values=values)
    assert refused.returncode != 0
    assert "payments.provider is stripe: give mercato_stripe.api_key" in refused.output

    before = template_hashes(api)
    keys = {"api_key": "rk_test_iac_0123456789", "webhook_secret": "whsec_iac_0123456789"}
    run = playbook("site.yml", values=values, mercato_stripe=keys)
    assert_ok(run)
    assert secret_data(api, "mercato-stripe") == {
        "api-key": keys["api_key"],
        "webhook-secret": keys["webhook_secret"],
    }
    assert keys["api_key"] not in run.output
    assert keys["webhook_secret"] not in run.output
    after = template_hashes(api)
    assert {name for name in before if before[name] != after[name]} == {"mercato-orders"}
    # Back to the inventory's values for the next steps.
    assert_ok(playbook("site.yml"))


def test_hand_edited_deployment_is_reported_and_put_back(
    playbook: Any, api: client.ApiClient
) -> None:
    apps = client.AppsV1Api(api)
    apps.patch_namespaced_deployment_scale("mercato-gateway", NAMESPACE, {"spec": {"replicas": 3}})
    run = playbook("site.yml")
    assert_ok(run)
    assert "put back: mercato-gateway" in run.output, run.output[-6000:]
    assert run.changed == 1, run.output[-6000:]
    assert apps.read_namespaced_deployment("mercato-gateway", NAMESPACE).spec.replicas == 1


def test_rotate_keeps_the_old_key_and_rolls_auth_then_orders(
    playbook: Any, api: client.ApiClient
) -> None:
    old_kek = secret_data(api, "mercato-auth-signing")["kek"]
    old_client_secret = secret_data(api, "mercato-orders-service-client")["secret"]
    before = template_hashes(api)
    revisions_before = revisions(api)
    run = playbook("rotate.yml")
    assert_ok(run)
    signing = secret_data(api, "mercato-auth-signing")
    assert signing["kek"] != old_kek
    assert len(base64.b64decode(signing["kek"])) == 32
    assert signing["previous_keks"] == old_kek
    client_secret = secret_data(api, "mercato-orders-service-client")["secret"]
    assert client_secret != old_client_secret
    # The end state of the three steps: one secret again, the old one no longer accepted.
    clients = json.loads(secret_data(api, "mercato-auth-service-clients")["clients.json"])
    assert clients == [
        {"client_id": "orders", "secret": client_secret, "scopes": ["catalog:reserve"]}
    ]
    # auth rolled twice (accepting both secrets, then only the new one), orders once between.
    assert revisions(api) == {
        name: number + {"mercato-auth": 2, "mercato-orders": 1}.get(name, 0)
        for name, number in revisions_before.items()
    }
    after = template_hashes(api)
    assert {name for name in before if before[name] != after[name]} == {
        "mercato-auth",
        "mercato-orders",
    }
    assert old_kek not in run.output
    assert client_secret not in run.output
    # site.yml keeps what rotate.yml wrote.
    again = playbook("site.yml")
    assert_ok(again)
    assert again.changed == 0, again.output[-6000:]
    assert secret_data(api, "mercato-auth-signing") == signing


def test_teardown_keeps_secrets_and_purge_removes_everything(
    playbook: Any, api: client.ApiClient, helm: Helm
) -> None:
    objects = [
        document
        for document in yaml.load_all(
            helm("get", "manifest", RELEASE, "-n", NAMESPACE).stdout, Loader=yaml.CSafeLoader
        )
        if document
    ]
    assert_ok(playbook("teardown.yml"))
    assert helm("status", RELEASE, "-n", NAMESPACE, check=False).returncode != 0
    assert leftovers(api, NAMESPACE, objects) == []
    for name in SECRETS:
        secret_data(api, name)  # kept
    assert_ok(playbook("teardown.yml", purge=True))
    with pytest.raises(ApiException) as gone:
        client.CoreV1Api(api).read_namespace(NAMESPACE)
    assert gone.value.status == 404
