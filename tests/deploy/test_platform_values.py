"""Values a platform team sets: the Ingress certificate, image registry and pull Secrets (also
from an umbrella chart's `global`), the cluster DNS the NetworkPolicies allow, the runbook URL."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from .conftest import API_VERSION_ARGS, KUBE_NEWEST, REQUIRED

INGRESS = ("--set", "ingress.enabled=true", "--set", "ingress.host=api.shop.example")


def _template(helm: Any, helpers: Any, *args: str, check: bool = True) -> Any:
    return helm(
        "template", helpers.RELEASE, str(helpers.CHART), "--namespace", helpers.NAMESPACE,
        "--kube-version", KUBE_NEWEST, *REQUIRED, *API_VERSION_ARGS, *args, check=check,
    )  # fmt: skip


def _documents(result: Any) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if doc]


# The Ingress certificate -------------------------------------------------------------------------


def test_ingress_tls_without_a_certificate_source_is_refused(helm: Any, helpers: Any) -> None:
    """TLS on, no existing Secret and no cert-manager issuer: nothing would create the Secret."""
    refused = _template(helm, helpers, *INGRESS, check=False)
    assert refused.returncode != 0
    assert "ingress.tls.enabled needs a certificate" in refused.stderr
    assert "ingress.tls.secretName" in refused.stderr
    assert "certManager.issuerRef.name" in refused.stderr


@pytest.mark.parametrize(
    ("args", "secret", "issuer"),
    [
        (["--set", "ingress.tls.secretName=api-tls"], "api-tls", None),
        (["--set", "certManager.issuerRef.name=letsencrypt"], "shop-mercato-ingress-tls",
         "letsencrypt"),
        (["--set", "certManager.issuerRef.name=le", "--set", "ingress.tls.secretName=api-tls"],
         "api-tls", "le"),
    ],
)  # fmt: skip
def test_ingress_tls_from_an_existing_secret_or_an_issuer(
    helm: Any, helpers: Any, args: list[str], secret: str, issuer: str | None
) -> None:
    (ingress,) = [
        d for d in _documents(_template(helm, helpers, *INGRESS, *args)) if d["kind"] == "Ingress"
    ]
    assert ingress["spec"]["tls"] == [{"hosts": ["api.shop.example"], "secretName": secret}]
    annotations = ingress["metadata"].get("annotations", {})
    assert annotations.get("cert-manager.io/cluster-issuer") == issuer


def test_ingress_without_tls_or_host(helm: Any, helpers: Any) -> None:
    plain = _documents(_template(helm, helpers, *INGRESS, "--set", "ingress.tls.enabled=false"))
    (ingress,) = [d for d in plain if d["kind"] == "Ingress"]
    assert "tls" not in ingress["spec"]
    refused = _template(
        helm, helpers, "--set", "ingress.enabled=true", "--set", "ingress.tls.enabled=false",
        check=False,
    )  # fmt: skip
    assert "ingress.host is required" in refused.stderr


# Images -------------------------------------------------------------------------------------------


def _images(documents: list[dict[str, Any]]) -> set[str]:
    images = set()
    for doc in documents:
        spec = (
            doc["spec"]["template"]["spec"]
            if doc["kind"] in ("Deployment", "Job")
            else (doc["spec"] if doc["kind"] == "Pod" else None)
        )
        if spec:
            images |= {c["image"] for c in spec["containers"]}
    return images


def _pull_secrets(documents: list[dict[str, Any]]) -> set[tuple[str, ...]]:
    found = set()
    for doc in documents:
        spec = (
            doc["spec"]["template"]["spec"]
            if doc["kind"] in ("Deployment", "Job")
            else (doc["spec"] if doc["kind"] == "Pod" else None)
        )
        if spec:
            found.add(tuple(s["name"] for s in spec.get("imagePullSecrets", [])))
    return found


def test_images_default_to_the_app_version(helm: Any, helpers: Any) -> None:
    app_version = yaml.load((helpers.CHART / "Chart.yaml").read_text(), Loader=yaml.CSafeLoader)[
        "appVersion"
    ]
    images = _images(_documents(_template(helm, helpers)))
    assert images == {f"mercato-{c}:{app_version}" for c in helpers.COMPONENTS}


def test_global_registry_and_pull_secrets_win(helm: Any, helpers: Any) -> None:
    documents = _documents(
        _template(
            helm, helpers,
            "--set", "image.registry=registry.example.com/mercato",
            "--set", "global.imageRegistry=mirror.example.com:5000/umbrella",
            "--set-json", 'global.imagePullSecrets=["umbrella-pull", {"name": "mirror-pull"}]',
            "--set-json", 'imagePullSecrets=[{"name": "chart-pull"}, "umbrella-pull"]',
            # An umbrella chart's own globals pass the schema.
            "--set", "global.storageClass=fast",
        )
    )  # fmt: skip
    assert {image.rsplit("/", 1)[0] for image in _images(documents)} == {
        "mirror.example.com:5000/umbrella"
    }
    assert _pull_secrets(documents) == {("umbrella-pull", "mirror-pull", "chart-pull")}


def test_chart_registry_without_global(helm: Any, helpers: Any) -> None:
    documents = _documents(_template(helm, helpers, "--set", "image.registry=reg.example.com"))
    assert all(image.startswith("reg.example.com/mercato-") for image in _images(documents))
    assert _pull_secrets(documents) == {()}


# DNS egress ------------------------------------------------------------------------------------


def _dns_rules(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first egress rule of every NetworkPolicy (the DNS one), hooks and tests included."""
    policies = [doc for doc in documents if doc["kind"] == "NetworkPolicy"]
    assert len(policies) == 7  # five components, the hook Jobs, the test Pods
    return [policy["spec"]["egress"][0] for policy in policies]


def test_dns_defaults_to_kube_dns(render: Any) -> None:
    for rule in _dns_rules(render("default")):
        assert rule["to"] == [
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
        ]
        assert rule["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


def test_dns_node_local_cache(render: Any) -> None:
    """NodeLocal DNSCache: pods ask the link-local address of the node's cache (the kube-dns
    pods stay as a fallback)."""
    peers = [
        {"ipBlock": {"cidr": "169.254.20.10/32"}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}},
    ]
    documents = render("default", "--set-json", f"networkPolicy.dnsPeers={json.dumps(peers)}")
    for rule in _dns_rules(documents):
        assert rule["to"] == peers


def test_dns_openshift(render: Any) -> None:
    """OpenShift: the DNS operator's pods, which listen on 5353 (a NetworkPolicy sees the port
    after the Service's translation)."""
    peers = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openshift-dns"}},
            "podSelector": {"matchLabels": {"dns.operator.openshift.io/daemonset-dns": "default"}},
        }
    ]
    documents = render(
        "default",
        "--set-json", f"networkPolicy.dnsPeers={json.dumps(peers)}",
        "--set-json", "networkPolicy.dnsPorts=[5353]",
    )  # fmt: skip
    for rule in _dns_rules(documents):
        assert rule["to"] == peers
        assert rule["ports"] == [
            {"port": 5353, "protocol": "UDP"},
            {"port": 5353, "protocol": "TCP"},
        ]


# Runbooks --------------------------------------------------------------------------------------


def test_runbook_urls_are_absolute_by_default(render: Any, helpers: Any) -> None:
    """Each alert links to its runbook on the project's published docs (Chart.yaml home), the
    page it names being a file of docs/runbooks/ (test_alerts.py checks each one exists)."""
    chart = yaml.load((helpers.CHART / "Chart.yaml").read_text(), Loader=yaml.CSafeLoader)
    values = yaml.load((helpers.CHART / "values.yaml").read_text(), Loader=yaml.CSafeLoader)
    base = values["prometheusRule"]["runbookBaseUrl"]
    assert base == f"{chart['home']}/blob/main/docs/runbooks"
    (rule,) = [d for d in render("default") if d["kind"] == "PrometheusRule"]
    urls = {
        r["annotations"]["runbook_url"]
        for group in rule["spec"]["groups"]
        for r in group["rules"]
        if "alert" in r
    }
    assert urls
    for url in urls:
        assert url.startswith(f"{base}/"), url
        assert (helpers.ROOT / "docs" / "runbooks" / url.removeprefix(f"{base}/")).is_file()


def test_runbook_base_url_trailing_slash(render: Any) -> None:
    documents = render("default", "--set", "prometheusRule.runbookBaseUrl=https://wiki.example/rb/")
    (rule,) = [d for d in documents if d["kind"] == "PrometheusRule"]
    text = json.dumps(rule)
    assert "https://wiki.example/rb/" in text
    assert "https://wiki.example/rb//" not in text
