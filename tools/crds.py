"""The CRDs of the chart's optional operators, fetched from pinned registry packages.

    python tools/crds.py fetch [--strict]
                            write `.state/crds/<group>_<plural>.yaml`, one CRD a file, for every
                            CRD of `CRDS` below; print those that could not be had and why
                            (exit 1 then only with --strict)
    python tools/crds.py compare [--dir DIR] [--reference REF]
                            compare DIR (default .state/crds) with REF (default ../shared/crds)
                            file by file: identical, the same after a YAML parse, or what differs
    python tools/crds.py dir
                            print `crd_dir()`: where the tests find the CRDs

The tests validate the chart against these CRDs (tests/deploy, tests/k8s). Third-party files
are never committed: each CRD comes, at build time, from a package pinned in `SOURCES` (Go
modules through the Go module proxy with `go mod download`, into the module cache
`.state/cache/go/mod` shared with tools/gotool.py; Maven artifacts with `mvn` into
`.state/cache/m2`, shared with the local Kafka), and only the CRD files are kept, under the
git-ignored `.state/crds/`. Every file is checked against its pinned sha256, so a changed
upstream is noticed; a file already there with the pinned digest is not fetched again.

How a CRD is taken out of its package (`Crd.extract`):

* ``file``: the file at `path`, byte for byte.
* ``document``: the one document named `<plural>.<group>` of the multi-document file at `path`
  (Istio ships all its CRDs in one file), split at the text level (nothing is re-serialised),
  written after a `---` line, without the comment lines heading it.
* ``helm-metadata``: a Helm template (Linkerd's CRD chart) whose only directives are in
  `metadata`: the directive lines are removed there, and the keys they leave empty.
* ``generator``: Strimzi publishes no CRD file in any package; its CRDs are generated from the
  annotated model classes of `io.strimzi:api` by its own `io.strimzi:crd-generator` (both from
  Maven, same release), with the arguments of its build. `path` is the model class. The
  generator's classes need Java >= 21: JAVA_HOME, `java` on PATH or a JDK under /usr/lib/jvm.

All files are byte-identical to ../shared/crds except the MongoDBCommunity CRD (the Apache-2.0
predecessor module, see `SOURCES`); the Linkerd CRDs are not served here (see `SOURCES`):
`python tools/crds.py compare` shows it.

`crd_dir()` is what the tests call: MERCATO_CRDS_DIR, else ../shared/crds beside the project,
else `.state/crds` after a fetch.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mercato_devstack import install

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("MERCATO_STATE_DIR", ROOT / ".state"))
#: The module cache of the project's Go builds (tools/gotool.py): kept, shared.
GO_CACHE = STATE / "cache" / "go"
#: Where `fetch` writes the CRDs (git-ignored); `crd_dir` falls back to it.
OUT = STATE / "crds"
SHARED = ROOT.parent / "shared" / "crds"
M2 = STATE / "cache" / "m2"
DOWNLOAD_TIMEOUT_SECONDS = 900


@dataclass(frozen=True)
class GoModule:
    """A Go module version, as `go mod download -json module@version` gets it."""

    module: str
    version: str
    #: The upstream release it is (a tag that is no semantic version has a pseudo-version).
    release: str

    @property
    def spec(self) -> str:
        return f"{self.module}@{self.version}"


@dataclass(frozen=True)
class MavenGenerator:
    """Jars from Maven, run as `java -cp JARS main ARGS CLASS=OUT...` to generate CRDs."""

    #: (group:artifact:version, sha256 of the jar): checked before the jars are run.
    jars: tuple[tuple[str, str], ...]
    main: str
    args: tuple[str, ...]
    #: The oldest Java major version the jars run on (their class file version).
    java: int
    release: str

    @property
    def spec(self) -> str:
        return " + ".join(coordinates for coordinates, _ in self.jars)


Source = GoModule | MavenGenerator
Extract = Literal["file", "document", "helm-metadata", "generator"]


@dataclass(frozen=True)
class Crd:
    """One CRD file: `<spec.group>_<spec.names.plural>.yaml`."""

    name: str
    #: A key of `SOURCES`.
    source: str
    #: In the module (a folder when it ends in `/`), or the model class of a generator.
    path: str
    extract: Extract
    sha256: str

    @property
    def group(self) -> str:
        return self.name.removesuffix(".yaml").partition("_")[0]

    @property
    def plural(self) -> str:
        return self.name.removesuffix(".yaml").partition("_")[2]

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def file_path(self) -> str:
        """`path`, or for a folder (ending in `/`) the file of this CRD's name in it."""
        return self.path + self.name if self.path.endswith("/") else self.path


STRIMZI = "1.2.0"
SOURCES: dict[str, Source] = {
    "prometheus-operator": GoModule(
        "github.com/prometheus-operator/prometheus-operator", "v0.93.0", "v0.93.0"
    ),
    "keda": GoModule("github.com/kedacore/keda/v2", "v2.20.2", "v2.20.2"),
    "cloudnative-pg": GoModule("github.com/cloudnative-pg/cloudnative-pg", "v1.30.0", "v1.30.0"),
    "gateway-api": GoModule("sigs.k8s.io/gateway-api", "v1.6.1", "v1.6.1"),
    # deploy/crds/ holds plain CRDs (no Helm directive): the chart's templates are made from them.
    "cert-manager": GoModule("github.com/cert-manager/cert-manager", "v1.21.1", "v1.21.1"),
    # Istio's API module generates the CRD file that istio/istio 1.30.3 ships unchanged as
    # manifests/charts/base/files/crd-all.gen.yaml (istio/istio has no semver tags, and no
    # pseudo-version of 1.30.3 is served; the API module is 1.3 MB instead of 11 MB).
    "istio": GoModule("istio.io/api", "v1.30.3", "1.30.3"),
    # The tag version-2.20 (commit eadc1acf79ad) as a pseudo-version: refused by the Go module
    # proxy here ("This module version is not available", 403); no other registry carries
    # Linkerd's CRDs. Kept so a proxy that serves it works unchanged.
    "linkerd": GoModule(
        "github.com/linkerd/linkerd2", "v0.5.1-0.20260622225159-eadc1acf79ad", "version-2.20"
    ),
    # The Apache-2.0-only predecessor of mongodb/mongodb-kubernetes (dual-licensed; its 1.10.0 is
    # not served by the Go module proxy here). Its MongoDBCommunity schema is a strict subset of
    # 1.10.0's: no spec.clusterDomain, no spec.users[].connectionStringSecretAnnotations.
    "mongodb": GoModule("github.com/mongodb/mongodb-kubernetes-operator", "v0.13.0", "v0.13.0"),
    # The arguments of the `generate-crd-co-install-v1` execution of Strimzi's api/pom.xml, which
    # writes packaging/install/cluster-operator/04x-Crd-*.yaml; the generator needs Java 21.
    "strimzi": MavenGenerator(
        jars=(
            (
                f"io.strimzi:api:{STRIMZI}",
                "566961ae5e5646a001ae91312beda5cba3a5d467e740e205e1b761754335fe4e",
            ),
            (
                f"io.strimzi:crd-generator:{STRIMZI}",
                "76bb2430e702a1e6a24c071d26c865d5e9572cbc630d176d3b912033ae23ed00",
            ),
        ),
        main="io.strimzi.crdgenerator.CrdGenerator",
        args=(
            "--label",
            "app:strimzi",
            "--label",
            "strimzi.io/crd-install:true",
            "--target-kube",
            "1.16+",
            "--crd-api-version",
            "v1",
            "--api-versions",
            "v1",
            "--storage-version",
            "v1",
            "--yaml",
        ),
        java=21,
        release=STRIMZI,
    ),
}

#: A `path` that ends in `/` is a folder: the file named as the CRD in it.
_PROM = "example/prometheus-operator-crd/"
_BASES = "config/crd/bases/"
_STANDARD = "config/crd/standard/"
_CERT_MANAGER = "deploy/crds/"
_ISTIO = "kubernetes/customresourcedefinitions.gen.yaml"
_LINKERD = "charts/linkerd-crds/templates/policy"
_STRIMZI = "io.strimzi.api.kafka.model"
CRDS: tuple[Crd, ...] = (
    Crd(
        "monitoring.coreos.com_servicemonitors.yaml",
        "prometheus-operator",
        _PROM,
        "file",
        "a99047972c9dd7679ce2050b9968e8a08773492e671b3e17abd476d42aa78a32",
    ),
    Crd(
        "monitoring.coreos.com_podmonitors.yaml",
        "prometheus-operator",
        _PROM,
        "file",
        "45a93443daa687d3654f7e9631909ff7edcdf3ec09c5e60251b74aa2722aee5d",
    ),
    Crd(
        "monitoring.coreos.com_prometheusrules.yaml",
        "prometheus-operator",
        _PROM,
        "file",
        "78be98554b9c8506ab2b4f4feb91c5f3a56e536a0a510f3a8e876a459970d56d",
    ),
    Crd(
        "keda.sh_scaledobjects.yaml",
        "keda",
        _BASES,
        "file",
        "af35555862a83933b074af14ad439c4b4ceabaf4daa3e9338e9b23e36d308d80",
    ),
    Crd(
        "keda.sh_triggerauthentications.yaml",
        "keda",
        _BASES,
        "file",
        "275307b4cb19ca8f0f506a879282aa4c67587ac16ec757f494d6585c5c185d65",
    ),
    Crd(
        "kafka.strimzi.io_kafkas.yaml",
        "strimzi",
        f"{_STRIMZI}.kafka.Kafka",
        "generator",
        "b5b27fc8d52068a77cde7c40d47c068023c7b4e92fc266c45200db2d2506392a",
    ),
    Crd(
        "kafka.strimzi.io_kafkatopics.yaml",
        "strimzi",
        f"{_STRIMZI}.topic.KafkaTopic",
        "generator",
        "36390f0731c699448076d4ee739e8b7f331d083e91a7fb71500aaa830ab1127e",
    ),
    Crd(
        "kafka.strimzi.io_kafkanodepools.yaml",
        "strimzi",
        f"{_STRIMZI}.nodepool.KafkaNodePool",
        "generator",
        "411c1b32ef8c1a6408ac9d4fe791115a6ce2b41107204588f976a3ed19be2430",
    ),
    Crd(
        "security.istio.io_peerauthentications.yaml",
        "istio",
        _ISTIO,
        "document",
        "cde5f5adc189bcac85c5b007bae06d13214585a55899a0c67a11818e97c1d9b8",
    ),
    Crd(
        "security.istio.io_authorizationpolicies.yaml",
        "istio",
        _ISTIO,
        "document",
        "2c9cd1ec25096dac7f2e3d3c7106a0af98e2bcc586d144fda067314ef2aef937",
    ),
    Crd(
        "security.istio.io_requestauthentications.yaml",
        "istio",
        _ISTIO,
        "document",
        "034b23da457e94e5b0f9af782860171d42ebd2458ab4d56f289d1a78fe6fee37",
    ),
    Crd(
        "networking.istio.io_virtualservices.yaml",
        "istio",
        _ISTIO,
        "document",
        "7794e30291506172c5d49f246be4870b6e4ac5d3424df30e24d77581ac144d81",
    ),
    Crd(
        "networking.istio.io_destinationrules.yaml",
        "istio",
        _ISTIO,
        "document",
        "533a1d0462351effb9fcbf53843ac483370e9747df72a714c186b2a7c6c47d3a",
    ),
    Crd(
        "networking.istio.io_gateways.yaml",
        "istio",
        _ISTIO,
        "document",
        "6d5c5cc9c91656de5b357df3c2d6268c5d7020829c359ac9116986542e52687f",
    ),
    Crd(
        "policy.linkerd.io_servers.yaml",
        "linkerd",
        f"{_LINKERD}/server.yaml",
        "helm-metadata",
        "a630e666de8d0db721e48a216f3eb5612bb4135c3c11b72c1f996d0c4647acaa",
    ),
    Crd(
        "policy.linkerd.io_authorizationpolicies.yaml",
        "linkerd",
        f"{_LINKERD}/authorization-policy.yaml",
        "helm-metadata",
        "c20f10e30f60b11f89f105be6210e3fa86b8409d3a82eb8909786b0da30ff30f",
    ),
    Crd(
        "policy.linkerd.io_httproutes.yaml",
        "linkerd",
        f"{_LINKERD}/httproute.yaml",
        "helm-metadata",
        "b0804642df36bd87f78d7a77ebb8977784088d8059a7c4fed34c834d060cd1c2",
    ),
    Crd(
        "policy.linkerd.io_meshtlsauthentications.yaml",
        "linkerd",
        f"{_LINKERD}/meshtls-authentication.yaml",
        "helm-metadata",
        "f6c27610adbc2296b7b43e6a620ad28b6cfc733bb1a1abd503e878796cd14d53",
    ),
    Crd(
        "policy.linkerd.io_serverauthorizations.yaml",
        "linkerd",
        f"{_LINKERD}/server-authorization.yaml",
        "helm-metadata",
        "3c7deeb36e5fe4988c3b226b8d27426dcdcf499adc6523e557082ba288f595a8",
    ),
    Crd(
        "policy.linkerd.io_networkauthentications.yaml",
        "linkerd",
        f"{_LINKERD}/network-authentication.yaml",
        "helm-metadata",
        "7edc750ce9736c8c624108b8367fa3ee0eecff3bea8f6fdab1f4cc09bc534137",
    ),
    Crd(
        "postgresql.cnpg.io_clusters.yaml",
        "cloudnative-pg",
        _BASES,
        "file",
        "ae47f4a00f6e998faef57e480f9a3960cd48ea16a79270861fc7442601507472",
    ),
    Crd(
        "mongodbcommunity.mongodb.com_mongodbcommunity.yaml",
        "mongodb",
        _BASES,
        "file",
        "15927cb1b9b4ace543128a0f399f9a43e6035882db921c8373d4aee695271e34",
    ),
    Crd(
        "gateway.networking.k8s.io_httproutes.yaml",
        "gateway-api",
        _STANDARD,
        "file",
        "a424a0d6c953b162e71d1d97bb7e75012d8f1ac264e7274f2763d1b96ab39852",
    ),
    Crd(
        "gateway.networking.k8s.io_gateways.yaml",
        "gateway-api",
        _STANDARD,
        "file",
        "25b885f5870b8fff1ae82efa2628b2761cef3745900c2aecf8fb76629a01255a",
    ),
    Crd(
        "gateway.networking.k8s.io_grpcroutes.yaml",
        "gateway-api",
        _STANDARD,
        "file",
        "53a8d029da8f07e55d3fa58a5cf6de5950dab19fbb8d6a8082fb5e51ca5ef6fc",
    ),
    Crd(
        "cert-manager.io_certificates.yaml",
        "cert-manager",
        _CERT_MANAGER,
        "file",
        "7ad91029c00ec959d54215b19d3b1a9b7e0247eaa60f987151c2b70d8661f8af",
    ),
    Crd(
        "cert-manager.io_clusterissuers.yaml",
        "cert-manager",
        _CERT_MANAGER,
        "file",
        "30008001b78aafb8e110af61359561104b5fafc3a4dc6ac0013245d0ee3fe4ca",
    ),
    Crd(
        "cert-manager.io_issuers.yaml",
        "cert-manager",
        _CERT_MANAGER,
        "file",
        "05e37efb02777e0362d24269fa103c2fc11419f9c85e31854ef873e5d9e5c5cc",
    ),
)


class SourceError(Exception):
    """A source that could not be had: the reason, for the list of missing CRDs."""


# Pure parts: document splitting, template stripping, digests --------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(crd: Crd, data: bytes) -> None:
    """Raise SourceError when ``data`` is not the pinned file of ``crd``."""
    digest = sha256(data)
    if digest != crd.sha256:
        raise SourceError(
            f"sha256 {digest} is not the pinned {crd.sha256}: the upstream file changed "
            "(update its pin in tools/crds.py once checked)"
        )


def split_documents(text: str) -> list[str]:
    """The documents of a multi-document YAML text, split at its `---` lines, each as its text
    (line ends kept) without the comment lines that head it; empty documents are left out."""
    documents: list[str] = []
    current: list[str] = []

    def close() -> None:
        lines = list(current)
        while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
            lines.pop(0)
        if any(line.strip() for line in lines):
            documents.append("".join(lines))
        current.clear()

    for line in text.splitlines(keepends=True):
        if line.rstrip("\r\n").rstrip() == "---":
            close()
        else:
            current.append(line)
    close()
    return documents


def document_name(document: str) -> str | None:
    """`metadata.name` of a YAML document, read from its text (no parse): the `name:` line at
    the first indentation under the top-level `metadata:` line."""
    lines = iter(document.splitlines())
    for line in lines:
        if line.rstrip() == "metadata:":
            break
    else:
        return None
    child_indent = None
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = _indent(line)
        if indent == 0:
            return None
        child_indent = indent if child_indent is None else child_indent
        key, _, value = line.strip().partition(":")
        if indent == child_indent and key == "name":
            return value.strip().strip("'\"") or None
    return None


def select_document(text: str, name: str) -> str:
    """The document named ``name`` of a multi-document text, as a file of its own."""
    found = [doc for doc in split_documents(text) if document_name(doc) == name]
    if len(found) != 1:
        raise SourceError(f"{len(found)} documents named {name} (expected 1)")
    return "---\n" + found[0]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _top_level_key(line: str) -> str | None:
    if not line.strip() or line[0] in " \t#-" or ":" not in line:
        return None
    return line.partition(":")[0]


def strip_helm_metadata(text: str) -> str:
    """A Helm template whose only directives are in `metadata` as a plain manifest: the lines
    with a directive in the `metadata` block are removed, then the keys left without a value
    there (e.g. `annotations:`, `labels:`). SourceError when a directive remains elsewhere."""
    lines = text.splitlines(keepends=True)
    in_metadata = False
    kept: list[tuple[str, bool]] = []
    for line in lines:
        key = _top_level_key(line)
        if key is not None:
            in_metadata = key == "metadata"
        if in_metadata and "{{" in line:
            continue
        kept.append((line, in_metadata))
    changed = True
    while changed:
        changed = False
        for index, (line, metadata_line) in enumerate(kept):
            body = line.rstrip("\r\n").rstrip()
            if not metadata_line or _indent(line) == 0 or not body.endswith(":"):
                continue
            following = next((text for text, _ in kept[index + 1 :] if text.strip()), "")
            if _indent(following) <= _indent(line):
                del kept[index]
                changed = True
                break
    result = "".join(line for line, _ in kept)
    if "{{" in result or "}}" in result:
        raise SourceError("Helm directives outside metadata: render the chart instead")
    return result


def load_documents(data: bytes) -> list[Any]:
    """The non-empty documents of a YAML text (libyaml's safe loader when there)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    documents = yaml.load_all(data, Loader=loader)
    return [document for document in documents if document is not None]


def check_crd(crd: Crd, data: bytes) -> None:
    """One YAML document, a CustomResourceDefinition named `<plural>.<group>` as the file."""
    import yaml

    try:
        documents = load_documents(data)
    except yaml.YAMLError as error:
        raise SourceError(f"not YAML: {error}") from error
    if len(documents) != 1:
        raise SourceError(f"{len(documents)} YAML documents, expected one CRD")
    document = documents[0] if isinstance(documents[0], dict) else {}
    spec = document.get("spec") or {}
    name = (document.get("metadata") or {}).get("name")
    group, plural = spec.get("group"), (spec.get("names") or {}).get("plural")
    problems = []
    if document.get("kind") != "CustomResourceDefinition":
        problems.append(f"kind {document.get('kind')}")
    if name != crd.crd_name:
        problems.append(f"metadata.name {name}")
    if (group, plural) != (crd.group, crd.plural):
        problems.append(f"group/plural {group}/{plural}")
    if problems:
        raise SourceError(f"not the CRD {crd.crd_name}: {', '.join(problems)}")


def differences(left: Any, right: Any, path: str = "") -> Iterator[str]:
    """Where two parsed YAML documents differ, as `path: what` lines."""
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in right:
                yield f"{where}: only in the first"
            elif key not in left:
                yield f"{where}: only in the second"
            else:
                yield from differences(left[key], right[key], where)
    elif isinstance(left, list) and isinstance(right, list):
        for index, (one, other) in enumerate(zip(left, right, strict=False)):
            yield from differences(one, other, f"{path}[{index}]")
        if len(left) != len(right):
            yield f"{path}: {len(left)} items against {len(right)}"
    elif left != right:
        yield f"{path}: {_short(left)} against {_short(right)}"


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# Sources ------------------------------------------------------------------------------------


@dataclass
class Download:
    """What getting one source cost."""

    spec: str
    size: int = 0
    seconds: float = 0.0
    cached: bool = False


@dataclass
class Result:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    downloads: list[Download] = field(default_factory=list)


def _escape_module(path: str) -> str:
    """A module path as the module cache spells it (upper case as `!` + lower case)."""
    return re.sub(r"[A-Z]", lambda match: "!" + match.group(0).lower(), path)


def go_download(source: GoModule) -> tuple[Path, Download]:
    """The extracted module of ``source`` in the module cache, downloaded when not there."""
    go = install.find_go()
    if go is None:
        raise SourceError("Go is needed to download its module (go mod download); install Go")
    cached = (GO_CACHE / "mod" / f"{_escape_module(source.module)}@{source.version}").is_dir()
    GO_CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        result = subprocess.run(  # noqa: S603 - fixed tool, no shell
            [go, "mod", "download", "-json", source.spec],
            cwd=GO_CACHE,
            env=install.go_env(GO_CACHE, GOWORK="off", GO111MODULE="on"),
            capture_output=True,
            text=True,
            check=False,
            timeout=DOWNLOAD_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as error:
        raise SourceError(f"go mod download took over {error.timeout} s") from error
    seconds = time.monotonic() - started
    try:
        info = json.loads(result.stdout) if result.stdout.strip() else {}
    except json.JSONDecodeError:
        info = {}
    error_text = info.get("Error") or (result.stderr.strip() if result.returncode else "")
    if result.returncode != 0 or error_text or not info.get("Dir"):
        reason = " ".join((error_text or f"exit {result.returncode}").split())
        raise SourceError(f"go mod download: {reason.removeprefix(source.spec + ': ')}")
    zip_path = Path(info.get("Zip", ""))
    size = zip_path.stat().st_size if zip_path.is_file() else 0
    return Path(info["Dir"]), Download(source.spec, size, seconds, cached)


def _jar_path(coordinates: str) -> Path:
    group, artifact, version = coordinates.split(":")
    return M2.joinpath(*group.split("."), artifact, version, f"{artifact}-{version}.jar")


def maven_jars(source: MavenGenerator) -> tuple[list[Path], Download]:
    """The pinned jars in the local Maven repository, resolved with `mvn` when missing."""
    download = Download(source.spec, cached=True)
    started = time.monotonic()
    jars = []
    for coordinates, pinned in source.jars:
        jar = _jar_path(coordinates)
        if not (jar.is_file() and sha256(jar.read_bytes()) == pinned):
            mvn = shutil.which("mvn")
            if mvn is None:
                raise SourceError(f"Maven (mvn) is needed for {coordinates}: apt-get install maven")
            command = [
                mvn,
                "-q",
                "-B",
                "-Dstyle.color=never",
                f"-Dmaven.repo.local={M2}",
                "dependency:get",
                f"-Dartifact={coordinates}",
                "-Dtransitive=false",
            ]
            try:
                result = subprocess.run(  # noqa: S603 - fixed tool, no shell
                    command,
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=DOWNLOAD_TIMEOUT_SECONDS,
                )
            except subprocess.TimeoutExpired as error:
                raise SourceError(f"mvn dependency:get took over {error.timeout} s") from error
            if result.returncode != 0 or not jar.is_file():
                output = " ".join((result.stdout + result.stderr).split())[-600:]
                raise SourceError(f"mvn dependency:get {coordinates} failed: {output}")
            digest = sha256(jar.read_bytes())
            if digest != pinned:
                raise SourceError(f"{coordinates}: jar sha256 {digest} is not the pinned {pinned}")
            download.cached = False
        download.size += jar.stat().st_size
        jars.append(jar)
    download.seconds = time.monotonic() - started
    return jars, download


def _java_major(java: str) -> int | None:
    try:
        result = subprocess.run(  # noqa: S603 - a java binary found on this machine
            [java, "-version"], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java(minimum: int) -> str:
    """A Java of at least ``minimum``: JAVA_HOME, PATH, then the JDKs under /usr/lib/jvm."""
    candidates = []
    if java_home := os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(java_home) / "bin" / "java"))
    if on_path := shutil.which("java"):
        candidates.append(on_path)
    candidates += [str(path) for path in sorted(Path("/usr/lib/jvm").glob("*/bin/java"))]
    found = []
    for candidate in dict.fromkeys(candidates):
        major = _java_major(candidate)
        if major is not None and major >= minimum:
            return candidate
        found.append(f"{candidate} ({major})")
    raise SourceError(
        f"needs Java >= {minimum}; found {', '.join(found) or 'none'} "
        "(set JAVA_HOME to a newer JDK)"
    )


def generate(source: MavenGenerator, crds: list[Crd]) -> tuple[dict[str, bytes], Download]:
    """The files of ``crds`` written by the generator of ``source``."""
    jars, download = maven_jars(source)
    java = find_java(source.java)
    with tempfile.TemporaryDirectory(prefix="crds-") as work:
        outputs = [f"{crd.path}={Path(work) / crd.name}" for crd in crds]
        command = [java, "-cp", os.pathsep.join(map(str, jars)), source.main, *source.args]
        try:
            result = subprocess.run(  # noqa: S603 - pinned jars, no shell
                [*command, *outputs],
                capture_output=True,
                text=True,
                check=False,
                timeout=DOWNLOAD_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired as error:
            raise SourceError(f"{source.main} took over {error.timeout} s") from error
        if result.returncode != 0:
            output = " ".join((result.stdout + result.stderr).split())[-600:]
            raise SourceError(f"{source.main} failed: {output}")
        files = {}
        for crd in crds:
            path = Path(work) / crd.name
            if path.is_file():
                files[crd.name] = path.read_bytes()
    return files, download


def extract(crd: Crd, module_dir: Path) -> bytes:
    """The CRD file of ``crd`` from its extracted Go module."""
    path = module_dir / crd.file_path
    if not path.is_file():
        raise SourceError(f"no {crd.file_path} in the module")
    if crd.extract == "file":
        return path.read_bytes()
    text = path.read_text(encoding="utf-8")
    if crd.extract == "document":
        return select_document(text, crd.crd_name).encode()
    if crd.extract == "helm-metadata":
        return strip_helm_metadata(text).encode()
    raise SourceError(f"unknown extraction {crd.extract!r} for a Go module")


# Fetching -----------------------------------------------------------------------------------


def _has_pinned(crd: Crd, folder: Path) -> bool:
    path = folder / crd.name
    return path.is_file() and sha256(path.read_bytes()) == crd.sha256


def _write(folder: Path, name: str, data: bytes) -> None:
    fd, partial = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.chmod(partial, 0o644)
    os.replace(partial, folder / name)


def _source_files(name: str, crds: list[Crd], result: Result) -> dict[str, bytes]:
    """The files of ``crds`` from source ``name``; a failing CRD is recorded as missing."""
    source = SOURCES[name]
    files: dict[str, bytes] = {}
    if isinstance(source, MavenGenerator):
        generated, download = generate(source, crds)
        result.downloads.append(download)
        for crd in crds:
            if crd.name in generated:
                files[crd.name] = generated[crd.name]
            else:
                result.missing[crd.name] = f"{source.main} wrote no file for {crd.path}"
        return files
    module_dir, download = go_download(source)
    result.downloads.append(download)
    for crd in crds:
        try:
            files[crd.name] = extract(crd, module_dir)
        except (SourceError, OSError, UnicodeDecodeError) as error:
            result.missing[crd.name] = f"{source.spec}/{crd.file_path}: {error}"
    return files


def fetch(folder: Path = OUT, *, log: bool = True) -> Result:
    """Every CRD of `CRDS` in ``folder``: kept when it has its pinned digest, else taken from
    its source. CRDs that could not be had are in `Result.missing`, with the reason."""
    result = Result()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = {crd.name for crd in CRDS}
        for stale in folder.glob("*.yaml"):
            if stale.name not in wanted:
                stale.unlink()
        by_source: dict[str, list[Crd]] = {}
        for crd in CRDS:
            if _has_pinned(crd, folder):
                result.unchanged.append(crd.name)
            else:
                (folder / crd.name).unlink(missing_ok=True)
                by_source.setdefault(crd.source, []).append(crd)
        for name, crds in by_source.items():
            source = SOURCES[name]
            if log:
                print(f"crds: {name}: {source.spec}", file=sys.stderr, flush=True)
            try:
                files = _source_files(name, crds, result)
            except (SourceError, OSError) as error:
                for crd in crds:
                    result.missing[crd.name] = f"{source.spec}: {error}"
                continue
            for crd in crds:
                if crd.name not in files:
                    continue
                try:
                    check_digest(crd, files[crd.name])
                    check_crd(crd, files[crd.name])
                except SourceError as error:
                    result.missing[crd.name] = f"{source.spec}/{crd.file_path}: {error}"
                    continue
                _write(folder, crd.name, files[crd.name])
                result.written.append(crd.name)
    return result


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def report(result: Result, folder: Path = OUT) -> None:
    for download in result.downloads:
        how = "in the cache" if download.cached else "downloaded"
        print(f"  {download.spec}: {_mib(download.size)} {how}, {download.seconds:.1f} s")
    total = len(CRDS) - len(result.missing)
    where = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    print(
        f"{total} of {len(CRDS)} CRDs in {where} ({len(result.written)} written, "
        f"{len(result.unchanged)} already there)"
    )
    if result.downloads:
        size = sum(download.size for download in result.downloads if not download.cached)
        seconds = sum(download.seconds for download in result.downloads)
        print(f"downloaded {_mib(size)} in {seconds:.1f} s")
    for line in missing_lines(result):
        print(line)


def missing_lines(result: Result) -> list[str]:
    """The missing CRDs, those of one reason together."""
    if not result.missing:
        return []
    by_reason: dict[str, list[str]] = {}
    for name, reason in sorted(result.missing.items()):
        by_reason.setdefault(reason, []).append(name)
    lines = [f"missing {len(result.missing)} of {len(CRDS)} CRDs:"]
    for reason, names in by_reason.items():
        lines += [f"  {name}" for name in names]
        lines.append(f"    why: {reason}")
    return lines


# For the tests ------------------------------------------------------------------------------


def _has_yaml(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.yaml"))


def crd_dir() -> Path | None:
    """The folder of CRD files the tests validate against: MERCATO_CRDS_DIR when set (relative
    to the project), else ../shared/crds beside the project when there, else `.state/crds`
    after `fetch` (which may leave some out: they are printed). None, with the reason printed,
    when there is none."""
    configured = os.environ.get("MERCATO_CRDS_DIR")
    if configured:
        path = Path(configured)
        path = path if path.is_absolute() else ROOT / path
        if _has_yaml(path):
            return path
        print(f"crds: MERCATO_CRDS_DIR={configured} holds no *.yaml", file=sys.stderr)
        return None
    if _has_yaml(SHARED):
        return SHARED
    try:
        result = fetch(log=False)
    except OSError as error:
        print(f"crds: no CRD folder: fetching into {OUT} failed: {error}", file=sys.stderr)
        return None
    for line in missing_lines(result):
        print(f"crds: {line}", file=sys.stderr)
    if not _has_yaml(OUT):
        print(
            f"crds: no CRD folder: {SHARED} is absent and no CRD could be fetched", file=sys.stderr
        )
        return None
    return OUT


def missing(folder: Path) -> list[str]:
    """The CRD files of `CRDS` that ``folder`` lacks."""
    return [crd.name for crd in CRDS if not (folder / crd.name).is_file()]


# Comparing ----------------------------------------------------------------------------------


def compare(folder: Path, reference: Path, *, limit: int = 8) -> list[str]:
    """One line (and details) a CRD: how ``folder``'s file relates to ``reference``'s."""
    lines = []
    for crd in CRDS:
        mine, theirs = folder / crd.name, reference / crd.name
        if not mine.is_file() or not theirs.is_file():
            absent = " and ".join(str(p.parent) for p in (mine, theirs) if not p.is_file())
            lines.append(f"{crd.name}: not in {absent}")
            continue
        left, right = mine.read_bytes(), theirs.read_bytes()
        if left == right:
            lines.append(f"{crd.name}: identical")
            continue
        documents = load_documents(left), load_documents(right)
        if len(documents[0]) == len(documents[1]) == 1:
            documents = documents[0][0], documents[1][0]
        found = list(differences(*documents))
        if not found:
            lines.append(f"{crd.name}: same after YAML parse (bytes differ)")
            continue
        lines.append(
            f"{crd.name}: differs in {len(found)} places (first: {folder}, second: {reference})"
        )
        lines += [f"    {line}" for line in found[:limit]]
        if len(found) > limit:
            lines.append(f"    ... and {len(found) - limit} more")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/crds.py", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_parser = sub.add_parser("fetch")
    fetch_parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a CRD could not be had"
    )
    compare_parser = sub.add_parser("compare")
    compare_parser.add_argument("--dir", type=Path, default=OUT)
    compare_parser.add_argument("--reference", type=Path, default=SHARED)
    sub.add_parser("dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            result = fetch()
            report(result)
            return 1 if args.strict and result.missing else 0
        if args.command == "compare":
            for line in compare(args.dir, args.reference):
                print(line)
        elif args.command == "dir":
            folder = crd_dir()
            if folder is None:
                return 1
            print(folder)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
