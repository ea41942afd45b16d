"""Access-token verification throughput: the gateway's (and every service's) hot path.

Measures, side by side in one run and on the same token:

* ``JwksTokenVerifier.verify`` (libs/common): header checks, cached JWKS lookup, PyJWT decode
  with the algorithm allow-list and the iss/aud/exp/iat/jti checks, Identity construction;
* a bare ``jwt.decode`` with a pre-parsed key and the same claim checks (PyJWT alone);
* a bare signature check with ``cryptography`` (no JSON, no claims): the floor.

for EdDSA (Ed25519, auth's default) and ES256, plus argon2id verification at auth's default
parameters (what one login costs). Writes bench/results/auth.json and prints a table.

    uv run --frozen python bench/bench_auth.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from mercato_auth.crypto import (
    Argon2Params,
    PasswordHashing,
    SigningAlgorithm,
    SigningKeyMaterial,
    generate_signing_key,
)
from mercato_common.identity import JwksTokenVerifier

ISSUER = "https://api.mercato.example"
AUDIENCE = "mercato"
RESULTS = Path(__file__).resolve().parent / "results" / "auth.json"


def _token(key: SigningKeyMaterial) -> str:
    now = int(time.time())
    return key.sign(
        {
            "iss": ISSUER,
            "sub": str(uuid.uuid4()),
            "aud": AUDIENCE,
            "exp": now + 900,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "client_id": "mercato-web",
            "scope": "catalog:read orders:read orders:write",
        }
    )


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _rate(fn: Callable[[], object], seconds: float, rounds: int = 5) -> tuple[float, int]:
    """Best-of-``rounds`` operations per second of a synchronous call."""
    for _ in range(200):  # warm-up
        fn()
    best, total = 0.0, 0
    for _ in range(rounds):
        count, started = 0, time.perf_counter()
        deadline = started + seconds / rounds
        while True:
            for _ in range(100):
                fn()
            count += 100
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, count / (now - started))
        total += count
    return best, total


async def _async_rate(
    fn: Callable[[], Awaitable[object]], seconds: float, rounds: int = 5
) -> tuple[float, int]:
    for _ in range(200):
        await fn()
    best, total = 0.0, 0
    for _ in range(rounds):
        count, started = 0, time.perf_counter()
        deadline = started + seconds / rounds
        while True:
            for _ in range(100):
                await fn()
            count += 100
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, count / (now - started))
        total += count
    return best, total


async def _bench_alg(alg: SigningAlgorithm, seconds: float) -> list[dict[str, Any]]:
    key = generate_signing_key(alg)
    token = _token(key)
    jwks = {"keys": [key.public_jwk]}

    async def fetch() -> dict[str, Any]:
        return jwks

    verifier = JwksTokenVerifier(fetch, issuer=ISSUER, audience=AUDIENCE)
    identity = await verifier.verify(token)  # fills the JWKS cache
    assert identity.scopes

    pyjwk = jwt.PyJWK(key.public_jwk)

    def bare_pyjwt() -> object:
        return jwt.decode(
            token,
            key=pyjwk,
            algorithms=[alg],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=30,
            options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]},
        )

    public = key.private_key.public_key()
    head, payload, signature = token.split(".")
    signed = f"{head}.{payload}".encode()
    raw_signature = _b64(signature)
    if alg == "ES256":
        der = encode_dss_signature(
            int.from_bytes(raw_signature[:32], "big"), int.from_bytes(raw_signature[32:], "big")
        )

        def bare_crypto() -> None:
            public.verify(der, signed, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]

    else:

        def bare_crypto() -> None:
            public.verify(raw_signature, signed)  # type: ignore[call-arg]

    bare_crypto()
    measured = [
        ("JwksTokenVerifier.verify", await _async_rate(lambda: verifier.verify(token), seconds)),
        ("bare PyJWT jwt.decode", _rate(bare_pyjwt, seconds)),
        ("bare cryptography signature check", _rate(bare_crypto, seconds)),
    ]
    rows = []
    for method, (ops, n) in measured:
        rows.append(
            {
                "alg": alg,
                "method": method,
                "ops_per_second": round(ops),
                "microseconds_per_op": round(1e6 / ops, 2),
                "operations": n,
            }
        )
    return rows


async def _bench_argon2(rounds: int = 5) -> dict[str, Any]:
    params = Argon2Params()  # auth's defaults: t=3, m=64 MiB, p=4
    hashing = PasswordHashing(params)
    hashed = await hashing.hash("correct horse battery staple")
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await hashing.verify(hashed, "correct horse battery staple")
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {
        "alg": "argon2id",
        "method": f"verify (t={params.time_cost}, m={params.memory_cost_kib} KiB, "
        f"p={params.parallelism})",
        "ops_per_second": round(1 / median, 2),
        "microseconds_per_op": round(median * 1e6),
        "operations": rounds,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'alg':<9} {'method':<44} {'ops/s':>10} {'µs/op':>10} {'vs verifier':>12}",
        "-" * 89,
    ]
    verifier_rate = {r["alg"]: r["ops_per_second"] for r in rows if r["method"].startswith("Jwks")}
    for row in rows:
        base = verifier_rate.get(row["alg"])
        ratio = f"{row['ops_per_second'] / base:.2f}x" if base else ""
        lines.append(
            f"{row['alg']:<9} {row['method']:<44} {row['ops_per_second']:>10} "
            f"{row['microseconds_per_op']:>10} {ratio:>12}"
        )
    return "\n".join(lines)


async def _run(seconds: float) -> list[dict[str, Any]]:
    rows = []
    algorithms: tuple[SigningAlgorithm, ...] = ("EdDSA", "ES256")
    for alg in algorithms:
        rows.extend(await _bench_alg(alg, seconds))
    rows.append(await _bench_argon2())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per row")
    args = parser.parse_args(argv)
    rows = asyncio.run(_run(args.seconds))
    report = {
        "benchmark": "auth",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "pyjwt": jwt.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "single thread, one event loop; best of 5 rounds per row; same token per alg",
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(_table(rows))
    shown = RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS
    print(f"\nwritten to {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
