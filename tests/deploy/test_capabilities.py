"""Optional APIs: the chart renders an operator's resources only where the cluster serves them.

Monitoring (ServiceMonitor, PrometheusRule, CloudNativePG's PodMonitor), on by default, is left
out without a word but a line in the install notes; a feature the values ask for explicitly is
refused at render, naming every missing operator at once. `helm template` without
`--api-versions` is a cluster with no CRD at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import API_VERSION_ARGS, CRD_APIS, KUBE_NEWEST, REQUIRED, VALUES_SETS

#: API groups every cluster serves: what the chart may render with no operator at all.
BUILT_IN_GROUPS = {"", "apps", "autoscaling", "batch", "networking.k8s.io", "policy"}
MONITORING = {"ServiceMonitor", "PrometheusRule"}
#: The operators each values set of ci/ asks for (their names as the failure gives them).
OPERATORS = {
    "default": ["cert-manager"],  # the Ingress certificate from a cert-manager issuer
    "istio": ["Istio"],
    "linkerd": ["Linkerd", "Gateway API"],
    "operators": ["CloudNativePG", "Strimzi", "MongoDB", "KEDA"],
    "tls": ["Strimzi", "cert-manager"],
}


def _template(helm: Any, helpers: Any, *args: str, check: bool = True) -> Any:
    return helm(
        "template", helpers.RELEASE, str(helpers.CHART),
        "--namespace", helpers.NAMESPACE, "--kube-version", KUBE_NEWEST, *args,
        check=check,
    )  # fmt: skip


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(text, Loader=yaml.CSafeLoader) if doc]


def _group(doc: dict[str, Any]) -> str:
    return doc["apiVersion"].rpartition("/")[0]


def test_every_optional_api_is_a_crd_of_its_operator(
    crds_dir: Path | None, absent_crd_groups: dict[str, list[str]]
) -> None:
    """CRD_APIS (what the tests tell Helm the cluster serves) are real served CRD versions
    (those of groups whose CRDs could not be had here are left out, by name)."""
    if crds_dir is None:
        pytest.skip("no CRD directory (MERCATO_CRDS_DIR, ../shared/crds, tools/crds.py fetch)")
    served = set()
    for path in crds_dir.glob("*.yaml"):
        for crd in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
            if crd and crd.get("kind") == "CustomResourceDefinition":
                spec = crd["spec"]
                for version in spec["versions"]:
                    if version.get("served", True):
                        served.add(f"{spec['group']}/{version['name']}/{spec['names']['kind']}")
    checkable = {api for api in CRD_APIS if api.partition("/")[0] not in absent_crd_groups}
    assert sorted(checkable - served) == []


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_every_rendered_custom_resource_is_an_optional_api(render: Any, values_set: str) -> None:
    """Each custom resource the chart renders is in CRD_APIS, so the guards and the tests know
    it (a kind missing there would be rendered unguarded, or never tested)."""
    for doc in render(values_set):
        if _group(doc) not in BUILT_IN_GROUPS:
            assert f"{doc['apiVersion']}/{doc['kind']}" in CRD_APIS, doc["apiVersion"]


def test_a_cluster_without_crds_gets_no_custom_resource(helm: Any, helpers: Any) -> None:
    """The README's install (the required values only) on a cluster without any CRD: only
    built-in kinds, the monitoring left out."""
    documents = _documents(_template(helm, helpers, *REQUIRED).stdout)
    groups = {f"{doc['kind']}/{doc['metadata']['name']}": _group(doc) for doc in documents}
    assert {name: group for name, group in groups.items() if group not in BUILT_IN_GROUPS} == {}
    assert sum(doc["kind"] == "Deployment" for doc in documents) == len(helpers.COMPONENTS)


def test_monitoring_follows_each_api(helm: Any, helpers: Any) -> None:
    def kinds(*apis: str) -> set[str]:
        args = [arg for api in apis for arg in ("--api-versions", api)]
        return {
            doc["kind"] for doc in _documents(_template(helm, helpers, *REQUIRED, *args).stdout)
        }

    assert not kinds() & MONITORING
    assert kinds("monitoring.coreos.com/v1/ServiceMonitor") & MONITORING == {"ServiceMonitor"}
    assert kinds("monitoring.coreos.com/v1/PrometheusRule") & MONITORING == {"PrometheusRule"}
    # The group/version alone (another kind of the operator) is not the kind the chart renders.
    assert not kinds("monitoring.coreos.com/v1") & MONITORING


def test_cloudnativepg_pod_monitor_only_where_podmonitors_are_served(
    helm: Any, helpers: Any
) -> None:
    def pod_monitor(*apis: str) -> bool:
        args = [arg for api in apis for arg in ("--api-versions", api)]
        documents = _documents(
            _template(helm, helpers, *REQUIRED, "--set", "cnpg.enabled=true", *args).stdout
        )
        clusters = [doc for doc in documents if doc["kind"] == "Cluster"]
        assert clusters
        return all(c["spec"]["monitoring"]["enablePodMonitor"] for c in clusters)

    assert pod_monitor("postgresql.cnpg.io/v1/Cluster", "monitoring.coreos.com/v1/PodMonitor")
    assert not pod_monitor("postgresql.cnpg.io/v1/Cluster")


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_a_feature_without_its_operator_is_refused_naming_every_one(
    helm: Any, helpers: Any, values_set: str
) -> None:
    refused = _template(helm, helpers, "-f", str(helpers.values_file(values_set)), check=False)
    assert refused.returncode != 0
    assert "features whose operator is not installed" in refused.stderr
    missing = [name for name in OPERATORS[values_set] if name not in refused.stderr]
    assert missing == [], refused.stderr
    assert "--api-versions" in refused.stderr  # says how to render without a cluster


def test_only_the_missing_operator_is_named(helm: Any, helpers: Any) -> None:
    without_keda = [api for api in CRD_APIS if not api.startswith("keda.sh/")]
    args = [arg for api in without_keda for arg in ("--api-versions", api)]
    refused = _template(
        helm, helpers, "-f", str(helpers.values_file("operators")), *args, check=False
    )
    assert refused.returncode != 0
    named = [line for line in refused.stderr.splitlines() if line.startswith("  - ")]
    assert len(named) == 1
    assert "keda.enabled needs KEDA" in named[0]
    assert "keda.sh/v1alpha1/ScaledObject" in named[0]


def test_extra_api_versions_stand_for_the_flag(helm: Any, helpers: Any, render: Any) -> None:
    """The value extraApiVersions does what --api-versions does (for `helm lint`)."""
    result = _template(
        helm, helpers, "-f", str(helpers.values_file("operators")),
        "--set-json", f"extraApiVersions={json.dumps(list(CRD_APIS))}",
    )  # fmt: skip
    assert _documents(result.stdout) == render("operators")


def test_lint_without_the_apis(helm: Any, helpers: Any) -> None:
    """`helm lint` (no cluster) passes the defaults quietly. It reports a template's `fail` as
    INFO only (lint mode), so test_chart.py's lint passes the APIs in extraApiVersions and
    refuses any `Fail:` in the output."""
    quiet = helm("lint", "--strict", str(helpers.CHART), *REQUIRED)
    assert "Fail:" not in quiet.stdout + quiet.stderr
    reported = helm(
        "lint", "--strict", str(helpers.CHART), "-f", str(helpers.values_file("operators")),
        check=False,
    )  # fmt: skip
    assert "CloudNativePG" in reported.stdout + reported.stderr


# The install notes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notes(helm: Any, helpers: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`notes(*args)`: NOTES.txt as the install would print it (its text is the named template
    mercato.notes, rendered here by a copy of the chart with one more template)."""
    chart = tmp_path_factory.mktemp("chart") / "mercato"
    shutil.copytree(helpers.CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ include "mercato.notes" . | toJson }}}\n'
    )

    def run(*args: str) -> str:
        result = helm(
            "template", helpers.RELEASE, str(chart), "--namespace", helpers.NAMESPACE,
            "--show-only", "templates/zz-notes.yaml", *REQUIRED, *args,
        )  # fmt: skip
        return str(yaml.load(result.stdout, Loader=yaml.CSafeLoader)["data"]["notes"])

    return run


def test_notes_say_what_monitoring_was_left_out(notes: Any) -> None:
    bare = notes()
    assert "ServiceMonitors skipped" in bare
    assert "PrometheusRule skipped" in bare
    assert "monitoring.coreos.com/v1/ServiceMonitor" in bare
    everything = notes(*API_VERSION_ARGS)
    assert "skipped" not in everything
    turned_off = notes(
        "--set", "serviceMonitor.enabled=false", "--set", "prometheusRule.enabled=false"
    )
    assert "skipped" not in turned_off
    assert "helm test shop" in everything


def test_notes_warn_about_the_test_payment_provider(notes: Any) -> None:
    warning = "WARNING: payments.provider is `dev`"
    assert warning in notes()  # REQUIRED names dev, without payments.development
    assert warning not in notes("--set", "payments.development=true")
    stripe = notes(
        "--set", "payments.provider=stripe", "--set", "payments.stripe.existingSecret=shop-stripe"
    )  # fmt: skip
    assert warning not in stripe
    assert "webhook endpoint https://api.example.com/v1/payments/events" in stripe
