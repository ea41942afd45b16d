"""tools/graphql_schema.py: the committed SDL is the one the protos give, and the breaking check
tells a removed or retyped field from an added one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    sys.path.insert(0, str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location(
        "mercato_tools_graphql_schema", ROOT / "tools" / "graphql_schema.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_sdl_is_derived_from_the_protos(tool: ModuleType) -> None:
    assert (ROOT / "services" / "gateway" / "schema.graphql").read_text() == tool.current_sdl()


def test_breaking_changes_are_told_from_additions(tool: ModuleType) -> None:
    sdl = tool.current_sdl()
    assert tool.breaking_changes(sdl, sdl) == []
    product = sdl[sdl.index("type Product {") :]
    product = product[: product.index("}") + 1]
    without_name = sdl.replace(product, product.replace("  name: String\n", "", 1))
    assert without_name != sdl
    assert any("Product.name was removed" in c for c in tool.breaking_changes(sdl, without_name))
    # The other way round, a field was added: not breaking.
    assert tool.breaking_changes(without_name, sdl) == []
    retyped = sdl.replace(product, product.replace("  name: String\n", "  name: Int\n", 1))
    assert any("Product.name changed type" in c for c in tool.breaking_changes(sdl, retyped))
