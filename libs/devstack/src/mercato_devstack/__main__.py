"""`python -m mercato_devstack up|down|status|start|stop|kill|restart [component]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from mercato_devstack.components import NAMES, ComponentStatus
from mercato_devstack.errors import StackError
from mercato_devstack.stack import Stack


def _relative(path: os.PathLike[str]) -> str:
    text = os.fspath(path)
    cwd = os.getcwd() + os.sep
    return text[len(cwd) :] if text.startswith(cwd) else text


def print_status(statuses: Sequence[ComponentStatus]) -> None:
    header = f"{'component':<10} {'pid':>7} {'port':>6} {'rss MiB':>8}  {'health':<9} log / detail"
    print(header)
    for st in statuses:
        pid = str(st.pid) if st.pid else "-"
        rss = f"{st.rss_kib / 1024:.0f}" if st.rss_kib else "-"
        health = "healthy" if st.healthy else "UNHEALTHY"
        log_path = _relative(st.log_path)
        detail = log_path if st.healthy else f"{st.detail}  ({log_path})"
        print(f"{st.name:<10} {pid:>7} {st.port:>6} {rss:>8}  {health:<9} {detail}")
    total = sum(st.rss_kib for st in statuses)
    if total:
        print(f"{'total':<10} {'':>7} {'':>6} {total / 1024:>8.0f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mercato_devstack",
        description="The local real stack: PostgreSQL, Kafka, FerretDB and Redis as processes.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start everything and wait until healthy (idempotent)")
    commands.add_parser("down", help="stop everything, leave no process behind (state kept)")
    commands.add_parser("status", help="show each component; exit 1 if any is unhealthy")
    run = commands.add_parser("run", help="the stack plus every service, supervised, until Ctrl-C")
    run.add_argument(
        "--observe",
        action="store_true",
        help="also Prometheus and Jaeger (mercato_devstack.observe), as MERCATO_OBSERVE=1 does",
    )
    commands.add_parser("shutdown", help="stop a running `run` and the stack")
    commands.add_parser(
        "observe-tools", help="build Prometheus and Jaeger for `run --observe` (idempotent)"
    )
    for verb, text in (
        ("start", "start one component (and what it needs) and wait until ready"),
        ("stop", "stop one component gracefully"),
        ("kill", "kill -9 one component (its whole process group)"),
        ("restart", "stop, then start one component"),
    ):
        sub = commands.add_parser(verb, help=text)
        sub.add_argument("component", choices=NAMES)
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    try:
        if args.command == "run":
            from mercato_devstack import suite

            environ = {**os.environ, "MERCATO_OBSERVE": "1"} if args.observe else os.environ
            return suite.run(environ)
        if args.command == "observe-tools":
            from mercato_devstack.config import StackConfig
            from mercato_devstack.observe import observers

            for observer in observers(StackConfig.from_env()):
                observer.prepare()
                print(f"{observer.name}: {observer.binary}")
            return 0
        if args.command == "shutdown":
            from mercato_devstack import suite

            return suite.shutdown()
        stack = Stack()
        if args.command == "up":
            print_status(stack.up())
        elif args.command == "down":
            stack.down()
            print("stack down: no component running")
        elif args.command == "status":
            statuses = stack.status()
            print_status(statuses)
            return 0 if all(st.healthy for st in statuses) else 1
        elif args.command == "start":
            print_status([stack.start(args.component)])
        elif args.command == "stop":
            stack.stop(args.component)
        elif args.command == "kill":
            stack.kill(args.component)
        elif args.command == "restart":
            print_status([stack.restart(args.component)])
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
