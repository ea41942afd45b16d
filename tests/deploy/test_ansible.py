"""The Ansible inventories of deploy/ansible, offline: no secret in plain text, the example Vault
file encrypted and complete, every task that handles a secret hidden from the output.

The playbooks themselves run on the local control plane in `make test-iac`
(tests/k8s/ansible); `make lint` runs ansible-lint (production profile) and yamllint on them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "deploy" / "ansible"
VAULT_EXAMPLE = PLAYBOOKS / "inventories" / "production" / "group_vars" / "mercato" / "vault.yml"
#: The example Vault file's password, as docs/ansible.md gives it (placeholders only inside).
VAULT_EXAMPLE_PASSWORD = "mercato-example"
#: A URL with a password in it (scheme://user:password@host).
URL_WITH_PASSWORD = re.compile(r"[a-z]+://[^/\s:@]+:[^@\s<>]+@")


def plain_files() -> list[Path]:
    return sorted(
        path
        for path in PLAYBOOKS.rglob("*")
        if path.is_file() and path != VAULT_EXAMPLE and not path.name.startswith(".git")
    )


def tasks(document: Any) -> list[dict[str, Any]]:
    """Every task of a task file or play, blocks unfolded."""
    found: list[dict[str, Any]] = []
    for item in document or []:
        if not isinstance(item, dict):
            continue
        found.append(item)
        for key in ("block", "rescue", "always", "tasks"):
            found += tasks(item.get(key))
    return found


def test_no_password_in_plain_text() -> None:
    for path in plain_files():
        text = path.read_text()
        assert not URL_WITH_PASSWORD.search(text), f"{path}: a URL with a password"
        for line in text.splitlines():
            # A secret-named variable may only be given through a template (Vault, a lookup).
            match = re.match(r"\s*([a-z_]*(?:password|secret|kek)[a-z_]*):\s*(\S.*)$", line)
            if match and not path.is_relative_to(PLAYBOOKS / "roles"):
                assert match.group(2).startswith(("{{", '"{{', "{}")), f"{path}: {line.strip()}"


def test_vault_example_is_encrypted_and_complete(tmp_path: Path) -> None:
    assert VAULT_EXAMPLE.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256\n")
    password = tmp_path / "password"
    password.write_text(VAULT_EXAMPLE_PASSWORD)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-vault"),
            "view",
            "--vault-password-file",
            str(password),
            str(VAULT_EXAMPLE),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
    )
    vault = yaml.load(done.stdout, Loader=yaml.CSafeLoader)
    urls = vault["vault_mercato_database_urls"]
    assert set(urls) == {"auth", "orders", "catalog", "analytics"}
    # Placeholders, not credentials.
    assert all("<password>" in url for url in urls.values())
    assert vault["vault_mercato_stripe"] == {
        "api_key": "<rk_live_...>",
        "webhook_secret": "<whsec_...>",
    }
    production = yaml.load(VAULT_EXAMPLE.with_name("main.yml").read_text(), Loader=yaml.CSafeLoader)
    for name in urls:
        assert production["mercato_database_urls"][name] == (
            f"{{{{ vault_mercato_database_urls.{name} }}}}"
        )
    for name in ("api_key", "webhook_secret"):
        assert production["mercato_stripe"][name] == f"{{{{ vault_mercato_stripe.{name} }}}}"
    payments = production["mercato_values"]["payments"]
    assert payments == {
        "provider": "stripe",
        "stripe": {"existingSecret": "{{ mercato_fullname }}-stripe"},
    }


#: Facts that hold secret values.
SECRET_FACTS = {"mercato_secret_values", "mercato_current_secrets"}


def handles_secret(task: dict[str, Any]) -> bool:
    """A task that reads or writes a Secret's data, or sets a fact holding secret values."""
    for module in ("kubernetes.core.k8s", "kubernetes.core.k8s_info"):
        arguments = task.get(module)
        if isinstance(arguments, dict) and arguments.get("state") != "absent":
            definition = arguments.get("definition")
            kinds = {arguments.get("kind")}
            if isinstance(definition, dict):
                kinds.add(definition.get("kind"))
            template = arguments.get("template")
            if isinstance(template, str):
                rendered = (PLAYBOOKS / "roles" / "mercato" / "templates" / template).read_text()
                kinds.update(re.findall(r"^kind: (\w+)$", rendered, re.M))
            if "Secret" in kinds:
                return True
    facts = task.get("ansible.builtin.set_fact")
    return isinstance(facts, dict) and bool(SECRET_FACTS & set(facts))


@pytest.mark.parametrize(
    "path", sorted((PLAYBOOKS / "roles" / "mercato" / "tasks").glob("*.yml")), ids=lambda p: p.name
)
def test_tasks_that_handle_secrets_log_nothing(path: Path) -> None:
    for task in tasks(yaml.load(path.read_text(), Loader=yaml.CSafeLoader)):
        if handles_secret(task):
            assert task.get("no_log") is True, f"{path.name}: {task.get('name')}"


def test_the_secret_tasks_are_found() -> None:
    """The check above sees the tasks it is about (it would pass on nothing otherwise)."""
    folder = PLAYBOOKS / "roles" / "mercato" / "tasks"
    found = [
        (path.name, task["name"])
        for path in sorted(folder.glob("*.yml"))
        for task in tasks(yaml.load(path.read_text(), Loader=yaml.CSafeLoader))
        if handles_secret(task)
    ]
    assert {name for name, _ in found} >= {
        "read_secrets.yml",
        "write_secrets.yml",
        "secrets.yml",
        "rotate.yml",
    }
