"""`make observe`: Prometheus and Jaeger beside the local suite, built once from Go modules.

Prometheus scrapes every service's metrics port with the labels the chart's ServiceMonitors give
in a cluster (``namespace``, ``component``, ``job``, ``pod``, ``container``), so the chart's own
rule file (deploy/helm/mercato/files/prometheus-rules.yaml, its placeholders filled as the chart
fills them) and the Grafana dashboards' queries run unchanged on the local suite. Exemplar
storage is on: latency histograms carry the trace ids of sampled requests. Its web UI (the
targets, query, alerts and rules pages) is built from the module's sources with pnpm and embedded
in the binary (see :meth:`Prometheus.prepare`).

Jaeger (v2, the OpenTelemetry Collector based all-in-one, in-memory storage) receives the
services' spans over OTLP/gRPC and serves its query API (its Go module carries no built UI: the
binary serves a placeholder page instead).

Both are components of the local stack's kind (pid file, port, probe, log under
``.state/stack/<name>/``), started by the suite when observing and stopped with it
(``make stop``). ``MERCATO_PROMETHEUS_PORT`` (9090), ``MERCATO_JAEGER_PORT`` (16686) and
``MERCATO_JAEGER_OTLP_PORT`` (4317) move them; ``MERCATO_PROMETHEUS_INTERVAL`` sets the scrape
and rule evaluation interval (5s). ``MERCATO_OBSERVE_ALERT_FOR`` replaces every alert's ``for:``
in the loaded copy of the rules, for tests and demonstrations that cannot wait minutes; the
shipped rules are never changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mercato_devstack import install, process
from mercato_devstack.components.base import BuildSteps, GoProgram, build_key
from mercato_devstack.config import StackConfig

PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
#: The Go module version of Prometheus 3.16.0 (Prometheus 3.x is published as v0.3xx.y).
PROMETHEUS_VERSION = "v0.316.0"
PROMETHEUS_RELEASE = "3.16.0"
#: pnpm, which builds Prometheus' web UI (a pnpm workspace in web/ui of the module). 12.x runs on
#: Node.js 20 (11.x needs Node.js 22).
PNPM_VERSION = "12.25.1"
#: Added to the UI workspace's pnpm ``overrides``. The UI's lockfile pins
#: @mantine/code-highlight 9.7.2, which the npm registry does not serve; 9.6.2 is the newest
#: release before it. Every other package stays as the lockfile pins it.
PROMETHEUS_UI_OVERRIDES: dict[str, str] = {"@mantine/code-highlight": "9.6.2"}
#: Jaeger v2 (cmd/jaeger, the OpenTelemetry Collector based binary) is tagged v1.75.0 as a module.
JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_VERSION = "v1.75.0"

#: The namespace label every local series carries: the value the chart's rules are filled with.
LOCAL_NAMESPACE = "mercato"
DEFAULT_INTERVAL = "5s"

CHART_DIR = Path("deploy") / "helm" / "mercato"
RULES_FILE = CHART_DIR / "files" / "prometheus-rules.yaml"
DASHBOARDS_DIR = CHART_DIR / "files" / "dashboards"
#: Grafana's interval variables, as a dashboard over the last 15 minutes fills them.
RATE_INTERVAL = "1m"
RANGE = "15m"


def fill_placeholders(text: str, values: Mapping[str, str]) -> str:
    """The rule file with its placeholders replaced, as the chart's template does it."""
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def runbook_base_url(repo_root: Path) -> str:
    """The chart's default ``prometheusRule.runbookBaseUrl``."""
    values = yaml.safe_load((repo_root / CHART_DIR / "values.yaml").read_text())
    return str(values["prometheusRule"]["runbookBaseUrl"])


def local_rules(repo_root: Path, alert_for: str | None = None) -> dict[str, Any]:
    """The chart's rules as Prometheus loads them for the local suite."""
    text = fill_placeholders(
        (repo_root / RULES_FILE).read_text(),
        {"__NAMESPACE__": LOCAL_NAMESPACE, "__RUNBOOK_BASE_URL__": runbook_base_url(repo_root)},
    )
    rules: dict[str, Any] = yaml.safe_load(text)
    if alert_for:
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = alert_for
    return rules


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel of a dashboard the chart ships."""

    dashboard: str
    dashboard_title: str
    panel: str
    kind: str
    unit: str
    description: str
    expr: str
    legend: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel}: {self.expr}"


def panel_queries(repo_root: Path) -> Iterator[PanelQuery]:
    """Every query of every panel of every dashboard, in the dashboards' order."""

    def walk(model: dict[str, Any], panels: list[dict[str, Any]]) -> Iterator[PanelQuery]:
        for panel in panels:
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    yield PanelQuery(
                        dashboard=model["uid"],
                        dashboard_title=model["title"],
                        panel=panel["title"],
                        kind=panel["type"],
                        unit=panel.get("fieldConfig", {}).get("defaults", {}).get("unit", ""),
                        description=panel.get("description", ""),
                        expr=target["expr"],
                        legend=target.get("legendFormat", ""),
                    )
            yield from walk(model, panel.get("panels") or [])

    for path in sorted((repo_root / DASHBOARDS_DIR).glob("*.json")):
        model = json.loads(path.read_text())
        yield from walk(model, model["panels"])


def dashboard_variables(routes: Sequence[str]) -> dict[str, str]:
    """The dashboards' variables as Grafana fills them over the local suite with "All" selected
    (a multi-value variable becomes a regex of its values): ``routes`` are the gateway's."""
    return {
        "$__rate_interval": RATE_INTERVAL,
        "$__range": RANGE,
        "$namespace": LOCAL_NAMESPACE,
        # Escaped as Grafana escapes them: for the regex, then for PromQL's string literal.
        "$route": "|".join(re.escape(route).replace("\\", "\\\\") for route in routes) or ".*",
    }


def expand(expr: str, variables: Mapping[str, str]) -> str:
    """``expr`` with the dashboard variables replaced (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    return expr


#: Where the gateway's route values come from (the `route` variable's own query).
ROUTES_SELECTOR = (
    f'http_server_requests_total{{component="gateway", namespace="{LOCAL_NAMESPACE}"}}'
)


@dataclass(frozen=True)
class ScrapeTarget:
    """One process to scrape: its component name and metrics address."""

    component: str
    address: str

    def labels(self) -> dict[str, str]:
        """What the chart's ServiceMonitor and the Prometheus Operator add in a cluster."""
        return {
            "namespace": LOCAL_NAMESPACE,
            "component": self.component,
            "job": f"mercato-{self.component}",
            "service": f"mercato-{self.component}",
            "container": self.component,
            "pod": f"{self.component}-local",
        }


def with_overrides(workspace: str, overrides: Mapping[str, str]) -> str:
    """The text of a pnpm-workspace.yaml with ``overrides`` added to its ``overrides``."""
    settings = yaml.safe_load(workspace) or {}
    settings["overrides"] = {**(settings.get("overrides") or {}), **overrides}
    return yaml.safe_dump(settings, sort_keys=False)


def http_probe(url: str) -> str | None:
    """None when ``url`` answers 200, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL
            return None if response.status == 200 else f"HTTP {response.status} from {url}"
    except (urllib.error.URLError, OSError) as error:
        return f"{url}: {error}"


class _Observer(GoProgram):
    """A Go program of `make observe`, its settings written into its folder on every start."""

    def _write(self, file_name: str, settings: dict[str, Any]) -> Path:
        return self.write_generated(file_name, yaml.safe_dump(settings, sort_keys=False))


class Prometheus(_Observer):
    name = "prometheus"
    version = PROMETHEUS_VERSION

    def __init__(
        self,
        config: StackConfig,
        targets: Sequence[ScrapeTarget] = (),
        *,
        interval: str = DEFAULT_INTERVAL,
        alert_for: str | None = None,
    ) -> None:
        super().__init__(config)
        self.targets = tuple(targets)
        self.interval = interval
        self.alert_for = alert_for

    @property
    def port(self) -> int:
        return self.config.prometheus_port

    #: The cloud service discovery plugins are never used here (half the binary); the web UI's
    #: assets are embedded (builtinassets).
    TAGS = "netgo,remove_all_sd,builtinassets"
    LDFLAGS = " ".join(
        [
            "-s -w",
            f"-X github.com/prometheus/common/version.Version={PROMETHEUS_RELEASE}",
            "-X github.com/prometheus/common/version.Branch=HEAD",
        ]
    )

    @classmethod
    def build_key(cls) -> str:
        """Every input of the build: a binary built with other ones is built again."""
        return build_key(
            module=f"{PROMETHEUS_MODULE}@{PROMETHEUS_VERSION}",
            pnpm=PNPM_VERSION,
            overrides=PROMETHEUS_UI_OVERRIDES,
            tags=cls.TAGS,
            ldflags=cls.LDFLAGS,
        )

    def prepare(self) -> None:
        """Build Prometheus with its web UI, once.

        The module (from the Go module proxy) carries the UI's sources but not its built assets:
        they are built with pnpm from the npm registry, gzipped and embedded as Prometheus'
        release build does it. Only the binary is kept: node_modules, the pnpm store (~450 MB) and
        the Go build cache (~850 MB) are removed after the build, because they would speed up
        only a rebuild after a pin changes, and by little: installing and building the UI takes
        under a minute of a ~3 min build, compiling Prometheus the rest (a new version
        recompiles most of it anyway). The Go module cache is the stack's shared one.
        """
        go = install.find_go()
        if go is None:
            raise self.fail("Go (1.26 or later) is needed once to build Prometheus")
        npm = process.which("npm")
        if npm is None:
            raise self.fail(
                "Node.js (20.19 or later) and npm are needed once to build Prometheus' web UI"
            )
        self._build_once(
            self.build_key(),
            lambda work, steps: self._build(work, steps, go, npm),
            what=f"Prometheus {PROMETHEUS_RELEASE} with its web UI",
            steps=8,
        )

    def _build(self, work: Path, steps: BuildSteps, go: str, npm: str) -> Path:
        go_env = install.go_env(
            self.config.cache_dir / "go",
            GOFLAGS="-modcacherw -buildvcs=false -trimpath",
            GOCACHE=str(work / "go-build"),
            # The module's go.work names folders its zip does not carry.
            GOWORK="off",
        )
        module = f"{PROMETHEUS_MODULE}@{PROMETHEUS_VERSION}"
        info = json.loads(
            steps.run(
                "go mod download",
                [go, "mod", "download", "-json", module],
                cwd=work,
                env=go_env,
                capture=True,
            )
        )
        source = work / "src"
        with steps.step("copy the module's source", f"{info['Dir']} -> {source}"):
            shutil.copytree(info["Dir"], source)
            for path in (source, *source.rglob("*")):
                path.chmod(path.stat().st_mode | 0o200)
        tools = work / "tools"
        steps.run(
            "install pnpm",
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(tools),
             f"pnpm@{PNPM_VERSION}"],
            cwd=work,
            env=os.environ,
        )  # fmt: skip
        ui = source / "web" / "ui"
        workspace = ui / "pnpm-workspace.yaml"
        with steps.step("add the pnpm overrides", json.dumps(PROMETHEUS_UI_OVERRIDES)):
            workspace.write_text(with_overrides(workspace.read_text(), PROMETHEUS_UI_OVERRIDES))
        node_env = {**os.environ, "PATH": f"{tools / 'node_modules' / '.bin'}{os.pathsep}"
                    f"{os.environ.get('PATH', '')}"}  # fmt: skip
        pnpm = str(tools / "node_modules" / ".bin" / "pnpm")
        steps.run(
            "pnpm install",
            # The lockfile is rewritten for the overrides (hence not frozen), and its
            # supply-chain check, which fails on the overridden package's entry, is skipped.
            [pnpm, "install", "--no-frozen-lockfile", "--trust-lockfile",
             "--store-dir", str(work / "pnpm-store")],
            cwd=ui,
            env=node_env,
        )  # fmt: skip
        steps.run(
            "build the web UI",
            [pnpm, "run", "build:mantine-ui"],
            cwd=ui,
            # A CI variable of the caller's (CI runners set one) is cleared: the UI is built
            # as on a developer's machine.
            env={**node_env, "CI": ""},
        )
        steps.run(
            "compress and list the UI's assets",
            ["bash", "scripts/compress_assets.sh"],
            cwd=source,
            env=os.environ,
        )
        built = work / "prometheus"
        steps.run(
            "go build",
            [go, "build", "-tags", self.TAGS, "-ldflags", self.LDFLAGS, "-o", str(built),
             "./cmd/prometheus"],
            cwd=source,
            env=go_env,
        )  # fmt: skip
        return built

    def _write_config(self) -> Path:
        rules = self.dir / "rules.yaml"
        rules.write_text(yaml.safe_dump(local_rules(self.config.repo_root, self.alert_for)))
        settings = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": target.component,
                    "static_configs": [{"targets": [target.address]}],
                    # The job label the chart's ServiceMonitor gives replaces the scrape job's.
                    "relabel_configs": [
                        {"target_label": key, "replacement": value}
                        for key, value in target.labels().items()
                    ],
                }
                for target in self.targets
            ],
        }
        return self._write("prometheus.yml", settings)

    def launch(self) -> None:
        config = self._write_config()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._launch(
            f"--config.file={config}",
            f"--storage.tsdb.path={self.data_dir}",
            "--storage.tsdb.retention.time=2d",
            f"--web.listen-address={self.config.host}:{self.port}",
            "--enable-feature=exemplar-storage",
        )

    def probe(self) -> str | None:
        return http_probe(f"{self.url}/-/ready")


class Jaeger(_Observer):
    name = "jaeger"
    version = JAEGER_VERSION

    @property
    def port(self) -> int:
        return self.config.jaeger_port

    @property
    def query_grpc_port(self) -> int:
        """The query API over gRPC: the port below the UI's (16685 by default, as Jaeger's)."""
        return self.port - 1

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.query_grpc_port, self.config.jaeger_otlp_port)

    @property
    def otlp_endpoint(self) -> str:
        return f"http://{self.config.host}:{self.config.jaeger_otlp_port}"

    def prepare(self) -> None:
        # Jaeger's go.mod replaces a module, so `go install` refuses it: built as its own module.
        install.go_build_module(
            f"{JAEGER_MODULE}@{JAEGER_VERSION}",
            "cmd/jaeger",
            self.binary,
            cache_dir=self.config.cache_dir / "go",
            purpose="Jaeger",
        )

    def _write_config(self) -> Path:
        host = self.config.host
        settings = {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                # Its own metrics would take the collector's default port 8888.
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            },
            "extensions": {
                "jaeger_query": {
                    "storage": {"traces": "memory"},
                    "http": {"endpoint": f"{host}:{self.port}"},
                    "grpc": {"endpoint": f"{host}:{self.query_grpc_port}"},
                },
                "jaeger_storage": {"backends": {"memory": {"memory": {"max_traces": 100000}}}},
            },
            "receivers": {
                "otlp": {
                    "protocols": {"grpc": {"endpoint": f"{host}:{self.config.jaeger_otlp_port}"}}
                }
            },
            "processors": {"batch": {}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memory"}},
        }
        return self._write("jaeger.yaml", settings)

    def launch(self) -> None:
        self._launch(f"--config={self._write_config()}")

    def probe(self) -> str | None:
        return http_probe(f"{self.url}/api/services")


def observers(
    config: StackConfig,
    targets: Sequence[ScrapeTarget] = (),
    environ: Mapping[str, str] | None = None,
) -> tuple[Jaeger, Prometheus]:
    """Jaeger and Prometheus for ``config``'s stack, in start order."""
    environ = environ or {}
    return (
        Jaeger(config),
        Prometheus(
            config,
            targets,
            interval=environ.get("MERCATO_PROMETHEUS_INTERVAL") or DEFAULT_INTERVAL,
            alert_for=environ.get("MERCATO_OBSERVE_ALERT_FOR") or None,
        ),
    )


__all__ = [
    "JAEGER_VERSION",
    "LOCAL_NAMESPACE",
    "PNPM_VERSION",
    "PROMETHEUS_RELEASE",
    "PROMETHEUS_UI_OVERRIDES",
    "PROMETHEUS_VERSION",
    "Jaeger",
    "PanelQuery",
    "Prometheus",
    "ScrapeTarget",
    "dashboard_variables",
    "expand",
    "fill_placeholders",
    "local_rules",
    "observers",
    "panel_queries",
    "with_overrides",
]
