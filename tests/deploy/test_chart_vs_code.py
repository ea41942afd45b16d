"""The chart against the code: every variable the chart sets is a setting of that service, every
required setting is set, ports agree everywhere, topics are declared, commands and images exist.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mercato_common.settings import Settings, _variable_name

from .conftest import COMPONENTS, MANIFEST, VALUES_SETS, settings_model

PREFIX = {service.name: service.env_prefix for service in MANIFEST.services}


def _variables(model: type[Settings]) -> dict[str, Any]:
    """Variable name → pydantic field."""
    return {
        _variable_name(model, name, field.validation_alias): field
        for name, field in model.model_fields.items()
    }


def _chart_env(render: Any, helpers: Any, values_set: str, component: str) -> dict[str, Any]:
    """Every variable the chart gives the component's pods (Deployment and Jobs): name → value
    (plain) or the secretKeyRef."""
    docs = render(values_set)
    env: dict[str, Any] = {}
    for doc in docs:
        if (
            doc["kind"] == "ConfigMap"
            and doc["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ):
            env.update(doc["data"])
        if doc["kind"] in ("Deployment", "Job"):
            owner = doc["metadata"]["labels"].get("app.kubernetes.io/component")
            if owner not in (component, f"{component}-migrate"):
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for item in container.get("env", []):
                    env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


@pytest.mark.parametrize("values_set", VALUES_SETS)
@pytest.mark.parametrize("component", COMPONENTS)
def test_every_variable_is_a_setting(
    render: Any, helpers: Any, component: str, values_set: str
) -> None:
    variables = _variables(settings_model(component))
    env = _chart_env(render, helpers, values_set, component)
    assert env, f"{component}: the chart sets nothing"
    unknown = sorted(set(env) - set(variables))
    assert not unknown, f"{component} has no settings for {unknown}"


@pytest.mark.parametrize("values_set", VALUES_SETS)
@pytest.mark.parametrize("component", COMPONENTS)
def test_every_required_setting_is_set(
    render: Any, helpers: Any, component: str, values_set: str
) -> None:
    variables = _variables(settings_model(component))
    required = {name for name, field in variables.items() if field.is_required()}
    missing = sorted(required - set(_chart_env(render, helpers, values_set, component)))
    assert not missing, f"{component} would not start: {missing} not set by the chart"


def _documented_ports(helpers: Any) -> dict[str, tuple[int, int]]:
    text = (helpers.ROOT / "docs" / "services.md").read_text()
    ports = {}
    for match in re.finditer(
        r"^\| (\w+)(?: \(HTTP (\d+)\))? \| (\d+|\u2013) \| (\d+) \|$", text, re.MULTILINE
    ):
        name, http, grpc, metrics = match.groups()
        ports[name] = (int(http or grpc), int(metrics))
    return ports


@pytest.mark.parametrize("component", COMPONENTS)
def test_ports_match(render: Any, helpers: Any, component: str) -> None:
    model = settings_model(component)
    app_field = "port" if "port" in model.model_fields else "grpc_port"
    app, metrics = model.model_fields[app_field].default, model.model_fields["metrics_port"].default
    assert _documented_ports(helpers)[component] == (app, metrics), "docs/services.md"
    docs = render("default")
    env = _chart_env(render, helpers, "default", component)
    prefix = PREFIX[component]
    assert env[f"{prefix}{app_field.upper()}"] == str(app)
    assert env[f"{prefix}METRICS_PORT"] == str(metrics)
    # Loopback by default in the code; the chart opens it to the scrapers on the pod network.
    assert model.model_fields["metrics_host"].default == "127.0.0.1"
    assert env[f"{prefix}METRICS_HOST"] == "0.0.0.0"
    if app_field == "grpc_port":
        assert model.model_fields["grpc_reflection"].default is False
        assert env[f"{prefix}GRPC_REFLECTION"] == "false"
    deployment = helpers.by_kind(docs, "Deployment")[f"shop-mercato-{component}"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert sorted(p["containerPort"] for p in container["ports"]) == sorted([app, metrics])
    service = helpers.by_kind(docs, "Service")[f"shop-mercato-{component}"]
    assert sorted(p["port"] for p in service["spec"]["ports"]) == sorted([app, metrics])
    # Every caller's target points at this port.
    for name, value in _all_env(render, helpers).items():
        if name.endswith(f"_{component.upper()}_TARGET"):
            assert value.endswith(f":{app}"), name


def _all_env(render: Any, helpers: Any) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for component in COMPONENTS:
        env.update(_chart_env(render, helpers, "default", component))
    return env


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_topics_are_declared(
    render: Any, helpers: Any, topics_declaration: dict[str, Any], values_set: str
) -> None:
    """Every topic a service is given is declared (after the release's kafka.prefix)."""
    declared = {topic["name"] for topic in topics_declaration["topics"]}
    values = yaml.load(helpers.values_file(values_set).read_text(), Loader=yaml.CSafeLoader)
    prefix = values.get("kafka", {}).get("prefix", "")
    prefix = prefix.replace("{{ .Release.Namespace }}", helpers.NAMESPACE).replace(
        "{{ .Release.Name }}", helpers.RELEASE
    )
    for component in COMPONENTS:
        for name, value in _chart_env(render, helpers, values_set, component).items():
            if name.endswith("_TOPIC"):
                assert value.startswith(prefix), f"{name}={value} lacks the prefix {prefix!r}"
                topic = value.removeprefix(prefix)
                assert topic in declared, f"{name}={topic} is not in files/topics.yaml"


@pytest.mark.parametrize("component", COMPONENTS)
def test_topic_defaults_in_code_are_declared(
    component: str, topics_declaration: dict[str, Any]
) -> None:
    """Topics a service would use when the chart set nothing are declared too."""
    declared = {topic["name"] for topic in topics_declaration["topics"]}
    model = settings_model(component)
    for name, field in model.model_fields.items():
        if name.endswith("_topic") and isinstance(field.default, str):
            assert field.default in declared, f"{component}.{name}={field.default}"


def _entry_point(helpers: Any, component: str) -> Path:
    """The module `python -m mercato_<component>` runs."""
    return helpers.ROOT / "services" / component / "src" / f"mercato_{component}" / "__main__.py"


@pytest.mark.parametrize("component", COMPONENTS)
def test_migration_command_exists(render: Any, helpers: Any, component: str) -> None:
    jobs = helpers.by_kind(render("default"), "Job")
    job = jobs.get(f"shop-mercato-{component}-migrate")
    if job is None:
        pytest.skip(f"{component}: no migration Job")
    # Its own help lists the commands, however the entry point declares them (argparse or the
    # kit's Definition).
    module = MANIFEST.service(component).module
    usage = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert usage.returncode == 0, f"python -m {module} --help: {usage.stderr}"
    commands = re.search(r"\{([\w,-]+)\}", usage.stdout)
    assert commands, f"python -m {module} --help lists no commands:\n{usage.stdout}"
    for arg in job["spec"]["template"]["spec"]["containers"][0]["args"]:
        assert arg in commands.group(1).split(","), f"{component} has no `{arg}` command"


@pytest.mark.parametrize("component", COMPONENTS)
def test_image_matches_chart(render: Any, helpers: Any, component: str) -> None:
    """Each runnable service has a Dockerfile whose user, ports and module the chart assumes."""
    assert _entry_point(helpers, component).is_file(), f"{component}: no __main__.py"
    text = (helpers.ROOT / "services" / component / "Dockerfile").read_text()
    deployment = helpers.by_kind(render("default"), "Deployment")[f"shop-mercato-{component}"]
    pod = deployment["spec"]["template"]["spec"]
    user = pod["securityContext"]["runAsUser"]
    assert re.search(rf"^USER {user}(:\d+)?$", text, re.MULTILINE), (
        "numeric USER matching runAsUser"
    )
    ports = sorted(p["containerPort"] for p in pod["containers"][0]["ports"])
    exposed = re.search(r"^EXPOSE (.+)$", text, re.MULTILINE)
    assert exposed, "EXPOSE"
    assert sorted(int(p) for p in exposed.group(1).split()) == ports
    assert f'"mercato_{component}"' in text  # ENTRYPOINT python -m mercato_<name>


@pytest.mark.parametrize("component", COMPONENTS)
def test_tls_without_a_mesh_reaches_the_clients(render: Any, helpers: Any, component: str) -> None:
    """With `tls.enabled`, a component that calls others trusts the CA of its mounted Secret for
    its outgoing channels and presents its own certificate; without TLS nothing is set."""
    prefix = PREFIX[component]
    assert f"{prefix}TLS_CA_FILE" not in _chart_env(render, helpers, "default", component)
    env = _chart_env(render, helpers, "tls", component)
    deployment = helpers.by_kind(render("tls"), "Deployment")[f"shop-mercato-{component}"]
    mounts = {
        m["name"]: m["mountPath"]
        for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert mounts["tls"] == "/etc/mercato/tls"
    calls = [name[len(prefix) : -len("_TARGET")] for name in env if name.endswith("_TARGET")]
    if not calls:
        assert f"{prefix}TLS_CA_FILE" not in env
        return
    assert env[f"{prefix}TLS_CA_FILE"] == "/etc/mercato/tls/ca.crt"
    assert env[f"{prefix}TLS_CERT_FILE"] == "/etc/mercato/tls/tls.crt"
    assert env[f"{prefix}TLS_KEY_FILE"] == "/etc/mercato/tls/tls.key"
    model = settings_model(component)
    fields = {
        name: env[_variable_name(model, name, field.validation_alias)]
        for name, field in model.model_fields.items()
        if name.startswith("tls_") and _variable_name(model, name, field.validation_alias) in env
    }
    client_tls = model.model_construct(**fields).client_tls  # type: ignore[attr-defined]
    assert client_tls is not None
    assert str(client_tls.cert_file) == "/etc/mercato/tls/tls.crt"


def test_logs_go_over_otlp_only_when_asked_and_to_the_endpoint(
    render: Any, helm: Any, helpers: Any
) -> None:
    def config(*args: str) -> dict[str, dict[str, str]]:
        return {
            helpers.component_of(doc): doc["data"]
            for doc in render("default", *args)
            if doc["kind"] == "ConfigMap" and helpers.component_of(doc) in COMPONENTS
        }

    endpoint = ("--set", "config.otlpEndpoint=http://otel-collector.observability:4317")
    exported = config(*endpoint, "--set", "config.logsExporter=otlp")
    assert set(exported) == set(COMPONENTS)
    for component, data in exported.items():
        assert data["OTEL_LOGS_EXPORTER"] == "otlp", component
        assert data["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4317"), component
        assert "OTEL_LOGS_EXPORTER" in _variables(settings_model(component)), component
    assert all(d["OTEL_LOGS_EXPORTER"] == "none" for d in config(*endpoint).values())
    assert not any(
        "OTEL_LOGS_EXPORTER" in d for d in config("--set", "config.otlpEndpoint=").values()
    )
    refused = helm(
        "template", "x", str(helpers.CHART), *helpers.REQUIRED,
        "--set", "config.logsExporter=otlp", check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "config.logsExporter=otlp needs config.otlpEndpoint" in refused.stderr
