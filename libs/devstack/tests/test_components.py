"""What the components share: the files they write and the Go programs they build (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mercato_devstack import install
from mercato_devstack.components.redis import Redis
from mercato_devstack.config import StackConfig
from mercato_devstack.stripe_mock import StripeMock


def _config(tmp_path: Path) -> StackConfig:
    return StackConfig.from_env({"MERCATO_REPO_ROOT": str(tmp_path)})


def test_a_generated_file_is_headed_by_where_it_comes_from(tmp_path: Path) -> None:
    redis = Redis(_config(tmp_path))
    redis.dir.mkdir(parents=True)
    path = redis.write_generated("example.conf", "a 1\n")
    assert path == redis.dir / "example.conf"
    assert path.read_text() == (
        "# Written by mercato_devstack on every start; edit the code, not this file.\na 1\n"
    )


def test_a_go_program_is_built_into_its_binary_with_the_shared_module_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, Path, dict[str, object]]] = []

    def go_install(package: str, target: Path, **options: object) -> Path:
        calls.append((package, target, options))
        return target

    monkeypatch.setattr(install, "go_install", go_install)
    config = _config(tmp_path)
    mock = StripeMock(config)
    mock.prepare()
    [(package, target, options)] = calls
    assert package.startswith("github.com/stripe/stripe-mock@v")
    assert target == mock.binary
    assert options == {"cache_dir": config.cache_dir / "go", "purpose": "stripe-mock"}
