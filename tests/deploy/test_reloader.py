"""reloader.enabled: each Deployment names the Secrets its pods read at start, so that Stakater
Reloader rolls them when one changes; certificates the services read again themselves are left
out."""

from __future__ import annotations

from typing import Any

from .conftest import component_of

ANNOTATION = "secret.reloader.stakater.com/reload"


def _deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {component_of(d): d for d in docs if d["kind"] == "Deployment"}


def _read_secrets(deployment: dict[str, Any]) -> set[str]:
    """Every Secret the pod spec reads: env secretKeyRefs and secret volumes."""
    pod = deployment["spec"]["template"]["spec"]
    names = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for c in pod["containers"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return names


def test_off_by_default(render: Any) -> None:
    for name, deployment in _deployments(render("default")).items():
        assert ANNOTATION not in deployment["metadata"].get("annotations", {}), name


def test_each_deployment_names_the_secrets_it_reads(render: Any) -> None:
    for values_set in ("default", "tls"):
        docs = render(values_set, "--set", "reloader.enabled=true")
        for name, deployment in _deployments(docs).items():
            annotated = deployment["metadata"].get("annotations", {}).get(ANNOTATION, "")
            listed = set(filter(None, annotated.split(",")))
            read = _read_secrets(deployment)
            # Every component takes a renewed certificate without a restart.
            assert listed == read - {f"shop-mercato-{name}-tls"}, (values_set, name)
        assert any(
            f"shop-mercato-{name}-tls" in _read_secrets(d) for name, d in _deployments(docs).items()
        ) == (values_set == "tls")
