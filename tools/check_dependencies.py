"""Dependencies declared once and consistently across the workspace members (part of `make lint`).

For every member (``libs/*``, ``services/*``) this checks that:

* a package has the same version floor in every member that declares it;
* every declared dependency is imported somewhere in the member's ``src`` (nothing declared "just
  in case");
* every third-party or workspace package imported by the member's ``src`` is declared by it
  (nothing used only because another member happens to pull it in).

Import names are mapped to distributions with ``importlib.metadata.packages_distributions``, so
the check follows what is installed from ``uv.lock``. Exit status 1 lists every problem.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections import defaultdict
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Workspace members are installed editable, which packages_distributions does not map.
WORKSPACE = {
    "mercato": "mercato-contracts",
    "mercato_common": "mercato-common",
    "mercato_devstack": "mercato-devstack",
}
#: Modules that import a package their own distribution leaves optional: importing the module
#: uses that package too (python-json-logger has no "orjson" extra to declare instead).
OPTIONAL_IMPORTS = {"pythonjsonlogger.orjson": "orjson"}
_NAME = re.compile(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?\s*(.*)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pyproject: Path) -> dict[str, str]:
    """``{normalized distribution: version specifier}`` of a member's runtime dependencies."""
    project = tomllib.loads(pyproject.read_text())["project"]
    out: dict[str, str] = {}
    for requirement in project.get("dependencies", []):
        match = _NAME.match(requirement.strip())
        if match is None:
            raise SystemExit(f"{pyproject}: cannot read dependency {requirement!r}")
        out[normalize(match.group(1))] = match.group(3).strip()
    return out


def imported_modules(src: Path) -> set[str]:
    """Dotted names of every absolute import in the ``.py`` files under ``src``."""
    names: set[str] = set()
    for path in src.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


def distributions_of(modules: set[str], own: set[str]) -> set[str]:
    """The distributions providing ``modules`` (the standard library and ``own`` excluded)."""
    providers = packages_distributions()
    out: set[str] = set()
    for module in modules:
        top = module.split(".")[0]
        if top in own or top in sys.stdlib_module_names or top == "__future__":
            continue
        dists = {normalize(d) for d in providers.get(top, [])}
        if top in WORKSPACE:
            dists = {WORKSPACE[top]}
        elif top == "google" and module.startswith("google.protobuf"):
            dists = {"protobuf"}
        elif top == "google":
            dists = {"googleapis-common-protos"}
        elif top == "opentelemetry":
            dists = {_opentelemetry_dist(module)}
        out.update(dists)
        if module in OPTIONAL_IMPORTS:
            out.add(OPTIONAL_IMPORTS[module])
    return out


def _opentelemetry_dist(module: str) -> str:
    if module.startswith("opentelemetry.exporter.otlp.proto.grpc"):
        return "opentelemetry-exporter-otlp-proto-grpc"
    if module.startswith("opentelemetry.sdk"):
        return "opentelemetry-sdk"
    if module.startswith("opentelemetry.instrumentation."):
        # opentelemetry.instrumentation.<library> is opentelemetry-instrumentation-<library>.
        return "opentelemetry-instrumentation-" + module.split(".")[2]
    return "opentelemetry-api"


def main() -> int:
    problems: list[str] = []
    floors: dict[str, dict[str, str]] = defaultdict(dict)
    members = [*ROOT.glob("libs/*/pyproject.toml"), *ROOT.glob("services/*/pyproject.toml")]
    for pyproject in sorted(members):
        member = pyproject.parent.relative_to(ROOT)
        deps = declared(pyproject)
        for dist, spec in deps.items():
            floors[dist][str(member)] = spec
        src = pyproject.parent / "src"
        own = {path.name for path in src.iterdir() if path.is_dir()}
        used = distributions_of(imported_modules(src), own)
        for dist in sorted(set(deps) - used):
            problems.append(f"{member}: declares {dist} but never imports it")
        for dist in sorted(used - set(deps)):
            problems.append(f"{member}: imports {dist} without declaring it")
    for dist, specs in sorted(floors.items()):
        if len(set(specs.values())) > 1:
            listed = ", ".join(f"{member} {spec or '(none)'}" for member, spec in specs.items())
            problems.append(f"{dist}: different version floors: {listed}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
