"""The chart renders and lints with every values set, and says what it must."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from mercato_devstack.topics import parse_topics

from .conftest import (
    API_VERSION_ARGS,
    CRD_APIS,
    KUBE_NEWEST,
    KUBE_OLDEST,
    MANIFEST,
    REQUIRED,
    VALUES_SETS,
)

#: `helm lint` has no --api-versions: the chart's own value says which APIs to assume.
LINT_APIS = ("--set-json", f"extraApiVersions={json.dumps(list(CRD_APIS))}")


@pytest.mark.parametrize("kube", [KUBE_OLDEST, KUBE_NEWEST])
@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_lint_strict(helm: Any, helpers: Any, values_set: str, kube: str) -> None:
    result = helm(
        "lint", "--strict", str(helpers.CHART),
        "--kube-version", kube,
        "-f", str(helpers.values_file(values_set)),
        *LINT_APIS,
    )  # fmt: skip
    # Lint mode turns a template's `fail` into an INFO line: none may be there.
    assert "Fail:" not in result.stdout + result.stderr


def test_kube_version_below_the_supported_range_is_refused(helm: Any, helpers: Any) -> None:
    result = helm("template", "x", str(helpers.CHART), "--kube-version", "1.29.0", check=False)
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr or "incompatible" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "unknown=1"], "additional properties 'unknown' not allowed"),
        (["--set", "components.auth.bogus=1"], "additional properties 'bogus' not allowed"),
        (["--set", "mesh.provider=consul"], "mesh/provider"),
        (["--set", "image.tag=latest"], "image/tag"),
        (["--set", "components.auth.image.tag=latest"], "components/auth/image/tag"),
        (["--set", "tls.enabled=true", "--set", "mesh.provider=istio"], "without a mesh"),
        (["--set", "keda.enabled=true", "--set", "keda.maxReplicas=7"], "partition count"),
        (
            ["--set", "components.auth.kafka.topics.EVENTS_TOPIC=mercato.nope.v1"],
            "not declared in files/topics.yaml",
        ),
        (["--set", "httpRoute.enabled=true"], "parentRefs"),
        (["--set", "image.registry=https://registry.example.com"], "image/registry"),
        (["--set", "image.registry=registry.example.com/"], "image/registry"),
        (["--set", "global.imageRegistry=Registry.Example.com"], "global/imageRegistry"),
        (["--set", "prometheusRule.runbookBaseUrl=docs/runbooks"], "runbookBaseUrl"),
        (["--set", "components.auth.service.type=ExternalName"], "components/auth/service/type"),
        (["--set", "networkPolicy.dnsPorts[0]=0"], "dnsPorts"),
    ],
)
def test_bad_values_are_refused(helm: Any, helpers: Any, args: list[str], message: str) -> None:
    result = helm(
        "template", "x", str(helpers.CHART), *REQUIRED, *API_VERSION_ARGS, *args, check=False
    )
    assert result.returncode != 0, f"accepted: {args}"
    assert message in result.stderr


def test_every_value_is_documented(helpers: Any) -> None:
    """Every leaf key of values.yaml has a comment above it (or above its parent block)."""
    lines = (helpers.CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent > 4 and not line.lstrip().startswith(("requests", "limits")):
            continue  # inside a documented block (components.<name>.<block>.<key>)
        previous = lines[index - 1].strip() if index else ""
        is_block = stripped.endswith(":")
        if not previous.startswith("#") and not is_block and indent <= 2:
            undocumented.append(stripped)
    assert not undocumented, f"values without a comment: {undocumented}"


#: Objects of the schema that accept unknown keys on purpose: `global` is shared with an
#: umbrella chart, whose other globals Helm passes to every subchart.
OPEN_OBJECTS = {"/properties/global"}


def test_schema_is_strict(helpers: Any) -> None:
    """Every object of values.schema.json refuses unknown keys (or is a declared free map)."""
    schema = json.loads((helpers.CHART / "values.schema.json").read_text())
    loose = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            is_record = node.get("type") == "object" and "properties" in node
            if is_record and node.get("additionalProperties") is not False:
                loose.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(schema, "")
    assert sorted(loose) == sorted(OPEN_OBJECTS)
    assert schema["properties"]["global"]["additionalProperties"] is True


def test_values_yaml_satisfies_the_schema(helpers: Any) -> None:
    import jsonschema

    schema = json.loads((helpers.CHART / "values.schema.json").read_text())
    jsonschema.validate(
        yaml.load((helpers.CHART / "values.yaml").read_text(), Loader=yaml.CSafeLoader), schema
    )


EXPECTED_KINDS = {
    "default": {"Deployment", "Service", "ServiceAccount", "ConfigMap", "HorizontalPodAutoscaler",
                "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "Job", "Ingress"},
    "linkerd": {"Server", "AuthorizationPolicy", "MeshTLSAuthentication", "NetworkAuthentication",
                "HTTPRoute", "GRPCRoute"},
    "istio": {"PeerAuthentication", "AuthorizationPolicy", "DestinationRule", "VirtualService",
              "Ingress"},
    "operators": {"Cluster", "Kafka", "KafkaNodePool", "KafkaTopic", "MongoDBCommunity",
                  "ScaledObject"},
    "tls": {"Certificate", "Issuer", "KafkaTopic"},
}  # fmt: skip


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_expected_kinds(render: Any, values_set: str) -> None:
    kinds = {doc["kind"] for doc in render(values_set)}
    assert EXPECTED_KINDS[values_set] <= kinds


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_one_of_each_per_component(render: Any, helpers: Any, values_set: str) -> None:
    docs = render(values_set)
    kinds = ("Deployment", "ServiceAccount", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy",
             "ServiceMonitor")  # fmt: skip
    for kind in kinds:
        owners = sorted(
            helpers.component_of(d)
            for d in docs
            if d["kind"] == kind and helpers.component_of(d) in helpers.COMPONENTS
        )
        assert owners == sorted(helpers.COMPONENTS), kind
    hpas = sorted(helpers.component_of(d) for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    keda = values_set == "operators"
    expected = [c for c in sorted(helpers.COMPONENTS) if not (keda and c == "analytics")]
    if values_set == "istio":
        expected.remove("gateway")
    assert hpas == expected


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_pod_security_restricted(render: Any, helpers: Any, values_set: str) -> None:
    for name, pod in helpers.pod_templates(render(values_set)):
        assert pod["automountServiceAccountToken"] is False, name
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        assert isinstance(psc["runAsUser"], int), name
        assert psc["runAsUser"] > 0, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["runAsNonRoot"] is True, name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
            assert not container["image"].endswith(":latest"), name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, name
            tmp = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
            assert "emptyDir" in tmp, name
    for account in helpers.by_kind(render(values_set), "ServiceAccount").values():
        assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_probes(render: Any, helpers: Any, values_set: str) -> None:
    deployments = helpers.by_kind(render(values_set), "Deployment")
    for deployment in deployments.values():
        component = helpers.component_of(deployment)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = container[probe]
            if component == "gateway":
                expected = "/readyz" if probe == "readinessProbe" else "/healthz"
                assert spec["httpGet"]["path"] == expected
            elif values_set == "tls":
                # kubelet gRPC probes cannot speak TLS: the image's Python asks instead.
                assert spec["exec"]["command"][1].endswith("grpc_health_probe.py")
            else:
                assert spec["grpc"]["port"] == ports["grpc"]


def _caller_map(render: Any, helpers: Any, values_set: str) -> dict[str, set[str]]:
    callers: dict[str, set[str]] = {}
    for policy in helpers.by_kind(render(values_set), "NetworkPolicy").values():
        component = helpers.component_of(policy)
        if component not in helpers.COMPONENTS:
            continue
        found = set()
        for rule in policy["spec"]["ingress"]:
            for peer in rule.get("from", []):
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                if "app.kubernetes.io/component" in labels and "namespaceSelector" not in peer:
                    found.add(labels["app.kubernetes.io/component"])
        callers[component] = found
    return callers


#: Who may call each component: the services that list it in `calls` (services/services.toml).
EXPECTED_CALLERS = {name: set(MANIFEST.callers(name)) for name in MANIFEST.names}


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_network_policy_admits_only_callers(render: Any, helpers: Any, values_set: str) -> None:
    found = _caller_map(render, helpers, values_set)
    for name, callers in EXPECTED_CALLERS.items():
        assert found.get(name) == callers, (
            f"NetworkPolicy of {name} admits {sorted(found.get(name, ()))}; services/services.toml"
            f" says it is called by {sorted(callers)} (values.yaml components.*.calls)"
        )
    for policy in helpers.by_kind(render(values_set), "NetworkPolicy").values():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        egress_ports = {
            p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])
        }
        assert 53 in egress_ports


def test_network_policy_egress(render: Any, helpers: Any) -> None:
    policies = {
        helpers.component_of(p): p
        for p in helpers.by_kind(render("default"), "NetworkPolicy").values()
    }

    def ports(component: str) -> set[int]:
        return {
            p["port"] for r in policies[component]["spec"]["egress"] for p in r.get("ports", [])
        }

    assert {5432, 9092, 4317} <= ports("auth")
    assert 27017 not in ports("auth")
    assert {27017, 9092, 6379, 50061} <= ports("catalog")
    assert 5432 not in ports("catalog")
    assert {5432, 9092, 50061, 50062} <= ports("orders")
    assert {27017, 9092, 50061} <= ports("analytics")
    # The gateway reads Kafka for GraphQL subscriptions; it has no database.
    assert {6379, 9092, 50061, 50062, 50063, 50064} <= ports("gateway")
    assert not {5432, 27017} & ports("gateway")


@pytest.mark.parametrize("values_set", ["linkerd", "istio"])
def test_mesh_sidecars_and_jobs(render: Any, helpers: Any, values_set: str) -> None:
    docs = render(values_set)
    for name, pod_doc in (
        (d["metadata"]["name"], d) for d in docs if d["kind"] in ("Deployment", "Job")
    ):
        meta = pod_doc["spec"]["template"]["metadata"]
        injected = pod_doc["kind"] == "Deployment"
        if values_set == "linkerd":
            assert meta["annotations"]["linkerd.io/inject"] == (
                "enabled" if injected else "disabled"
            ), name
        else:
            assert meta["labels"]["sidecar.istio.io/inject"] == ("true" if injected else "false"), (
                name
            )


def test_clients_use_headless_services_without_mesh_and_cluster_ip_with_one(
    render: Any, helpers: Any
) -> None:
    plain = helpers.by_kind(render("default"), "ConfigMap")["shop-mercato-orders"]["data"]
    assert plain["MERCATO_ORDERS_CATALOG_TARGET"] == (
        "dns:///shop-mercato-catalog-headless.mercato.svc.cluster.local:50062"
    )
    meshed = helpers.by_kind(render("istio"), "ConfigMap")["shop-mercato-orders"]["data"]
    assert (
        meshed["MERCATO_ORDERS_CATALOG_TARGET"]
        == "shop-mercato-catalog.mercato.svc.cluster.local:50062"
    )
    # Every pod's address in the headless name, ready or not: a name that does not resolve
    # (no pod ready yet) puts gRPC's resolver into a backoff of up to two minutes.
    services = helpers.by_kind(render("default"), "Service")
    headless = [s for name, s in services.items() if name.endswith("-headless")]
    assert len(headless) == 4, sorted(services)
    assert all(s["spec"]["publishNotReadyAddresses"] is True for s in headless)
    assert not any(
        s["spec"].get("publishNotReadyAddresses")
        for n, s in services.items()
        if n not in {h["metadata"]["name"] for h in headless}
    )


def _retry_methods_istio(docs: list[dict[str, Any]], helpers: Any) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for vs in helpers.by_kind(docs, "VirtualService").values():
        for route in vs["spec"]["http"]:
            if route["retries"]["attempts"] > 0:
                for match in route["match"]:
                    result.setdefault(helpers.component_of(vs), set()).add(match["uri"]["exact"])
            else:
                assert "match" not in route  # the catch-all, without retries
    return result


def _retry_methods_linkerd(docs: list[dict[str, Any]], helpers: Any) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for route in helpers.by_kind(docs, "GRPCRoute").values():
        annotations = route["metadata"].get("annotations", {})
        if "retry.linkerd.io/grpc" in annotations:
            for rule in route["spec"]["rules"]:
                for match in rule["matches"]:
                    method = match["method"]
                    result.setdefault(helpers.component_of(route), set()).add(
                        f"/{method['service']}/{method['method']}"
                    )
        else:
            assert all("matches" not in rule for rule in route["spec"]["rules"])
    return result


def _expected_retryable(helm_tool: Any) -> dict[str, set[str]]:
    """The methods tools/helm.py lets a mesh retry (files/grpc-methods.yaml, which the mesh
    templates read), by component: each one safe to repeat by its contract's idempotency_level,
    every other safe one an exception of NEVER_RETRIED_BY_MESH."""
    safe = {"NO_SIDE_EFFECTS", "IDEMPOTENT"}
    result: dict[str, set[str]] = {}
    for component, methods in helm_tool.grpc_methods().items():
        for service in methods["services"]:
            for method in service["retry"]:
                assert method["idempotency"] in safe, f"{service['name']}/{method['name']}"
                result.setdefault(component, set()).add(f"/{service['name']}/{method['name']}")
            for method in service["noRetry"]:
                full = f"{service['name']}/{method['name']}"
                assert method["idempotency"] not in safe or full in helm_tool.NEVER_RETRIED_BY_MESH
    return result


@pytest.mark.parametrize("values_set", ["linkerd", "istio"])
def test_mesh_retries_only_idempotent_methods(
    render: Any, helpers: Any, helm_tool: Any, values_set: str
) -> None:
    docs = render(values_set)
    found = (_retry_methods_istio if values_set == "istio" else _retry_methods_linkerd)(
        docs, helpers
    )
    assert found == _expected_retryable(helm_tool)
    everything = set().union(*found.values())
    # Never retried by a mesh: payment, and order creation (idempotent by key only; the caller
    # holding the key retries, see docs/deploy.md).
    assert "/mercato.orders.v1.OrdersService/PayOrder" not in everything
    assert "/mercato.orders.v1.OrdersService/CreateOrder" not in everything
    assert "/mercato.auth.v1.AuthService/Login" not in everything


def test_grpc_methods_file_is_current(helm_tool: Any, helpers: Any) -> None:
    text = helm_tool.render_methods()
    assert (helpers.CHART / "files" / "grpc-methods.yaml").read_text() == text, (
        "deploy/helm/mercato/files/grpc-methods.yaml is stale: run `python tools/helm.py methods`"
    )


def test_istio_authorization_allows_only_callers(render: Any, helpers: Any) -> None:
    tests = "cluster.local/ns/mercato/sa/shop-mercato-tests"
    for policy in helpers.by_kind(render("istio"), "AuthorizationPolicy").values():
        component = helpers.component_of(policy)
        assert policy["spec"]["action"] == "ALLOW"
        principals = set()
        for rule in policy["spec"]["rules"]:
            sources = {p for s in rule.get("from", []) for p in s["source"]["principals"]}
            if tests in sources:
                # `helm test`: its Pods may ask the health check of a gRPC service, nothing else.
                assert sources == {tests}
                assert [op["operation"]["paths"] for op in rule["to"]] == [
                    ["/grpc.health.v1.Health/Check"]
                ]
                continue
            principals |= sources
        expected = {
            f"cluster.local/ns/mercato/sa/shop-mercato-{c}" for c in EXPECTED_CALLERS[component]
        }
        assert principals == expected, component
    for peer in helpers.by_kind(render("istio"), "PeerAuthentication").values():
        assert peer["spec"]["mtls"]["mode"] == "STRICT"


def test_linkerd_authorization_allows_only_callers(render: Any, helpers: Any) -> None:
    docs = render("linkerd")
    meshtls = helpers.by_kind(docs, "MeshTLSAuthentication")
    for component, callers in EXPECTED_CALLERS.items():
        if not callers:
            continue
        refs = meshtls[f"shop-mercato-{component}-callers"]["spec"]["identityRefs"]
        assert {r["name"] for r in refs} == {f"shop-mercato-{c}" for c in callers}
    for server in helpers.by_kind(docs, "Server").values():
        assert server["spec"]["accessPolicy"] == "deny"


def test_topics_come_from_the_declaration(render: Any, topics_declaration: dict[str, Any]) -> None:
    specs = {
        spec.name: spec for spec in parse_topics(topics_declaration)
    }  # the local stack's reader
    topics = {
        d["spec"]["topicName"]: d["spec"] for d in render("operators") if d["kind"] == "KafkaTopic"
    }
    assert set(topics) == set(specs)
    for name, spec in topics.items():
        assert spec["partitions"] == specs[name].partitions
        assert spec["replicas"] == specs[name].replicas
        assert spec["config"] == dict(specs[name].config)
    capped = {d["spec"]["topicName"]: d["spec"] for d in render("tls") if d["kind"] == "KafkaTopic"}
    assert all(
        s["replicas"] == 1 and s["config"]["min.insync.replicas"] == "1" for s in capped.values()
    )
    job_config = next(
        d
        for d in render("default")
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-topics")
    )
    declared = json.loads(job_config["data"]["topics.json"])
    assert {t["name"]: t["partitions"] for t in declared} == {
        n: s.partitions for n, s in specs.items()
    }


def test_topic_job_plan(helpers: Any) -> None:
    script = helpers.load_module(helpers.CHART / "files" / "create-topics.py", "create_topics")
    declared = [
        {"name": "a", "partitions": 6, "replicas": 3, "config": {"min.insync.replicas": "2"}},
        {"name": "b", "partitions": 1, "replicas": 3, "config": {}},
    ]
    create, warnings = script.plan(declared, {"b": 2}, brokers=1)
    assert create == [
        {"name": "a", "partitions": 6, "replicas": 1, "config": {"min.insync.replicas": "1"}}
    ]
    assert len(warnings) == 1
    assert "b" in warnings[0]


def test_keda_bounded_by_partitions(
    render: Any, helpers: Any, topics_declaration: dict[str, Any]
) -> None:
    scaled = helpers.by_kind(render("operators"), "ScaledObject")["shop-mercato-analytics"]
    partitions = [
        s.partitions for s in parse_topics(topics_declaration) if "analytics" in s.consumers
    ]
    assert scaled["spec"]["maxReplicaCount"] <= min(partitions)
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "mercato.analytics"


def test_migrations_are_hooks(render: Any, helpers: Any) -> None:
    jobs = helpers.by_kind(render("default"), "Job")
    expected = {s.name for s in helpers.MANIFEST.services if s.store != "none"}
    migrations = {
        n.removeprefix("shop-mercato-").removesuffix("-migrate"): j
        for n, j in jobs.items()
        if n.endswith("-migrate")
    }
    assert set(migrations) == expected
    for job in migrations.values():
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    # With operator-run databases, which do not exist at pre-install, only before upgrades.
    for job in helpers.by_kind(render("operators"), "Job").values():
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"
    operators = helpers.by_kind(render("operators"), "ConfigMap")
    assert operators["shop-mercato-auth"]["data"]["MERCATO_AUTH_MIGRATE_ON_START"] == "true"
    default = helpers.by_kind(render("default"), "ConfigMap")
    assert default["shop-mercato-auth"]["data"]["MERCATO_AUTH_MIGRATE_ON_START"] == "false"


def test_operator_databases_feed_the_services(render: Any, helpers: Any) -> None:
    docs = render("operators")
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for d in helpers.by_kind(docs, "Deployment").values()
        for e in d["spec"]["template"]["spec"]["containers"][0].get("env", [])
    }
    assert env["MERCATO_AUTH_DATABASE_URL"] == {"name": "shop-mercato-auth-db-app", "key": "uri"}
    assert env["MERCATO_CATALOG_MONGO_URI"]["name"] == "shop-mercato-mongodb-catalog"
    assert set(helpers.by_kind(docs, "Cluster")) == {
        "shop-mercato-auth-db",
        "shop-mercato-orders-db",
    }
    users = helpers.by_kind(docs, "MongoDBCommunity")["shop-mercato-mongodb"]["spec"]["users"]
    assert {u["connectionStringSecretName"] for u in users} == {
        "shop-mercato-mongodb-catalog", "shop-mercato-mongodb-analytics"}  # fmt: skip


def test_chart_defaults_need_the_connection_values(helm: Any, helpers: Any) -> None:
    """The defaults guess no address: without the values docs/deploy.md says to set, the render
    fails naming each of them at once; with them (and nothing else), it lints and renders."""
    refused = helm("template", "x", str(helpers.CHART), check=False)
    assert refused.returncode != 0
    for value in ("config.tokenIssuer", "kafka.bootstrapServers", "redis.url", "payments.provider"):
        assert f"{value}" in refused.stderr, value
    for kube in (KUBE_OLDEST, KUBE_NEWEST):
        helm("lint", "--strict", str(helpers.CHART), "--kube-version", kube, *REQUIRED)
    result = helm(
        "template", "x", str(helpers.CHART), "--kube-version", KUBE_NEWEST,
        *REQUIRED, *API_VERSION_ARGS,
    )  # fmt: skip
    kinds = {doc["kind"] for doc in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if doc}
    assert {"Deployment", "NetworkPolicy", "Job", "ServiceMonitor"} <= kinds
    assert "Ingress" not in kinds


@pytest.mark.parametrize(
    ("missing", "others"),
    [
        ("config.tokenIssuer", REQUIRED[2:]),
        ("kafka.bootstrapServers", REQUIRED[:2] + REQUIRED[4:]),
        ("redis.url", REQUIRED[:4] + REQUIRED[6:]),
        ("payments.provider", REQUIRED[:6]),
    ],
)
def test_each_connection_value_is_required(
    helm: Any, helpers: Any, missing: str, others: tuple[str, ...]
) -> None:
    result = helm("template", "x", str(helpers.CHART), *others, check=False)
    assert result.returncode != 0
    assert f"{missing} " in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, problems


def test_the_in_chart_operators_provide_what_they_replace(helm: Any, helpers: Any) -> None:
    """kafka.strimzi.enabled provides the bootstrap servers, redis.existingSecret the URL."""
    result = helm(
        "template", "x", str(helpers.CHART), *API_VERSION_ARGS,
        "--set", "config.tokenIssuer=https://api.example.com",
        "--set", "kafka.strimzi.enabled=true",
        "--set-json", 'redis.existingSecret="{{ .Release.Name }}-redis"',
        "--set", "payments.provider=dev",

    )  # fmt: skip
    docs = [d for d in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if d]
    config = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    assert config["x-mercato-auth"]["data"]["MERCATO_AUTH_KAFKA_BOOTSTRAP_SERVERS"] == (
        "x-mercato-kafka-kafka-bootstrap:9092"
    )
    gateway = next(
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "x-mercato-gateway"
    )
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MERCATO_GATEWAY_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "x-redis",
        "key": "url",
    }
    assert "MERCATO_GATEWAY_REDIS_URL" not in config["x-mercato-gateway"]["data"]


def test_stripe_payments_read_their_secrets_and_need_them(helm: Any, helpers: Any) -> None:
    """provider stripe: the key and the webhook secret from the named Secret (never in the
    ConfigMap), Stripe's settings in it; without the Secret the render names what is missing."""
    base = (*REQUIRED[:6], "--set", "payments.provider=stripe")
    refused = helm("template", "x", str(helpers.CHART), *base, check=False)
    assert refused.returncode != 0
    assert "payments.stripe.existingSecret is required" in refused.stderr
    result = helm(
        "template", "x", str(helpers.CHART), *base,
        "--set-json", 'payments.stripe.existingSecret="{{ .Release.Name }}-stripe"',
        "--set", "payments.stripe.apiBase=http://stripe-mock.test:12111",
    )  # fmt: skip
    docs = [d for d in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if d]
    config = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    data = config["x-mercato-orders"]["data"]
    assert data["MERCATO_ORDERS_PAYMENT_PROVIDER"] == "stripe"
    assert data["MERCATO_ORDERS_STRIPE_API_BASE"] == "http://stripe-mock.test:12111"
    assert data["MERCATO_ORDERS_STRIPE_WEBHOOK_TOLERANCE_SECONDS"] == "300"
    assert not [key for key in data if key.endswith(("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"))]
    orders = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "x-mercato-orders"
    )
    env = {e["name"]: e for e in orders["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MERCATO_ORDERS_STRIPE_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "x-stripe",
        "key": "api-key",
    }
    assert env["MERCATO_ORDERS_STRIPE_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "x-stripe",
        "key": "webhook-secret",
    }
    # Only orders takes payments.
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] != "x-mercato-orders":
            names = {
                e["name"]
                for c in doc["spec"]["template"]["spec"]["containers"]
                for e in c.get("env", [])
            }
            assert not [n for n in names if "STRIPE" in n], doc["metadata"]["name"]
