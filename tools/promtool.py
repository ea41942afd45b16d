"""Pinned promtool (Prometheus's rule checker and rule unit-test runner) for the alert checks.

    python tools/promtool.py path       print the path of the pinned promtool binary, building it
                                        first when missing (`go install` of its Go module)
    python tools/promtool.py version    the pinned version
    python tools/promtool.py test-rules `promtool check rules` on the chart's rule file, then its
                                        unit tests (`promtool test rules`) on a copy with test
                                        values in place of its placeholders
    python tools/promtool.py -- ARGS    run the pinned promtool with ARGS

promtool is built from Prometheus's Go module with the machine's Go toolchain into the git-ignored
`.state/tools/promtool-<version>/promtool` by `gotool.go_install` (module cache
`.state/cache/go/mod`, shared with the project's other Go builds). The `remove_all_sd` build tag
leaves out the cloud service discovery plugins, which rule checks and rule tests never use (the
binary is half the size).

The chart's rule file (deploy/helm/mercato/files/prometheus-rules.yaml) holds two placeholders
that the chart fills in (templates/prometheusrule.yaml): `__NAMESPACE__` and
`__RUNBOOK_BASE_URL__`. Its unit tests (`files/prometheus-rules*.test.yaml`) expect the values
`TEST_PLACEHOLDERS` gives them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gotool import ROOT, TOOLS, ToolError, go_install  # tools/gotool.py

from mercato_devstack import observe
from mercato_devstack.observe import (  # one Prometheus version for promtool and `make observe`
    PROMETHEUS_MODULE,
    PROMETHEUS_RELEASE,
    fill_placeholders,
)
from mercato_devstack.observe import PROMETHEUS_VERSION as PROMTOOL_VERSION

#: The chart's rule file, the one `make observe` loads too.
RULES_FILE = ROOT / observe.RULES_FILE
CHART_FILES = RULES_FILE.parent
#: What the rule unit tests expect in place of the rule file's placeholders.
TEST_PLACEHOLDERS = {
    "__NAMESPACE__": "mercato",
    "__RUNBOOK_BASE_URL__": "https://runbooks.example.test/mercato",
}


def promtool_path() -> Path:
    return TOOLS / f"promtool-{PROMTOOL_VERSION}" / "promtool"


def ensure_promtool() -> Path:
    """The pinned promtool binary, built with `go install` when it is not there yet."""
    ldflags = " ".join(
        [
            "-s -w",
            f"-X github.com/prometheus/common/version.Version={PROMETHEUS_RELEASE}",
            "-X github.com/prometheus/common/version.Branch=HEAD",
        ]
    )
    return go_install(
        f"{PROMETHEUS_MODULE}/cmd/promtool@{PROMTOOL_VERSION}",
        promtool_path(),
        ldflags=ldflags,
        tags="netgo,remove_all_sd",
        purpose="promtool",
    )


def rule_test_files() -> list[Path]:
    return sorted(CHART_FILES.glob("prometheus-rules*.test.yaml"))


def check_rules(promtool: Path | None = None) -> list[subprocess.CompletedProcess[str]]:
    """`promtool check rules` on the rule file, then `promtool test rules` on its unit tests.

    The tests run in a temporary directory holding the rule file with `TEST_PLACEHOLDERS`
    filled in and the test files, which name it by its file name. Stops at the first failure;
    the results so far, each with its command in `args`.
    """
    binary = str(promtool or ensure_promtool())
    results = [_run([binary, "check", "rules", str(RULES_FILE)])]
    if results[-1].returncode != 0:
        return results
    with tempfile.TemporaryDirectory(prefix="promtool-rules-") as tmp:
        workdir = Path(tmp)
        filled = fill_placeholders(RULES_FILE.read_text(), TEST_PLACEHOLDERS)
        (workdir / RULES_FILE.name).write_text(filled)
        tests = []
        for test_file in rule_test_files():
            shutil.copyfile(test_file, workdir / test_file.name)
            tests.append(test_file.name)
        if not tests:
            raise ToolError(f"no prometheus-rules*.test.yaml next to {RULES_FILE}")
        results.append(_run([binary, "test", "rules", *tests], cwd=workdir))
    return results


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed tool, no shell
        command, cwd=cwd, capture_output=True, text=True, check=False
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/promtool.py", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("path")
    sub.add_parser("version")
    sub.add_parser("test-rules")
    sub.add_parser("run").add_argument("args", nargs=argparse.REMAINDER)
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["--"]:
        args_in = ["run", *args_in[1:]]
    args = parser.parse_args(args_in)
    try:
        if args.command == "path":
            print(ensure_promtool())
        elif args.command == "version":
            print(PROMTOOL_VERSION)
        elif args.command == "test-rules":
            for result in check_rules():
                print(f"$ {' '.join(map(str, result.args))}")
                print(result.stdout + result.stderr, end="")
                if result.returncode != 0:
                    return result.returncode
        elif args.command == "run":
            promtool = ensure_promtool()
            return subprocess.run([str(promtool), *args.args], check=False).returncode  # noqa: S603
    except ToolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
