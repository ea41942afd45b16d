"""The gateway's GraphQL schema (SDL), derived from the protos, committed and checked.

    python tools/graphql_schema.py write      rewrite services/gateway/schema.graphql from the
                                              compiled contracts (what the gateway serves)
    python tools/graphql_schema.py check      fail, with a diff, when the committed file differs
    python tools/graphql_schema.py breaking   fail on breaking changes (a removed or retyped
                                              field, argument, type or enum value, a new
                                              required argument) against the previous commit's
                                              file (HEAD~1 or --against REF), as buf breaking
                                              does for the protos

`make lint` runs `check` and `breaking`. A breaking change is a new major version of the API:
add the new field or RPC beside the old one instead.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graphql import build_schema as parse_sdl
from graphql import find_breaking_changes, print_schema

from mercato_gateway.app import derive_routes
from mercato_gateway.graph_schema import build_schema
from protos import run_git  # tools/protos.py

ROOT = Path(__file__).resolve().parent.parent
SDL_PATH = "services/gateway/schema.graphql"
SDL_FILE = ROOT / SDL_PATH


class _Printed:
    """Resolvers of a schema that is printed, never executed."""

    async def resolve(self, *_: Any) -> Any:
        raise AssertionError("the schema is printed, not executed")

    relate = watch = resolve


def current_sdl() -> str:
    return print_schema(build_schema(derive_routes(), _Printed())) + "\n"


def _check() -> int:
    wanted, committed = current_sdl(), SDL_FILE.read_text() if SDL_FILE.exists() else ""
    if wanted == committed:
        print(f"graphql: {SDL_PATH} is up to date")
        return 0
    sys.stdout.writelines(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            SDL_PATH + " (committed)",
            SDL_PATH + " (from the protos)",
        )
    )
    print(
        f"graphql: {SDL_PATH} differs from the protos: run `python tools/graphql_schema.py write`"
    )
    return 1


def _breaking(against: str) -> int:
    rev = run_git("rev-parse", "--verify", "--quiet", f"{against}^{{commit}}").stdout.strip()
    if not rev:
        print(f"graphql: breaking check skipped: there is no commit {against} to compare with")
        return 0
    old = run_git("show", f"{rev}:{SDL_PATH}")
    if old.returncode != 0:
        print(f"graphql: breaking check skipped: {against} ({rev[:12]}) has no {SDL_PATH}")
        return 0
    changes = breaking_changes(old.stdout, current_sdl())
    if not changes:
        print(f"graphql: no breaking change against {against} ({rev[:12]})")
        return 0
    for change in changes:
        print(f"graphql: breaking: {change}")
    return 1


def breaking_changes(old_sdl: str, new_sdl: str) -> list[str]:
    """What a client of ``old_sdl`` would find broken in ``new_sdl`` (graphql-core's rules)."""
    changes = find_breaking_changes(parse_sdl(old_sdl), parse_sdl(new_sdl))
    return [f"{change.type.name}: {change.description}" for change in changes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("write")
    commands.add_parser("check")
    breaking = commands.add_parser("breaking")
    breaking.add_argument("--against", default="HEAD~1")
    args = parser.parse_args(argv)
    if args.command == "write":
        SDL_FILE.write_text(current_sdl())
        print(f"graphql: wrote {SDL_PATH}")
        return 0
    if args.command == "check":
        return _check()
    return _breaking(args.against)


if __name__ == "__main__":
    sys.exit(main())
