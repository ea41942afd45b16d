"""What cannot read the service manifest (services/services.toml) agrees with it.

Helm, skaffold and the tools reading topics.yaml cannot read TOML, so the chart's values.yaml
and values.schema.json, files/topics.yaml, skaffold.yaml, the dashboards and the root
pyproject.toml's lists stay static files; these tests fail when one of them drifts from the
manifest, naming the file and the entry. The services' own code is checked too: default ports,
settings prefix, targets and topics in settings.py, the scopes of the protos' access options.
"""

from __future__ import annotations

import importlib
import json
import tomllib
from typing import Any

import pytest
import yaml

from mercato_common.identity import access_policy
from mercato_devstack.manifest import ServiceSpec

from .conftest import CHART, MANIFEST, ROOT, settings_model

SERVICES = {service.name: service for service in MANIFEST.services}
VALUES = yaml.load((CHART / "values.yaml").read_text(), Loader=yaml.CSafeLoader)
#: The chart's database kinds, by the manifest's store kinds.
CHART_DATABASE = {"postgres": "postgres", "mongo": "mongodb", "none": "none"}


def _component_value(name: str, *path: str) -> Any:
    """``components.<name>.<path>`` of values.yaml, else ``componentDefaults.<path>``."""
    for root in (VALUES["components"].get(name, {}), VALUES["componentDefaults"]):
        value: Any = root
        for key in path:
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            return value
    raise AssertionError(f"values.yaml has no componentDefaults.{'.'.join(path)}")


# The chart -----------------------------------------------------------------------------------


def test_chart_has_a_values_block_per_service_and_no_other() -> None:
    blocks = set(VALUES["components"])
    assert not set(SERVICES) - blocks, (
        f"values.yaml: no components.<name> block for {sorted(set(SERVICES) - blocks)} "
        "(services/services.toml)"
    )
    assert not blocks - set(SERVICES), (
        f"values.yaml: components {sorted(blocks - set(SERVICES))} are not in "
        "services/services.toml"
    )


@pytest.mark.parametrize("service", MANIFEST.services, ids=MANIFEST.names)
def test_chart_values_match_the_manifest(service: ServiceSpec) -> None:
    name = service.name

    def value(*path: str) -> Any:
        return _component_value(name, *path)

    expected = {
        "kind": service.kind,
        "envPrefix": service.env_prefix,
        "ports.app": service.port,
        "ports.metrics": service.metrics_port,
        "image.repository": f"mercato-{name}",
        "database.kind": CHART_DATABASE[service.store],
        "calls": list(service.calls),
        "kafka.bootstrapEnv set": service.uses_kafka,
        "redis.urlEnv set": service.redis,
    }
    found = {
        "kind": value("kind"),
        "envPrefix": value("envPrefix"),
        "ports.app": value("ports", "app"),
        "ports.metrics": value("ports", "metrics"),
        "image.repository": value("image", "repository"),
        "database.kind": value("database", "kind"),
        "calls": value("calls"),
        "kafka.bootstrapEnv set": bool(value("kafka", "bootstrapEnv")),
        "redis.urlEnv set": bool(value("redis", "urlEnv")),
    }
    if service.database is not None:
        expected["database.name"] = service.database
        found["database.name"] = value("database", "name")
    drifted = {key: found[key] for key in expected if found[key] != expected[key]}
    assert not drifted, (
        f"values.yaml components.{name} differs from services/services.toml: "
        + ", ".join(f"{key} is {drifted[key]!r}, not {expected[key]!r}" for key in drifted)
    )
    unknown = sorted(set(value("kafka", "topics").values()) - set(service.topics))
    assert not unknown, (
        f"values.yaml components.{name}.kafka.topics: {unknown} are not topics {name} "
        "produces or consumes in services/services.toml"
    )


def test_chart_schema_names_every_service() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    properties = schema["properties"]
    lists = {
        "properties.components.properties": sorted(properties["components"]["properties"]),
        "definitions.componentOverride...calls.items.enum": sorted(
            schema["definitions"]["componentOverride"]["properties"]["calls"]["items"]["enum"]
        ),
        "properties.componentDefaults...calls.items.enum": sorted(
            properties["componentDefaults"]["properties"]["calls"]["items"]["enum"]
        ),
    }
    for where, names in lists.items():
        assert names == sorted(SERVICES), (
            f"values.schema.json {where} lists {names}; services/services.toml has "
            f"{sorted(SERVICES)}"
        )
    job_images = properties["kafka"]["properties"]["topics"]["properties"]["jobImageFrom"]["enum"]
    with_kafka = sorted(service.name for service in MANIFEST.services if service.uses_kafka)
    assert sorted(job_images) == with_kafka, (
        f"values.schema.json kafka.topics.jobImageFrom: {job_images}, not the services with Kafka "
        f"in services/services.toml ({with_kafka})"
    )


# Skaffold -------------------------------------------------------------------------------------


def test_skaffold_builds_and_deploys_every_service() -> None:
    skaffold = yaml.load((ROOT / "skaffold.yaml").read_text(), Loader=yaml.CSafeLoader)
    artifacts = {artifact["image"]: artifact for artifact in skaffold["build"]["artifacts"]}
    images = {f"mercato-{name}": name for name in SERVICES}
    assert not set(images) - set(artifacts), (
        f"skaffold.yaml: no build.artifacts entry for {sorted(set(images) - set(artifacts))}"
    )
    assert not set(artifacts) - set(images), (
        f"skaffold.yaml: artifacts {sorted(set(artifacts) - set(images))} are no service of "
        "services/services.toml"
    )
    for image, name in images.items():
        dockerfile = artifacts[image]["docker"]["dockerfile"]
        assert dockerfile == f"services/{name}/Dockerfile", f"skaffold.yaml artifact {image}"
        assert (ROOT / dockerfile).is_file(), f"skaffold.yaml artifact {image}: no {dockerfile}"
    templates = skaffold["deploy"]["helm"]["releases"][0]["setValueTemplates"]
    expected = {
        f"components.{name}.image.{part}": "{{.IMAGE_" + f"{key}_mercato_{name}" + "}}"
        for name in SERVICES
        for part, key in (("repository", "REPO"), ("tag", "TAG"))
    }
    wrong = sorted(
        key for key in expected.keys() | templates.keys() if templates.get(key) != expected.get(key)
    )
    assert not wrong, f"skaffold.yaml deploy.helm.releases[0].setValueTemplates: {wrong}"


# Topics ---------------------------------------------------------------------------------------


def test_topics_yaml_matches_the_producers_and_consumers(
    topics_declaration: dict[str, Any],
) -> None:
    declared = {topic["name"]: topic for topic in topics_declaration["topics"]}
    undeclared = sorted(set(MANIFEST.topics) - set(declared))
    assert not undeclared, f"files/topics.yaml: no entry for {undeclared} (services/services.toml)"
    for name, topic in declared.items():
        for role, expected in (
            ("producers", MANIFEST.producers(name)),
            ("consumers", MANIFEST.consumers(name)),
        ):
            found = topic.get(role) or []
            assert sorted(found) == sorted(expected), (
                f"files/topics.yaml {name}: {role} {found}, but services/services.toml says "
                f"{list(expected)}"
            )
        assert topic["owner"] in topic["producers"], f"files/topics.yaml {name}: owner"


# Dashboards -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFEST.names)
def test_every_service_has_its_dashboard(name: str) -> None:
    path = CHART / "files" / "dashboards" / f"mercato-{name}.json"
    assert path.is_file(), (
        f"{path.relative_to(ROOT)} is missing: describe {name}'s dashboard in "
        "tools/mercato_dashboards and run `python tools/dashboards.py`"
    )


# The services' code ---------------------------------------------------------------------------


@pytest.mark.parametrize("service", MANIFEST.services, ids=MANIFEST.names)
def test_settings_agree_with_the_manifest(service: ServiceSpec) -> None:
    """Default ports, the targets it can be given and the topics it defaults to."""
    model = settings_model(service.name)
    where = f"services/{service.name}: {model.__name__}"
    port_field = "grpc_port" if service.kind == "grpc" else "port"
    defaults = (model.model_fields[port_field].default, model.model_fields["metrics_port"].default)
    assert defaults == (service.port, service.metrics_port), (
        f"{where}: default ports {defaults}, services/services.toml says "
        f"{(service.port, service.metrics_port)}"
    )
    targets = sorted(
        name.removesuffix("_target") for name in model.model_fields if name.endswith("_target")
    )
    assert targets == sorted(service.calls), (
        f"{where} has targets for {targets}; services/services.toml calls {list(service.calls)}"
    )
    for name, field in model.model_fields.items():
        if name.endswith("_topic") and isinstance(field.default, str):
            assert field.default in service.topics, (
                f"{where}.{name} defaults to {field.default}, which services/services.toml does "
                f"not list in {service.name}'s produces or consumes"
            )


def _proto_scopes(service: ServiceSpec) -> set[str]:
    """Every scope the access options of the service's gRPC methods name."""
    module = importlib.import_module(f"{service.grpc_package}.{service.name}_pb2")
    short_name = service.grpc_service.rpartition(".")[2]
    descriptor = module.DESCRIPTOR.services_by_name[short_name]
    return {
        scope
        for method in descriptor.methods
        for scope in access_policy(f"/{service.grpc_service}/{method.name}").scopes
    }


@pytest.mark.parametrize(
    "service", [s for s in MANIFEST.services if s.kind == "grpc"], ids=lambda s: s.name
)
def test_the_protos_check_only_declared_scopes(service: ServiceSpec) -> None:
    undeclared = sorted(_proto_scopes(service) - set(service.scopes))
    assert not undeclared, (
        f"the access options of {service.grpc_service} require {undeclared}, which "
        f"services/services.toml does not list in {service.name}'s scopes"
    )


def test_auth_knows_exactly_the_declared_scopes() -> None:
    from mercato_auth.domain.scopes import ALL_SCOPES

    declared = {scope for service in MANIFEST.services for scope in service.scopes}
    assert declared == set(ALL_SCOPES), (
        "services/services.toml scopes and mercato_auth.domain.scopes.ALL_SCOPES differ: "
        f"only in the manifest {sorted(declared - set(ALL_SCOPES))}, "
        f"only in auth {sorted(set(ALL_SCOPES) - declared)}"
    )


def test_orders_asks_for_its_declared_client_scope() -> None:
    model = settings_model("orders")
    scope = model.model_fields["service_token_scope"].default
    assert scope.split() == list(SERVICES["orders"].client_scopes), (
        f"{model.__name__}.service_token_scope is {scope!r}; services/services.toml says "
        f"client_scopes {list(SERVICES['orders'].client_scopes)}"
    )


# The workspace's own lists -------------------------------------------------------------------


def test_pyproject_lists_every_service() -> None:
    """mypy and import-linter cannot read the manifest; the root pyproject.toml must name each."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    modules = sorted(service.module for service in MANIFEST.services)
    linter = pyproject["tool"]["importlinter"]
    contracts = {contract["id"]: contract for contract in linter["contracts"]}
    lists = {
        "tool.importlinter.root_packages": linter["root_packages"],
        "tool.importlinter services-independent modules": contracts["services-independent"][
            "modules"
        ],
        "tool.importlinter libs-not-services forbidden_modules": contracts["libs-not-services"][
            "forbidden_modules"
        ],
        "tool.importlinter no-cycles ancestors": contracts["no-cycles"]["ancestors"],
    }
    for where, names in lists.items():
        missing = sorted(set(modules) - set(names))
        assert not missing, f"pyproject.toml {where}: {missing} missing"
    mypy_path = pyproject["tool"]["mypy"]["mypy_path"].split(":")
    missing = sorted(
        service.name
        for service in MANIFEST.services
        if f"services/{service.name}/src" not in mypy_path
    )
    assert not missing, f"pyproject.toml tool.mypy.mypy_path: services/<name>/src of {missing}"
