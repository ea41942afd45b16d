"""The pure parts of tools/crds.py: document splitting, template stripping, digests, the pin
table and `crd_dir`'s configured folder. No network, no Go, no Java."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crds() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mercato_tools_crds", ROOT / "tools" / "crds.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def crd_text(plural: str, group: str, extra_metadata: str = "") -> str:
    return (
        "apiVersion: apiextensions.k8s.io/v1\n"
        "kind: CustomResourceDefinition\n"
        "metadata:\n"
        f"{extra_metadata}"
        f"  name: {plural}.{group}\n"
        "spec:\n"
        f"  group: {group}\n"
        "  names:\n"
        f"    plural: {plural}\n"
    )


BUNDLE = (
    "# DO NOT EDIT - Generated.\n"
    + crd_text("wasmplugins", "extensions.istio.io")
    + "---\n"
    + crd_text("gateways", "networking.istio.io", "  labels:\n    name: not-this-one\n")
    + "---\n"
    + "---\n"
    + crd_text("peerauthentications", "security.istio.io")
)


def test_split_documents_drops_heading_comments_and_empty_documents(crds: ModuleType) -> None:
    documents = crds.split_documents(BUNDLE)
    assert len(documents) == 3
    assert documents[0] == crd_text("wasmplugins", "extensions.istio.io")
    assert all(document.endswith("\n") and "---" not in document for document in documents)


def test_document_name_is_the_direct_child_of_metadata(crds: ModuleType) -> None:
    names = [crds.document_name(document) for document in crds.split_documents(BUNDLE)]
    assert names == [
        "wasmplugins.extensions.istio.io",
        "gateways.networking.istio.io",
        "peerauthentications.security.istio.io",
    ]
    assert crds.document_name("kind: List\nitems: []\n") is None


def test_select_document_writes_one_document_after_a_separator(crds: ModuleType) -> None:
    selected = crds.select_document(BUNDLE, "gateways.networking.istio.io")
    assert selected == "---\n" + crd_text(
        "gateways", "networking.istio.io", "  labels:\n    name: not-this-one\n"
    )
    with pytest.raises(crds.SourceError, match="0 documents named"):
        crds.select_document(BUNDLE, "sidecars.networking.istio.io")
    with pytest.raises(crds.SourceError, match="2 documents named"):
        crds.select_document(BUNDLE + "---\n" + BUNDLE, "gateways.networking.istio.io")


LINKERD_TEMPLATE = """---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servers.policy.linkerd.io
  annotations:
    {{ include "partials.annotations.created-by" . }}
  labels:
    helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
    linkerd.io/control-plane-ns: {{.Release.Namespace}}
spec:
  group: policy.linkerd.io
  names:
    kind: Server
    plural: servers
  scope: Namespaced
"""


def test_strip_helm_metadata_removes_directives_and_the_keys_they_empty(
    crds: ModuleType,
) -> None:
    assert crds.strip_helm_metadata(LINKERD_TEMPLATE) == (
        "---\n"
        "apiVersion: apiextensions.k8s.io/v1\n"
        "kind: CustomResourceDefinition\n"
        "metadata:\n"
        "  name: servers.policy.linkerd.io\n"
        "spec:\n"
        "  group: policy.linkerd.io\n"
        "  names:\n"
        "    kind: Server\n"
        "    plural: servers\n"
        "  scope: Namespaced\n"
    )


def test_strip_helm_metadata_keeps_what_is_left_of_a_block(crds: ModuleType) -> None:
    template = LINKERD_TEMPLATE.replace(
        "  labels:\n", "  labels:\n    app.kubernetes.io/part-of: linkerd\n"
    )
    stripped = crds.strip_helm_metadata(template)
    assert "  labels:\n    app.kubernetes.io/part-of: linkerd\nspec:\n" in stripped
    assert "annotations:" not in stripped


def test_strip_helm_metadata_refuses_directives_outside_metadata(crds: ModuleType) -> None:
    with pytest.raises(crds.SourceError, match="outside metadata"):
        crds.strip_helm_metadata(LINKERD_TEMPLATE + "  versions: {{ .Values.versions }}\n")


def test_check_digest_notices_a_changed_upstream(crds: ModuleType) -> None:
    data = crd_text("servers", "policy.linkerd.io").encode()
    crd = crds.Crd(
        "policy.linkerd.io_servers.yaml", "linkerd", "x/", "file", hashlib.sha256(data).hexdigest()
    )
    crds.check_digest(crd, data)
    with pytest.raises(crds.SourceError, match="not the pinned"):
        crds.check_digest(crd, data + b"# changed\n")


def test_check_crd_wants_the_crd_its_file_is_named_after(crds: ModuleType) -> None:
    crd = crds.Crd("policy.linkerd.io_servers.yaml", "linkerd", "x/", "file", "0" * 64)
    assert crd.file_path == "x/policy.linkerd.io_servers.yaml"
    crds.check_crd(crd, crd_text("servers", "policy.linkerd.io").encode())
    with pytest.raises(crds.SourceError, match=r"metadata\.name"):
        crds.check_crd(crd, crd_text("httproutes", "policy.linkerd.io").encode())
    text = crd_text("servers", "policy.linkerd.io")
    with pytest.raises(crds.SourceError, match="2 YAML documents"):
        crds.check_crd(crd, f"{text}---\n{text}".encode())


def test_differences_name_the_paths(crds: ModuleType) -> None:
    left = {"spec": {"versions": [{"name": "v1", "a": 1}], "only": True}}
    right = {"spec": {"versions": [{"name": "v1", "a": 2}, {"name": "v2"}]}}
    assert list(crds.differences(left, right)) == [
        "spec.only: only in the first",
        "spec.versions[0].a: 1 against 2",
        "spec.versions: 1 items against 2",
    ]
    assert list(crds.differences(left, left)) == []


def test_the_pin_table_is_complete(crds: ModuleType) -> None:
    names = [crd.name for crd in crds.CRDS]
    assert len(names) == len(set(names)) == 28
    for crd in crds.CRDS:
        assert re.fullmatch(r"[a-z0-9.-]+_[a-z0-9]+\.yaml", crd.name), crd.name
        assert re.fullmatch(r"[0-9a-f]{64}", crd.sha256), crd.name
        assert crd.source in crds.SOURCES, crd.name
        source = crds.SOURCES[crd.source]
        if crd.extract == "generator":
            assert isinstance(source, crds.MavenGenerator), crd.name
        else:
            assert isinstance(source, crds.GoModule), crd.name
            assert re.fullmatch(r"v\d+\.\d+\.\d+(-[0-9a-z.-]+)?", source.version), crd.name
    for source in crds.SOURCES.values():
        if isinstance(source, crds.MavenGenerator):
            assert all(re.fullmatch(r"[0-9a-f]{64}", pin) for _, pin in source.jars)


def test_crd_dir_takes_the_configured_folder(
    crds: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MERCATO_CRDS_DIR", str(tmp_path))
    assert crds.crd_dir() is None
    (tmp_path / "keda.sh_scaledobjects.yaml").write_text(crd_text("scaledobjects", "keda.sh"))
    assert crds.crd_dir() == tmp_path
    assert "keda.sh_scaledobjects.yaml" not in crds.missing(tmp_path)
    assert len(crds.missing(tmp_path)) == 27
