"""What the components share: the files they write and the Go programs they build (no processes)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from mercato_devstack import install, observe
from mercato_devstack.components.base import BuildSteps, GoProgram, build_key
from mercato_devstack.components.kafka import Kafka
from mercato_devstack.components.redis import Redis
from mercato_devstack.config import StackConfig
from mercato_devstack.errors import ComponentError
from mercato_devstack.observe import Prometheus, with_overrides
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


def test_a_build_key_names_its_inputs_in_a_stable_order() -> None:
    assert build_key(b="2", a={"y": "1", "x": "0"}) == '{"a":{"x":"0","y":"1"},"b":"2"}'
    assert build_key(a="1", b="2") == build_key(b="2", a="1")
    assert build_key(a="1") != build_key(a="2")


def test_prometheus_is_built_again_when_a_pin_of_its_ui_build_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = Prometheus.build_key()
    for pin in (observe.PROMETHEUS_VERSION, observe.PNPM_VERSION, "9.6.2", "builtinassets"):
        assert pin in key
    monkeypatch.setattr(observe, "PNPM_VERSION", "0.0.1")
    assert Prometheus.build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(observe, "PROMETHEUS_UI_OVERRIDES", {"@mantine/code-highlight": "9.6.1"})
    assert Prometheus.build_key() != key


def test_the_ui_workspace_gets_the_overrides_and_keeps_its_settings() -> None:
    workspace = (
        'packages:\n  - "mantine-ui"\n  - "module/*"\n'
        "allowBuilds:\n  # a comment\n  '@parcel/watcher@2.6.0': false\n"
        "minimumReleaseAge: 4320\n"
    )
    settings = yaml.safe_load(with_overrides(workspace, {"@mantine/code-highlight": "9.6.2"}))
    assert settings == {
        "packages": ["mantine-ui", "module/*"],
        "allowBuilds": {"@parcel/watcher@2.6.0": False},
        "minimumReleaseAge": 4320,
        "overrides": {"@mantine/code-highlight": "9.6.2"},
    }
    merged = yaml.safe_load(with_overrides("overrides:\n  a: '1'\n  b: '2'\n", {"b": "3"}))
    assert merged == {"overrides": {"a": "1", "b": "3"}}


class _Built(GoProgram):
    name = "built"
    version = "v1"
    port = 1

    def launch(self) -> None:  # pragma: no cover - never started
        raise NotImplementedError

    def probe(self) -> str | None:  # pragma: no cover - never started
        return None


def _build_by_writing(text: str, calls: list[str]) -> Callable[[Path, BuildSteps], Path]:
    def build(work: Path, steps: BuildSteps) -> Path:
        calls.append(text)
        steps.run("write", [sys.executable, "-c", "print('written')"], cwd=work, env=os.environ)
        (work / "out").write_text(text)
        return work / "out"

    return build


def test_a_go_program_is_built_once_per_key_and_only_its_binary_is_kept(tmp_path: Path) -> None:
    program = _Built(_config(tmp_path))
    calls: list[str] = []
    program._build_once("key-1", _build_by_writing("one", calls), what="it", steps=1)
    program._build_once("key-1", _build_by_writing("two", calls), what="it", steps=1)
    assert calls == ["one"]
    assert program.binary.read_text() == "one"
    assert program.build_stamp.read_text() == "key-1\n"
    assert "written" in program.build_log.read_text()
    assert sorted(p.name for p in program.binary.parent.iterdir()) == sorted(
        [".build.lock", "build.log", "built", "built.build-key"]
    )
    program._build_once("key-2", _build_by_writing("three", calls), what="it", steps=1)
    assert calls == ["one", "three"]
    assert program.binary.read_text() == "three"


def test_a_failed_build_step_names_the_step_and_the_log(tmp_path: Path) -> None:
    program = _Built(_config(tmp_path))

    def build(work: Path, steps: BuildSteps) -> Path:
        steps.run("compile", [sys.executable, "-c", "raise SystemExit('no luck')"],
                  cwd=work, env=os.environ)  # fmt: skip
        return work / "out"

    with pytest.raises(ComponentError) as failure:
        program._build_once("key", build, what="it", steps=1)
    assert "at step 'compile'" in str(failure.value)
    assert failure.value.log_path == program.build_log
    assert "no luck" in failure.value.log_tail
    assert not program.binary.exists()
    assert not program.build_stamp.exists()


def test_the_broker_runs_on_the_c1_compiler_and_extra_jvm_options_override_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MERCATO_KAFKA_JVM_OPTS", raising=False)
    options = Kafka(_config(tmp_path)).jvm_options()
    assert options[:2] == ["-Xms128m", "-Xmx512m"]
    assert "-XX:TieredStopAtLevel=1" in options

    monkeypatch.setenv("MERCATO_KAFKA_JVM_OPTS", "-XX:TieredStopAtLevel=4 -Dextra=1")
    options = Kafka(_config(tmp_path)).jvm_options()
    # HotSpot takes a flag's last value: the operator's options must come after ours.
    assert options[-2:] == ["-XX:TieredStopAtLevel=4", "-Dextra=1"]
    assert options.index("-XX:TieredStopAtLevel=1") < options.index("-XX:TieredStopAtLevel=4")
