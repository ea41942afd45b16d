"""`helm test`: one Pod per component, with the component's own image, asks it the way its
clients do; the Pods are reachable by NetworkPolicy (and Istio) only where they must be, and
their script (files/chart-test.py) really answers 0 for a SERVING server, 1 otherwise."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .conftest import VALUES_SETS


def _test_pods(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["labels"]["app.kubernetes.io/component"].removesuffix("-test"): doc
        for doc in documents
        if doc["kind"] == "Pod"
    }


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_one_test_pod_per_component(render: Any, helpers: Any, values_set: str) -> None:
    documents = render(values_set)
    pods = _test_pods(documents)
    assert sorted(pods) == sorted(helpers.COMPONENTS)
    deployments = helpers.by_kind(documents, "Deployment")
    script = (helpers.CHART / "files" / "chart-test.py").read_text()
    for name, pod in pods.items():
        annotations = pod["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "test"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
        spec = pod["spec"]
        assert spec["restartPolicy"] == "Never"
        assert spec["activeDeadlineSeconds"] > 0
        assert spec["serviceAccountName"] == "shop-mercato-tests"
        (container,) = spec["containers"]
        deployment = deployments[f"shop-mercato-{name}"]
        # The component's own image: no other image (busybox, curl) is pulled.
        assert (
            container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        )
        assert container["command"] == ["python", "-c"]
        assert container["args"][0] == script
        port = {
            p["name"]: p["containerPort"]
            for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        host = f"shop-mercato-{name}.mercato.svc.cluster.local"
        if name == "gateway":
            scheme = "https" if values_set == "tls" else "http"
            assert container["args"][1:] == ["http", f"{scheme}://{host}:{port['http']}/readyz"]
        else:
            assert container["args"][1:] == ["grpc", f"{host}:{port['grpc']}"]
    # Their ServiceAccount: a release resource (hooks of another kind than Pod would break
    # `helm test --logs`), without a token.
    account = helpers.by_kind(documents, "ServiceAccount")["shop-mercato-tests"]
    assert "helm.sh/hook" not in (account["metadata"].get("annotations") or {})
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_network_policies_let_test_pods_reach_the_service_ports_only(
    render: Any, helpers: Any, values_set: str
) -> None:
    documents = render(values_set)
    policies = helpers.by_kind(documents, "NetworkPolicy")
    pods = _test_pods(documents)
    labels = next(iter(pods.values()))["metadata"]["labels"]
    for name in helpers.COMPONENTS:
        policy = policies[f"shop-mercato-{name}"]
        admitted = [
            rule
            for rule in policy["spec"]["ingress"]
            for peer in rule.get("from", [])
            if peer.get("podSelector", {}).get("matchLabels", {}).get("mercato.io/test") == "true"
        ]
        deployment = helpers.by_kind(documents, "Deployment")[f"shop-mercato-{name}"]
        ports = {
            p["name"]: p["containerPort"]
            for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        app = ports.get("grpc", ports.get("http"))
        assert [[p["port"] for p in rule["ports"]] for rule in admitted] == [[app]], name
    own = policies["shop-mercato-tests"]
    selector = own["spec"]["podSelector"]["matchLabels"]
    assert all(labels.get(key) == value for key, value in selector.items())
    assert own["spec"]["ingress"] == []
    egress_ports = sorted(
        p["port"] for rule in own["spec"]["egress"] for p in rule.get("ports", [])
    )
    assert egress_ports == sorted([53, 53, 50061, 50062, 50063, 50064, 8080])


def test_without_tests_nothing_of_them(render: Any, helpers: Any) -> None:
    documents = render("istio", "--set", "tests.enabled=false")
    assert _test_pods(documents) == {}
    assert "shop-mercato-tests" not in helpers.by_kind(documents, "ServiceAccount")
    for doc in documents:
        assert "mercato.io/test" not in str(doc.get("spec", {}))
        assert "shop-mercato-tests" not in str(doc.get("spec", {}))


def test_test_pods_in_meshes_and_under_tls(render: Any) -> None:
    # Linkerd: out of the mesh (its health route admits probeNetworks).
    for pod in _test_pods(render("linkerd")).values():
        assert pod["metadata"]["annotations"]["linkerd.io/inject"] == "disabled"
    # Istio (STRICT mTLS): in the mesh, the sidecar started first and stopped by the script.
    for pod in _test_pods(render("istio")).values():
        assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
        assert (
            "holdApplicationUntilProxyStarts"
            in pod["metadata"]["annotations"]["proxy.istio.io/config"]
        )
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert env["MERCATO_TEST_ISTIO"] == "true"
    # TLS: the component's own certificate (its clients' CA, and mutual TLS).
    for name, pod in _test_pods(render("tls")).items():
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == f"shop-mercato-{name}-tls"
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert env["MERCATO_TEST_TLS_DIR"] == "/etc/mercato/tls"


# The script itself, against real servers --------------------------------------------------------


@pytest.fixture(scope="module")
def script(helpers: Any) -> str:
    return (helpers.CHART / "files" / "chart-test.py").read_text()


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """As the Pod runs it: `python -c <script> <args>`."""
    return subprocess.run(
        [sys.executable, "-c", script, *args, "--wait-seconds", "0", "--timeout", "2"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_script_grpc(script: str, health_server: tuple[str, health.HealthServicer]) -> None:
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    serving = _run(script, "grpc", target)
    assert serving.returncode == 0, serving.stderr
    assert "SERVING" in serving.stdout
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    not_serving = _run(script, "grpc", target)
    assert not_serving.returncode == 1
    assert "NOT_SERVING" in not_serving.stderr
    unreachable = _run(script, "grpc", "127.0.0.1:1")
    assert unreachable.returncode == 1


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, int]]]:
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(state["status"] if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/readyz", state
    finally:
        server.shutdown()


def test_script_http(script: str, http_server: tuple[str, dict[str, int]]) -> None:
    url, state = http_server
    assert _run(script, "http", url).returncode == 0
    state["status"] = 503
    failed = _run(script, "http", url)
    assert failed.returncode == 1
    assert "HTTP 503" in failed.stderr
