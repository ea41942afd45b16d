"""skaffold.yaml: images built from the workspace, every profile's values accepted by the chart."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
import yaml

from .conftest import API_VERSION_ARGS, KUBE_NEWEST

PROFILES = ("dev", "linkerd", "istio", "operators")


@pytest.fixture(scope="module")
def skaffold(helpers: Any) -> dict[str, Any]:
    return yaml.load((helpers.ROOT / "skaffold.yaml").read_text(), Loader=yaml.CSafeLoader)


def test_artifacts_build_from_the_workspace(skaffold: dict[str, Any]) -> None:
    """Every image builds from the repository root (the uv workspace). That there is one per
    service of services/services.toml, with its Dockerfile and image values, test_manifest.py
    checks."""
    for artifact in skaffold["build"]["artifacts"]:
        assert artifact["context"] == ".", artifact["image"]
    assert {p["name"] for p in skaffold["profiles"]} == set(PROFILES)


def _set_args(skaffold: dict[str, Any], profiles: tuple[str, ...]) -> list[str]:
    release = skaffold["deploy"]["helm"]["releases"][0]
    values = dict(release["setValues"])
    for profile in skaffold["profiles"]:
        if profile["name"] in profiles:
            for patch in profile["patches"]:
                prefix = "/deploy/helm/releases/0/setValues/"
                assert patch["op"] == "add"
                assert patch["path"].startswith(prefix)
                values[patch["path"].removeprefix(prefix)] = patch["value"]
    for key, template in release["setValueTemplates"].items():
        values[key] = re.sub(
            r"\{\{\.IMAGE_(REPO|TAG)_(\w+)\}\}",
            lambda m: "abc123" if m[1] == "TAG" else m[2],
            template,
        )
    args = []
    for key, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["--set", f"{key}={text}"] if text else ["--set-string", f"{key}="]
    return args


@pytest.mark.parametrize(
    "profiles",
    [(), *((p,) for p in PROFILES), ("dev", "operators", "linkerd"), ("dev", "istio")],
    ids=lambda p: "+".join(p) or "none",
)
def test_profiles_render(
    skaffold: dict[str, Any], helm: Any, helpers: Any, profiles: tuple[str, ...]
) -> None:
    args = _set_args(skaffold, profiles)
    chart = str(helpers.CHART)
    # On a cluster with every operator (a cluster without one is test_capabilities.py's).
    result = helm(
        "template", "mercato", chart, "-n", "mercato", "--kube-version", KUBE_NEWEST,
        *API_VERSION_ARGS, *args,
    )  # fmt: skip
    docs = [d for d in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if d]
    images = {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {f"mercato_{c}:abc123" for c in helpers.COMPONENTS}
    kinds = {d["kind"] for d in docs}
    monitoring = {"ServiceMonitor", "PrometheusRule"}
    if "dev" in profiles:
        # The small footprint leaves out all of the Prometheus Operator's resources.
        assert not kinds & monitoring, kinds & monitoring
    else:
        assert monitoring <= kinds


def test_port_forward_targets_the_gateway(skaffold: dict[str, Any]) -> None:
    (forward,) = skaffold["portForward"]
    assert forward["resourceName"] == "mercato-gateway"
    assert forward["port"] == 8080


def test_profile_combinations_are_disjoint(skaffold: dict[str, Any]) -> None:
    """linkerd and istio set the same key: they are alternatives, never combined."""
    paths = {p["name"]: {x["path"] for x in p["patches"]} for p in skaffold["profiles"]}
    for a, b in itertools.combinations(paths, 2):
        if {a, b} != {"linkerd", "istio"}:
            assert not paths[a] & paths[b], (a, b)
