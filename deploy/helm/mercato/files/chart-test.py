"""`helm test`: is a component of the release up, asked the way its clients ask it?

Run by the chart's test Pods with the component's own image (its Python and grpcio), as
`python -c <this file> grpc <host:port>` (grpc.health.v1 Check of the whole server) or
`python -c <this file> http <url>` (the gateway's /readyz). Exit 0 when SERVING (HTTP 200),
else 1, after retries for `--wait-seconds` (default 60).

Environment:
    MERCATO_TEST_TLS_DIR   folder with ca.crt, tls.crt and tls.key (tls.enabled): verify the
                           server against ca.crt and present tls.crt (mutual TLS)
    MERCATO_TEST_ISTIO     "true" in an Istio-meshed Pod: stop the sidecar at the end
                           (POST 127.0.0.1:15020/quitquitquit), or the Pod never completes
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ISTIO_QUIT = "http://127.0.0.1:15020/quitquitquit"


def check_grpc(target: str, tls_dir: str, timeout: float) -> str | None:
    """None when the server is SERVING, else what is wrong."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_dir:
        folder = Path(tls_dir)
        credentials = grpc.ssl_channel_credentials(
            (folder / "ca.crt").read_bytes(),
            (folder / "tls.key").read_bytes(),
            (folder / "tls.crt").read_bytes(),
        )
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as error:
            return f"health check failed: {error.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return None if status == "SERVING" else f"status {status}"


def check_http(url: str, tls_dir: str, timeout: float) -> str | None:
    """None when the URL answers 200, else what is wrong."""
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(
            cafile=str(Path(tls_dir) / "ca.crt") if tls_dir else None
        )
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310 - the chart's own URL
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"unreachable: {error}"


def stop_istio_sidecar() -> None:
    request = urllib.request.Request(ISTIO_QUIT, method="POST")
    try:
        urllib.request.urlopen(request, timeout=5).close()  # noqa: S310 - fixed local URL
    except (urllib.error.URLError, OSError) as error:
        print(f"could not stop the Istio sidecar: {error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chart-test", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["grpc", "http"])
    parser.add_argument("target", help="host:port (grpc) or URL (http)")
    parser.add_argument("--wait-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=3.0, help="per attempt")
    args = parser.parse_args(argv)
    tls_dir = os.environ.get("MERCATO_TEST_TLS_DIR", "")
    check = check_grpc if args.kind == "grpc" else check_http
    deadline = time.monotonic() + args.wait_seconds
    try:
        while True:
            problem = check(args.target, tls_dir, args.timeout)
            if problem is None:
                print(f"{args.target}: SERVING")
                return 0
            if time.monotonic() >= deadline:
                print(f"{args.target}: {problem}", file=sys.stderr)
                return 1
            print(f"{args.target}: {problem}; retrying", file=sys.stderr)
            time.sleep(2)
    finally:
        if os.environ.get("MERCATO_TEST_ISTIO") == "true":
            stop_istio_sidecar()


if __name__ == "__main__":
    raise SystemExit(main())
