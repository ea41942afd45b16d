"""Grafana dashboards of the suite, as code, written into the Helm chart.

    python tools/dashboards.py          write deploy/helm/mercato/files/dashboards/<uid>.json
    python tools/dashboards.py --check  fail when a committed file differs from what it would
                                        write, is missing, or is no longer built

The dashboards are described in tools/mercato_dashboards (Grafana Foundation SDK); the chart
ships each file as a ConfigMap for Grafana's dashboard sidecar (templates/dashboards.yaml). The
files are generated: change the code, never the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mercato_dashboards import DASHBOARDS, build

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "deploy" / "helm" / "mercato" / "files" / "dashboards"


def render_all() -> dict[str, str]:
    """File name and text of every dashboard: sorted keys, 2-space indent, final newline."""
    files = {}
    for describe in DASHBOARDS:
        model = build(describe())
        name = f"{model['uid']}.json"
        if name in files:
            raise ValueError(f"two dashboards have the uid {model['uid']}")
        files[name] = json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return files


def stale(files: dict[str, str], output: Path = OUTPUT) -> list[str]:
    """How the committed files differ from `files` (empty when they are up to date)."""
    problems = []
    for name, content in sorted(files.items()):
        path = output / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.read_text() != content:
            problems.append(f"{name} differs from what tools/dashboards.py builds")
    problems += [
        f"{path.name} is no longer built by tools/dashboards.py"
        for path in sorted(output.glob("*.json"))
        if path.name not in files
    ]
    return problems


def write(files: dict[str, str], output: Path = OUTPUT) -> None:
    output.mkdir(parents=True, exist_ok=True)
    for path in output.glob("*.json"):
        if path.name not in files:
            path.unlink()
    for name, content in files.items():
        (output / name).write_text(content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/dashboards.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="fail when the committed files are out of date"
    )
    args = parser.parse_args(argv)
    files = render_all()
    if not args.check:
        write(files)
        return 0
    problems = stale(files)
    if problems:
        print(
            f"{OUTPUT.relative_to(ROOT)} is out of date; run `python tools/dashboards.py`:",
            file=sys.stderr,
        )
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
