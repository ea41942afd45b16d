"""Extension points a platform team expects of a chart (as bitnami's and prometheus-community's
have): ServiceAccount, Service, extra env/envFrom/volumes/mounts, sidecars, init containers,
lifecycle, security context overrides, pod annotations and labels, per component or for all
through componentDefaults; each checked by the schema and rendered where it belongs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import API_VERSION_ARGS, KUBE_NEWEST, KUBE_OLDEST, REQUIRED

SIDECAR = {
    "name": "log-shipper",
    "image": "registry.example.com/shipper:1.2.3",
    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
    "securityContext": {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}
EXTENSIONS = {
    "componentDefaults": {
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "x@p.iam"}},
        "podAnnotations": {"example.com/team": "shop"},
    },
    "components": {
        "catalog": {
            "serviceAccount": {
                "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/catalog"}
            },
            "service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}},
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
            "extraEnvFrom": [{"secretRef": {"name": "catalog-extra"}}],
            "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
            "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
            "sidecars": [SIDECAR],
            "initContainers": [{**SIDECAR, "name": "wait-for-nothing"}],
            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
            "podSecurityContext": {"fsGroupChangePolicy": "OnRootMismatch", "runAsUser": 20000},
            "securityContext": {"runAsUser": 20000},
            "podLabels": {"example.com/tier": "backend"},
        },
        "orders": {"serviceAccount": {"create": False, "name": "orders-identity"}},
    },
}


@pytest.fixture(scope="module")
def extended(render: Any, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    path: Path = tmp_path_factory.mktemp("values") / "extensions.yaml"
    path.write_text(yaml.safe_dump(EXTENSIONS))
    return list(render("istio", "-f", str(path)))


def _by(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name)


def test_service_accounts(extended: list[dict[str, Any]], helpers: Any) -> None:
    catalog = _by(extended, "ServiceAccount", "shop-mercato-catalog")
    assert catalog["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "x@p.iam",
        "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/catalog",
    }
    assert catalog["automountServiceAccountToken"] is False
    auth = _by(extended, "ServiceAccount", "shop-mercato-auth")
    assert auth["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": "x@p.iam"}
    # orders runs as an existing account: none rendered, the pods and the mesh use its name.
    accounts = {d["metadata"]["name"] for d in extended if d["kind"] == "ServiceAccount"}
    assert "shop-mercato-orders" not in accounts
    orders = _by(extended, "Deployment", "shop-mercato-orders")["spec"]["template"]["spec"]
    assert orders["serviceAccountName"] == "orders-identity"
    assert orders["automountServiceAccountToken"] is False
    catalog_policy = _by(extended, "AuthorizationPolicy", "shop-mercato-catalog")
    principals = {
        p for rule in catalog_policy["spec"]["rules"]
        for s in rule.get("from", []) for p in s["source"]["principals"]
    }  # fmt: skip
    assert "cluster.local/ns/mercato/sa/orders-identity" in principals


def test_pod_extensions(extended: list[dict[str, Any]]) -> None:
    template = _by(extended, "Deployment", "shop-mercato-catalog")["spec"]["template"]
    spec = template["spec"]
    assert template["metadata"]["annotations"]["example.com/team"] == "shop"
    assert template["metadata"]["labels"]["example.com/tier"] == "backend"
    main, sidecar = spec["containers"]
    assert main["name"] == "catalog"
    assert sidecar == SIDECAR
    assert [c["name"] for c in spec["initContainers"]] == ["wait-for-nothing"]
    assert {"name": "EXTRA", "value": "1"} in main["env"]
    assert main["envFrom"][0]["configMapRef"]["name"] == "shop-mercato-catalog"
    assert main["envFrom"][1] == {"secretRef": {"name": "catalog-extra"}}
    assert {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True} in main["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in spec["volumes"]
    assert main["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    # Overrides merged over the restricted defaults, which stay.
    assert spec["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 20000, "runAsGroup": 10001, "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert main["securityContext"]["runAsUser"] == 20000
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # Other components are untouched.
    auth = _by(extended, "Deployment", "shop-mercato-auth")["spec"]["template"]["spec"]
    assert len(auth["containers"]) == 1
    assert "initContainers" not in auth


def test_migration_job_gets_env_and_volumes_not_sidecars(extended: list[dict[str, Any]]) -> None:
    spec = _by(extended, "Job", "shop-mercato-catalog-migrate")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert "initContainers" not in spec
    assert {"name": "EXTRA", "value": "1"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "catalog-extra"}}]
    assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in spec["volumes"]
    assert {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_service_type_and_annotations(extended: list[dict[str, Any]]) -> None:
    service = _by(extended, "Service", "shop-mercato-catalog")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"] == {"example.com/lb": "internal"}
    headless = _by(extended, "Service", "shop-mercato-catalog-headless")
    assert headless["spec"]["type"] == "ClusterIP"
    assert headless["spec"]["clusterIP"] == "None"
    assert "annotations" not in headless["metadata"]


@pytest.mark.parametrize("kube", [KUBE_OLDEST, KUBE_NEWEST])
def test_extended_manifests_validate(extended: list[dict[str, Any]], kube: str) -> None:
    for doc in extended:
        if doc["kind"] in ("Deployment", "Service", "ServiceAccount", "Job"):
            kubernetes_validate.validate(doc, kube, strict=True)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"componentDefaults": {"serviceAccount": {"annotation": {}}}}, "annotation"),
        ({"components": {"auth": {"extraEnv": {"A": "1"}}}}, "extraEnv"),
        ({"components": {"auth": {"extraVolumeMounts": [{"name": "x"}]}}}, "mountPath"),
        ({"components": {"auth": {"sidecars": [{"name": "x"}]}}}, "image"),
        ({"components": {"auth": {"lifecycle": {"preStart": {}}}}}, "preStart"),
        ({"components": {"auth": {"service": {"type": "ExternalName"}}}}, "type"),
        ({"components": {"auth": {"podSecurityContext": "root"}}}, "podSecurityContext"),
        ({"components": {"auth": {"serviceAccount": {"name": "Not_A_Name"}}}}, "name"),
    ],
)
def test_schema_checks_the_extension_points(
    helm: Any, helpers: Any, values: dict[str, Any], where: str
) -> None:
    result = helm(
        "template", "x", str(helpers.CHART), *REQUIRED, *API_VERSION_ARGS,
        "--set-json", f"components={json.dumps(values.get('components', {}))}",
        "--set-json", f"componentDefaults={json.dumps(values.get('componentDefaults', {}))}",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert where in result.stderr
