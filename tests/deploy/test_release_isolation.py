"""Two releases side by side share nothing by default: every object name, every Secret they read,
every KafkaTopic resource; with kafka.prefix, not the topics and consumer groups in a shared
Kafka either."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from .conftest import API_VERSION_ARGS, KUBE_NEWEST

SECRETS = {
    "auth": {
        "shop-mercato-auth-db",
        "shop-mercato-auth-signing",
        "shop-mercato-auth-service-clients",
    },
    "catalog": {"shop-mercato-catalog-mongodb"},
    "orders": {"shop-mercato-orders-db", "shop-mercato-orders-service-client"},
    "analytics": {"shop-mercato-analytics-mongodb"},
    "gateway": set(),
}


def _secret_refs(documents: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Secrets each component's pods read (Deployment and migration Job), by component."""
    found: dict[str, set[str]] = {}
    for doc in documents:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"].removesuffix(
            "-migrate"
        )
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    found.setdefault(component, set()).add(ref["name"])
    return found


def _release(helm: Any, helpers: Any, release: str, values_set: str, *args: str) -> Any:
    result = helm(
        "template", release, str(helpers.CHART), "--namespace", helpers.NAMESPACE,
        "--kube-version", KUBE_NEWEST, "-f", str(helpers.values_file(values_set)),
        *API_VERSION_ARGS, *args,
    )  # fmt: skip
    return [doc for doc in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if doc]


def test_secret_names_carry_the_release(render: Any) -> None:
    found = _secret_refs(render("default"))
    assert {name: found.get(name, set()) for name in SECRETS} == SECRETS


@pytest.mark.parametrize("values_set", ["default", "operators", "tls"])
def test_two_releases_in_one_namespace_share_nothing(
    helm: Any, helpers: Any, values_set: str
) -> None:
    shop = _release(helm, helpers, "shop", values_set)
    blue = _release(helm, helpers, "blue", values_set)

    def names(documents: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {(doc["kind"], doc["metadata"]["name"]) for doc in documents}

    assert names(shop) & names(blue) == set()
    shared = {
        name
        for refs in _secret_refs(shop).values()
        for name in refs
        if name in {n for r in _secret_refs(blue).values() for n in r}
    }
    assert shared == set()


def test_existing_secret_names_still_override(render: Any) -> None:
    documents = render(
        "default",
        "--set", "components.auth.database.existingSecret=pg-auth",
        "--set", "components.auth.secretEnv.MERCATO_AUTH_SIGNING_KEY_KEK.secretName=kek",
        "--set-json", 'components.orders.database.existingSecret="{{ .Release.Name }}-pg"',
        "--set", "redis.existingSecret=redis-url",
    )  # fmt: skip
    found = _secret_refs(documents)
    # auth reads the Redis URL too (the access-token revocation list).
    assert found["auth"] == {"pg-auth", "kek", "shop-mercato-auth-service-clients", "redis-url"}
    assert "shop-pg" in found["orders"]
    assert "redis-url" in found["gateway"]


def test_mongodb_user_passwords_carry_the_release(render: Any, helpers: Any) -> None:
    users = helpers.by_kind(render("operators"), "MongoDBCommunity")["shop-mercato-mongodb"]
    secrets = {u["name"]: u["passwordSecretRef"]["name"] for u in users["spec"]["users"]}
    assert secrets == {
        "catalog": "shop-mercato-catalog-mongodb-password",
        "analytics": "shop-mercato-analytics-mongodb-password",
    }


def test_kafka_topic_resources_carry_the_release(
    helm: Any, helpers: Any, topics_declaration: dict[str, Any]
) -> None:
    """KafkaTopic objects are named after the release; without kafka.prefix the topics in
    Kafka (spec.topicName) are the declared names (a chart-run Strimzi cluster is the
    release's own)."""
    declared = {topic["name"] for topic in topics_declaration["topics"]}
    for release in ("shop", "blue"):
        topics = [
            d for d in _release(helm, helpers, release, "operators") if d["kind"] == "KafkaTopic"
        ]
        assert {t["spec"]["topicName"] for t in topics} == declared
        assert all(t["metadata"]["name"].startswith(f"{release}-mercato-") for t in topics)


def test_kafka_prefix_reaches_every_name(render: Any, helpers: Any) -> None:
    """tls-values.yaml shares a Strimzi cluster and sets kafka.prefix from the release: topics,
    the consumer group, the services' settings, and the rules that select by topic follow."""
    prefix = "mercato.shop."
    documents = render("tls")
    topics = {d["spec"]["topicName"] for d in documents if d["kind"] == "KafkaTopic"}
    assert topics
    assert all(t.startswith(prefix) for t in topics)
    config = helpers.by_kind(documents, "ConfigMap")
    analytics = config["shop-mercato-analytics"]["data"]
    assert analytics["MERCATO_ANALYTICS_CONSUMER_GROUP"] == f"{prefix}mercato.analytics"
    assert analytics["MERCATO_ANALYTICS_ORDERS_EVENTS_TOPIC"] == f"{prefix}mercato.orders.events.v1"
    assert config["shop-mercato-orders"]["data"]["MERCATO_ORDERS_EVENTS_TOPIC"] == (
        f"{prefix}mercato.orders.events.v1"
    )
    # The gateway derives its topics from the contracts, under the same prefix.
    assert config["shop-mercato-gateway"]["data"]["MERCATO_GATEWAY_KAFKA_TOPIC_PREFIX"] == prefix
    rules = json.dumps(next(d for d in documents if d["kind"] == "PrometheusRule")["spec"])
    assert f'topic=\\"{prefix}mercato.orders.events.v1\\"' in rules
    assert 'topic=\\"mercato.orders.events.v1\\"' not in rules
    overview = config["shop-mercato-dashboard-overview"]["data"]["mercato-overview.json"]
    assert f'topic=\\"{prefix}mercato.orders.events.v1\\"' in overview


def test_kafka_prefix_reaches_the_topic_job_and_keda(render: Any, helpers: Any) -> None:
    documents = render("operators", "--set", "kafka.prefix=blue.")
    scaled = helpers.by_kind(documents, "ScaledObject")["shop-mercato-analytics"]
    assert scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"] == "blue.mercato.analytics"
    job_config = helpers.by_kind(render("default", "--set", "kafka.prefix=blue."), "ConfigMap")[
        "shop-mercato-topics"
    ]
    names = {topic["name"] for topic in json.loads(job_config["data"]["topics.json"])}
    assert names
    assert all(name.startswith("blue.mercato.") for name in names)


def test_consumer_group_default_is_the_manifests(render: Any, helpers: Any) -> None:
    """mercato.<service>, as services/services.toml says, when no prefix is set."""
    config = helpers.by_kind(render("default"), "ConfigMap")["shop-mercato-analytics"]["data"]
    assert config["MERCATO_ANALYTICS_CONSUMER_GROUP"] == "mercato.analytics"
