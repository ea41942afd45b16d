"""Chart.yaml says where the chart comes from and what it installs (Artifact Hub), and the
chart's README documents every value as values.yaml does (tools/chart_readme.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

CHANGE_KINDS = {"added", "changed", "deprecated", "removed", "fixed", "security"}


@pytest.fixture(scope="module")
def chart(helpers: Any) -> dict[str, Any]:
    return yaml.load((helpers.CHART / "Chart.yaml").read_text(), Loader=yaml.CSafeLoader)


@pytest.fixture(scope="module")
def readme_tool(helpers: Any) -> ModuleType:
    return helpers.load_module(helpers.ROOT / "tools" / "chart_readme.py", "chart_readme")


def test_chart_says_where_it_comes_from(chart: dict[str, Any], helpers: Any) -> None:
    home = chart["home"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", home)
    assert chart["sources"]
    assert all(source.startswith(f"{home}/") for source in chart["sources"])
    assert chart["maintainers"]
    assert all(m["name"] for m in chart["maintainers"])
    # The icon is a URL of a file of this repository that exists.
    prefix = home.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert chart["icon"].startswith(prefix)
    assert (helpers.ROOT / chart["icon"].removeprefix(prefix)).is_file()
    assert chart["annotations"]["artifacthub.io/license"] == "Apache-2.0"


def test_artifacthub_images_are_the_default_images(
    chart: dict[str, Any], render: Any, helpers: Any
) -> None:
    listed = yaml.load(chart["annotations"]["artifacthub.io/images"], Loader=yaml.CSafeLoader)
    expected = [
        {"name": f"mercato-{c}", "image": f"mercato-{c}:{chart['appVersion']}"}
        for c in helpers.COMPONENTS
    ]
    assert sorted(listed, key=lambda i: i["name"]) == sorted(expected, key=lambda i: i["name"])
    values = yaml.load((helpers.CHART / "values.yaml").read_text(), Loader=yaml.CSafeLoader)
    assert values["image"]["tag"] == ""  # so the default tag is appVersion
    assert {values["components"][c]["image"]["repository"] for c in helpers.COMPONENTS} == {
        item["name"] for item in listed
    }


def test_artifacthub_changes(chart: dict[str, Any]) -> None:
    changes = yaml.load(chart["annotations"]["artifacthub.io/changes"], Loader=yaml.CSafeLoader)
    assert changes
    for change in changes:
        assert change["kind"] in CHANGE_KINDS
        assert change["description"].strip()
    for link in yaml.load(chart["annotations"]["artifacthub.io/links"], Loader=yaml.CSafeLoader):
        assert link["url"].startswith(chart["home"])


def test_readme_is_current(readme_tool: ModuleType, helpers: Any) -> None:
    found, expected = readme_tool.current(helpers.CHART)
    assert found == expected, (
        "deploy/helm/mercato/README.md is stale: run `python tools/chart_readme.py`"
    )


def test_readme_documents_every_value(readme_tool: ModuleType, helpers: Any) -> None:
    rows = readme_tool.rows((helpers.CHART / "values.yaml").read_text())
    keys = {row.key for row in rows}
    for key in ("config.tokenIssuer", "global.imageRegistry", "kafka.prefix",
                "componentDefaults.serviceAccount.annotations", "networkPolicy.dnsPorts",
                "tests.enabled", "extraApiVersions"):  # fmt: skip
        assert key in keys
    assert all(row.description for row in rows)


def test_readme_check_catches_drift(readme_tool: ModuleType, helpers: Any, tmp_path: Path) -> None:
    copy = tmp_path / "mercato"
    shutil.copytree(helpers.CHART, copy)
    assert readme_tool.main(["--check", "--chart", str(copy)]) == 0
    values = copy / "values.yaml"
    values.write_text(
        values.read_text().replace("# -- Log level of every service", "# -- Log level of all")
    )
    assert readme_tool.main(["--check", "--chart", str(copy)]) == 1
    assert readme_tool.main(["--chart", str(copy)]) == 0  # rewrites it
    assert readme_tool.main(["--check", "--chart", str(copy)]) == 0
    assert "Log level of all" in (copy / "README.md").read_text()


def test_readme_refuses_an_undocumented_value(readme_tool: ModuleType) -> None:
    text = "# -- Documented.\na: 1\nb:\n  # -- Documented too.\n  c: 2\n  d: 3\n"
    with pytest.raises(readme_tool.UndocumentedValueError, match=r"b\.d"):
        readme_tool.rows(text)
    # A documented map stands for what is below it.
    rows = readme_tool.rows("# -- A map.\nm:\n  x: 1\n  y: [1, 2]\n")
    assert [(r.key, r.default) for r in rows] == [("m", '{"x": 1, "y": [1, 2]}')]
