"""Security scans: checkov on every rendered manifest (only written-down waivers), hadolint on
every Dockerfile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import VALUES_SETS

HERE = Path(__file__).resolve().parent


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed (a dev dependency: uv sync)"
    return found


def test_checkov(render: Any, tmp_path: Path) -> None:
    for values_set in VALUES_SETS:
        (tmp_path / f"{values_set}.yaml").write_text(yaml.safe_dump_all(render(values_set)))
    waivers = yaml.load((HERE / "checkov-waivers.yaml").read_text(), Loader=yaml.CSafeLoader)[
        "waivers"
    ]
    for waiver in waivers:
        assert len(waiver.get("reason", "").split()) >= 10, f"{waiver['check']}: write the reason"
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT_COLOR": "1"}
    result = subprocess.run(
        [_tool("checkov"), "-d", str(tmp_path), "--framework", "kubernetes", "--quiet",
         "--compact", "--skip-download", "-o", "json"],
        capture_output=True, text=True, env=env, check=False, timeout=240,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-3000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [check for report in reports for check in report["results"]["failed_checks"]]
    assert sum(report["summary"]["passed"] for report in reports) > 1000
    unwaived = sorted({f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in failed
                       if not any(_waives(waiver, c) for waiver in waivers)})  # fmt: skip
    assert not unwaived, "checkov findings without a waiver:\n" + "\n".join(unwaived)
    stale = [w["check"] for w in waivers if not any(_waives(w, c) for c in failed)]
    assert not stale, f"waivers that no longer fail (remove them): {sorted(stale)}"


def _waives(waiver: dict[str, Any], finding: dict[str, Any]) -> bool:
    """A waiver covers a finding of its check, on the resources its `resources` pattern matches
    (checkov's `Kind.namespace.name`), or on every resource when it has none."""
    if waiver["check"] != finding["check_id"]:
        return False
    pattern = waiver.get("resources")
    return pattern is None or re.fullmatch(pattern, finding["resource"]) is not None


def _dockerfiles() -> list[Path]:
    root = HERE.parents[1]
    return sorted(root.glob("services/*/Dockerfile"))


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: p.parent.name)
def test_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--config", str(HERE / "hadolint.yaml"), str(dockerfile)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore(helpers: Any) -> None:
    """The build context is the repository root: the ignore file keeps state and secrets out."""
    ignored = (helpers.ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".state", ".venv", "**/.venv", "**/__pycache__"):
        assert entry in ignored
