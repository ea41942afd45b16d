"""``python -m mercato_auth [serve | migrate | create-admin | create-client | rotate-signing-key]``.

The only place that reads the environment. ``serve`` (the default) runs the service until
SIGTERM; the other commands run once against the database of the same settings and exit.
Passwords and secrets are read from an environment variable or standard input, never from the
command line (it shows in ``ps``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import sys
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry

from mercato_auth.app import build_app, build_core
from mercato_auth.settings import AuthSettings
from mercato_common.runtime import run_until_signal
from mercato_common.settings import SettingsError, load_settings
from mercato_common.telemetry import configure_logging, setup_telemetry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mercato_auth", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service (default)")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    admin = commands.add_parser("create-admin", help="create an admin, or promote a user to admin")
    admin.add_argument("--email", required=True)
    admin.add_argument("--display-name", default="Administrator")
    admin.add_argument(
        "--password-env",
        default="MERCATO_BOOTSTRAP_ADMIN_PASSWORD",
        help="environment variable holding the password (else it is prompted or read from stdin)",
    )
    client = commands.add_parser(
        "create-client", help="register or update a service client (client_credentials)"
    )
    client.add_argument("--client-id", required=True)
    client.add_argument("--scope", action="append", required=True, help="repeat for each scope")
    client.add_argument(
        "--secret-env",
        default=None,
        help="environment variable holding the secret (else one is generated and printed once)",
    )
    commands.add_parser("rotate-signing-key", help="rotate the token signing key now")
    return parser


def _read_secret(environ: Mapping[str, str], variable: str | None, prompt: str) -> str | None:
    if variable and environ.get(variable):
        return environ[variable]
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    return line.rstrip("\n") or None


async def _serve(settings: AuthSettings) -> None:
    app = build_app(settings)
    await run_until_signal(app.parts)


async def _migrate(settings: AuthSettings) -> None:
    core = build_core(settings, registry=CollectorRegistry(), migrate_on_start=False)
    await core.database.start()
    try:
        async with core.database.pool.acquire() as conn:
            applied = await core.database.run_migrations(conn)
        print(f"applied {len(applied)} migration(s)")
    finally:
        await core.database.stop()


async def _create_admin(settings: AuthSettings, email: str, password: str, name: str) -> None:
    core = build_core(settings, registry=CollectorRegistry(), migrate_on_start=True)
    await core.database.start()
    try:
        user, created = await core.service.ensure_admin(email, password, display_name=name)
        print(f"{'created' if created else 'ensured'} admin {user.id}")
    finally:
        await core.database.stop()


async def _create_client(
    settings: AuthSettings, client_id: str, secret: str, scopes: Sequence[str]
) -> None:
    core = build_core(settings, registry=CollectorRegistry(), migrate_on_start=True)
    await core.database.start()
    try:
        changed = await core.service.ensure_client(client_id, secret, scopes)
        print(f"client {client_id} {'registered' if changed else 'unchanged'}")
    finally:
        await core.database.stop()


async def _rotate(settings: AuthSettings) -> None:
    core = build_core(settings, registry=CollectorRegistry(), migrate_on_start=True)
    await core.database.start()
    try:
        await core.keys.ensure()
        result = await core.service.rotate_signing_key()
        print(f"active key {result.kid} ({result.alg}); retired {result.previous_kid}")
    finally:
        await core.database.stop()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(AuthSettings, environ)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    command = args.command or "serve"
    if command == "serve":
        telemetry = setup_telemetry(
            service=settings.service_name,
            version=settings.service_version,
            log_level=settings.log_level,
            otlp_endpoint=settings.otlp_endpoint,
            metrics_port=settings.metrics_port,
        )
        try:
            asyncio.run(_serve(settings))
        finally:
            telemetry.shutdown()
        return 0
    configure_logging(settings.service_name, settings.service_version, settings.log_level)
    if command == "migrate":
        asyncio.run(_migrate(settings))
    elif command == "create-admin":
        password = _read_secret(environ, args.password_env, "password: ")
        if not password:
            print("no password given", file=sys.stderr)
            return 2
        asyncio.run(_create_admin(settings, args.email, password, args.display_name))
    elif command == "create-client":
        generated = args.secret_env is None
        secret = environ.get(args.secret_env, "") if args.secret_env else secrets.token_urlsafe(32)
        if not secret:
            print(f"{args.secret_env} is empty", file=sys.stderr)
            return 2
        asyncio.run(_create_client(settings, args.client_id, secret, args.scope))
        if generated:
            # Shown once, to the operator's terminal; only its hash is stored.
            print(f"client_secret={secret}")
    elif command == "rotate-signing-key":
        asyncio.run(_rotate(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
