"""Rollouts and drains lose no requests by timing: each pod pauses in preStop while its removal
from the endpoints propagates, then drains (not ready, still serving) and gives in-flight calls
their grace, all before the kubelet's SIGKILL."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import MANIFEST, VALUES_SETS, component_of, settings_model

#: Seconds the endpoint removal of a terminating pod needs to reach every proxy (kube-proxy,
#: the mesh, the ingress): the preStop pause must cover it.
PROPAGATION_SECONDS = 5


def _setting(component: str, name: str, env: dict[str, str]) -> float:
    variable = f"{MANIFEST.service(component).env_prefix}{name.upper()}"
    if variable in env:
        return float(env[variable])
    return float(settings_model(component).model_fields[name].default)


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_prestop_drain_and_grace_fit_before_the_kill(render: Any, values_set: str) -> None:
    docs = render(values_set)
    config = {component_of(d): d["data"] for d in docs if d["kind"] == "ConfigMap" and "data" in d}
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        component = component_of(deployment)
        pod = deployment["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == component)
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pause >= PROPAGATION_SECONDS, component
        env = config.get(component, {})
        drain = _setting(component, "shutdown_drain_seconds", env)
        grace = _setting(component, "shutdown_grace_seconds", env)
        assert drain > 0, f"{component} stops accepting at once on SIGTERM"
        assert pause + drain + grace < pod["terminationGracePeriodSeconds"], component
