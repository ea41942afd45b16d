"""Auth's admin commands: ``python -m mercato_auth create-admin | create-client |
rotate-signing-key`` (``serve`` and ``migrate`` come from the kit).

Each runs once against the database of the same settings and exits. Passwords and secrets are
read from an environment variable or standard input, never from the command line (it shows in
``ps``); a generated client secret is printed once, to the operator's terminal.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from collections.abc import Mapping
from typing import Any, Protocol

from mercato_auth.service import AuthService, KeyRing
from mercato_common.kit import Command, Service

__all__ = ["COMMANDS"]


class AdminApp(Protocol):
    """What the commands use of the built service (``mercato_auth.app.AuthApp``)."""

    @property
    def kit(self) -> Service: ...
    @property
    def service(self) -> AuthService: ...
    @property
    def keys(self) -> KeyRing: ...


def _read_secret(environ: Mapping[str, str], variable: str | None, prompt: str) -> str | None:
    if variable and environ.get(variable):
        return environ[variable]
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    return line.rstrip("\n") or None


def _admin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--email", required=True)
    parser.add_argument("--display-name", default="Administrator")
    parser.add_argument(
        "--password-env",
        default="MERCATO_BOOTSTRAP_ADMIN_PASSWORD",
        help="environment variable holding the password (else it is prompted or read from stdin)",
    )


async def _create_admin(app: AdminApp, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    password = _read_secret(env, args.password_env, "password: ")
    if not password:
        print("no password given", file=sys.stderr)
        return 2
    async with app.kit.running():
        user, created = await app.service.ensure_admin(
            args.email, password, display_name=args.display_name
        )
    print(f"{'created' if created else 'ensured'} admin {user.id}")
    return 0


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--scope", action="append", required=True, help="repeat for each scope")
    parser.add_argument(
        "--secret-env",
        default=None,
        help="environment variable holding the secret (else one is generated and printed once)",
    )


async def _create_client(app: AdminApp, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    generated = args.secret_env is None
    secret = env.get(args.secret_env, "") if args.secret_env else secrets.token_urlsafe(32)
    if not secret:
        print(f"{args.secret_env} is empty", file=sys.stderr)
        return 2
    async with app.kit.running():
        changed = await app.service.ensure_client(args.client_id, secret, args.scope)
    print(f"client {args.client_id} {'registered' if changed else 'unchanged'}")
    if generated:
        # Shown once, to the operator's terminal; only its hash is stored.
        print(f"client_secret={secret}")
    return 0


async def _rotate(app: AdminApp, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    async with app.kit.running():
        await app.keys.ensure()
        result = await app.service.rotate_signing_key()
    print(f"active key {result.kid} ({result.alg}); retired {result.previous_kid}")
    return 0


COMMANDS: tuple[Command[Any, Any], ...] = (
    Command(
        "create-admin",
        "create an admin, or promote a user to admin",
        _create_admin,
        _admin_arguments,
    ),
    Command(
        "create-client",
        "register or update a service client (client_credentials)",
        _create_client,
        _client_arguments,
    ),
    Command("rotate-signing-key", "rotate the token signing key now", _rotate),
)
