"""Fixtures of the suite in real pods (`make test-pods`): the local control plane with a real
node (tools/k8s.py, tools/node.py), the service images (tools/images.py), the pods' own stack
bound to the node's bridge address, and the chart installed with external stores pointing at it.

What this session starts, it stops at the end; what was already running is left running.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from mercato_devstack.config import StackConfig
from mercato_devstack.manifest import load_manifest
from mercato_devstack.private_suite import isolated_env, link_cache
from mercato_devstack.stack import Stack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pods_support import (
    CHART,
    FULLNAME,
    INSTALL_TIMEOUT,
    NAMESPACE,
    RELEASE,
    STACK_DEFAULTS,
    TIMINGS,
    VALUES,
    Images,
    Release,
    describe_failures,
    helm,
    load_tool,
    put_secret,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pods: the suite in real pods on a real node (make test-pods)"
    )


#: The first test also sets up the session: on a cold machine the pods' stack builds FerretDB
#: and fetches Kafka, the images and Helm are built, and `helm install --wait` pulls and starts
#: every pod (`make test-pods` builds the node's programs before pytest starts).
SESSION_TIMEOUT_SECONDS = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.pods)
            item.add_marker(pytest.mark.timeout(SESSION_TIMEOUT_SECONDS))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("pods: timings")
        for stage, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{stage:<40} {seconds:7.1f} s")


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    """The control plane and the real node, brought up when not running."""
    k8s, node_tool = load_tool("k8s"), load_tool("node")
    version = k8s.k8s_version()
    plane, node = k8s.ControlPlane(version), node_tool.Node(version)
    started = time.monotonic()
    with k8s.exclusive():
        plane_here = not plane.running()
        node_here = not node.running()
    try:
        with k8s.exclusive():
            plane.up()
            node.up()
        TIMINGS["control plane and real node up"] = time.monotonic() - started
        yield Path(k8s.KUBECONFIG)
    finally:
        # Also after a failed start: nothing this session started is left running.
        with k8s.exclusive():
            if node_here:
                node.down()
            if plane_here:
                plane.down()


@pytest.fixture(scope="session")
def api(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture(scope="session")
def pods_stack(kubeconfig: Path) -> Iterator[Stack]:
    """PostgreSQL, Kafka, FerretDB and Redis on the node's bridge address (after the node made
    the bridge), reachable from the pods and from here."""
    env = isolated_env(
        {**STACK_DEFAULTS, "MERCATO_STACK_HOST": load_tool("node").POD_GATEWAY},
        override_prefix="MERCATO_PODS_",
    )
    link_cache(env)
    stack = Stack(StackConfig.from_env(env))
    started_here = not any(status.pid for status in stack.status())
    started = time.monotonic()
    stack.up()
    TIMINGS["pods' stack up"] = time.monotonic() - started
    try:
        yield stack
    finally:
        if started_here:
            stack.down()


@pytest.fixture(scope="session")
def service_images() -> Images:
    """Every service image of this checkout in the local registry (built when missing)."""
    images = load_tool("images")
    tools = images.ensure_tools()
    images.up(tools)
    started = time.monotonic()
    built = images.build_images(tools)
    TIMINGS["service images (built or reused)"] = time.monotonic() - started
    return Images(
        registry=images.REGISTRY,
        tag=images.revision().tag,
        digests={image.service: image.digest for image in built},
    )


def kept_secrets(state_dir: Path) -> dict[str, str]:
    """The secrets the pods' databases remember (the signing keys are encrypted with the KEK,
    the admin is created once): made at the first session, reused while the stack's data is."""
    path = state_dir / "secrets.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    values = {
        "admin_password": secrets.token_urlsafe(18),
        "signing_key_kek": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    path.write_text(json.dumps(values))
    path.chmod(0o600)
    return values


@pytest.fixture(scope="session")
def release(api: client.ApiClient, pods_stack: Stack, service_images: Images) -> Iterator[Release]:
    """The chart installed into the namespace `pods` (Pod Security restricted) with `--wait`:
    the hook Jobs (migrations, topics) ran as real Jobs and every pod is Ready."""
    core = client.CoreV1Api(api)
    labels = {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
    }
    try:
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE, labels=labels))
        )
    except client.ApiException as error:
        if error.status != 409:
            raise
    stack_config = pods_stack.config
    manifest = load_manifest(stack_config.manifest_file)
    kept = kept_secrets(stack_config.state_dir)
    admin_password = kept["admin_password"]
    clients = []
    for service in manifest.services:
        if service.store == "postgres":
            put_secret(
                core,
                f"{FULLNAME}-{service.name}-db",
                {"url": pods_stack.postgres_dsn(service.name)},
            )
        elif service.store == "mongo":
            put_secret(core, f"{FULLNAME}-{service.name}-mongodb", {"url": pods_stack.mongo_uri})
        if service.client_scopes:
            secret = secrets.token_urlsafe(24)
            clients.append(
                {"client_id": service.name, "secret": secret, "scopes": list(service.client_scopes)}
            )
            put_secret(core, f"{FULLNAME}-{service.name}-service-client", {"secret": secret})
    put_secret(core, f"{FULLNAME}-auth-service-clients", {"clients.json": json.dumps(clients)})
    put_secret(
        core,
        f"{FULLNAME}-auth-signing",
        {"kek": kept["signing_key_kek"]},
    )
    put_secret(core, f"{FULLNAME}-admin", {"password": admin_password})

    sets = [
        f"image.registry={service_images.registry}",
        f"image.tag={service_images.tag}",
        *(
            f"components.{name}.image.digest={digest}"
            for name, digest in service_images.digests.items()
        ),
    ]
    started = time.monotonic()
    installed = helm(
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--values",
        str(VALUES),
        *(arg for value in sets for arg in ("--set", value)),
        "--wait",
        "--wait-for-jobs",
        "--timeout",
        INSTALL_TIMEOUT,
    )
    if installed.returncode != 0:
        pytest.fail(
            f"helm install failed:\n{installed.stderr}\n" + describe_failures(core),
            pytrace=False,
        )
    TIMINGS["helm install --wait (hooks, every pod Ready)"] = time.monotonic() - started
    service = core.read_namespaced_service(f"{FULLNAME}-gateway", NAMESPACE)
    port = next(p.port for p in service.spec.ports if p.name == "http")
    yield Release(
        gateway_url=f"http://{service.spec.cluster_ip}:{port}",
        admin_password=admin_password,
        stack=pods_stack,
        core=core,
        digests=service_images.digests,
    )
    if os.environ.get("MERCATO_PODS_KEEP") != "1":
        uninstalled = helm(
            "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m"
        )
        assert uninstalled.returncode == 0, uninstalled.stderr
