"""schemathesis against /openapi.json of the whole running suite (every service real).

A bounded property-based run through the gateway with an admin token: no 5xx, documented status
codes, content types and headers, and responses valid against their schemas. It runs last in
this folder (it creates products and orders with generated values).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import Api, RunningSuite

pytestmark = pytest.mark.e2e

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


def test_schemathesis_on_the_whole_suite(suite: RunningSuite, admin: Api, tmp_path: Path) -> None:
    max_examples = os.environ.get("MERCATO_E2E_SCHEMATHESIS_EXAMPLES", "10")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{suite.url}/openapi.json",
            "--checks",
            CHECKS,
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            max_examples,
            "--seed",
            "20261127",
            "--workers",
            "1",
            "--request-timeout",
            "15",
            "--header",
            f"Authorization: Bearer {admin.token}",
            "--no-shrink",
            "--suppress-health-check",
            "all",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=420,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # The run must have exercised every operation, not stopped at loading the schema.
    (report,) = tmp_path.glob("*.xml")
    operations = ElementTree.parse(report).getroot().iter("testcase")
    assert len(list(operations)) >= 25, output[-3000:]
