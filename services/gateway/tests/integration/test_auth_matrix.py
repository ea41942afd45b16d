"""Every route x {no token, expired, forged, wrong scope, right scope} -> the expected status.

The gateway sits in front of the real auth and catalog servers and the in-test orders and
analytics servers; tokens come from auth (login, client credentials), the expired one is signed
by auth's real key, the forged one by another key under the same ``kid``.
"""

from __future__ import annotations

import re

import pytest

from mercato_common.identity import Audience
from mercato_gateway.app import GatewayApp
from mercato_gateway.routing import Route

from .conftest import ORDER_ID, Suite

pytestmark = pytest.mark.integration

_SAMPLES = {"sku": "MATRIX-1", "product.sku": "MATRIX-1", "id": ORDER_ID, "user.id": ORDER_ID}


def _path(route: Route) -> str:
    return re.sub(r"\{([^}=]+)(=[^}]*)?\}", lambda m: _SAMPLES[m.group(1)], route.template)


def _expected(route: Route, kind: str) -> set[int] | None:
    """The statuses allowed for a token kind; None: anything but 401/403/5xx."""
    if route.form_encoded:
        return None  # bearer tokens play no part on the OAuth endpoints
    audience = route.access.audience
    if kind == "none":
        return None if audience is Audience.PUBLIC else {401}
    if kind in ("expired", "forged"):
        return {401}
    if kind == "wrong_scope":
        return {403} if audience is Audience.SCOPED else None
    return None


async def test_auth_matrix(suite: Suite, gateway: GatewayApp) -> None:
    tokens = {
        "none": None,
        "expired": suite.tokens.expired,
        "forged": suite.tokens.forged,
        "wrong_scope": suite.tokens.service,
        "right_scope": suite.tokens.admin,
    }
    results: list[str] = []
    failures: list[str] = []
    async with suite.client(gateway) as http:
        for route in gateway.routes:
            for kind, token in tokens.items():
                headers = {"idempotency-key": "matrix-key"}
                if token:
                    headers["authorization"] = f"Bearer {token}"
                content: bytes | None = None
                if route.form_encoded:
                    headers["content-type"] = "application/x-www-form-urlencoded"
                    content = b""
                elif route.body:
                    headers["content-type"] = "application/json"
                    content = b"{}"
                response = await http.request(
                    route.http_method, _path(route), headers=headers, content=content
                )
                status = response.status_code
                results.append(f"{route.http_method} {route.template} {kind}: {status}")
                expected = _expected(route, kind)
                ok = (
                    status not in (401, 403) and status < 500
                    if expected is None
                    else status in expected
                )
                if status == 401:
                    challenge = response.headers.get("www-authenticate", "")
                    ok = ok and challenge.startswith(("Bearer ", "Basic "))
                    if kind in ("expired", "forged"):
                        ok = ok and 'error="invalid_token"' in challenge
                if status == 403:
                    challenge = response.headers.get("www-authenticate", "")
                    ok = ok and 'error="insufficient_scope"' in challenge
                    ok = ok and response.json()["error"]["reason"] == "SCOPE_MISSING"
                if not ok:
                    failures.append(f"{results[-1]} (expected {expected}): {response.text[:200]}")
    assert len(results) == len(gateway.routes) * len(tokens)
    assert not failures, "\n".join(failures)


async def test_every_scoped_route_refuses_a_customer_without_its_scope(
    suite: Suite, gateway: GatewayApp
) -> None:
    customer_scopes = {"catalog:read", "orders:read", "orders:write"}
    async with suite.client(gateway) as http:
        for route in gateway.routes:
            if route.access.audience is not Audience.SCOPED or route.form_encoded:
                continue
            headers = {
                "authorization": f"Bearer {suite.tokens.customer}",
                "idempotency-key": "k",
            }
            if route.body:
                headers["content-type"] = "application/json"
            response = await http.request(
                route.http_method,
                _path(route),
                headers=headers,
                content=b"{}" if route.body else None,
            )
            if route.access.scopes <= customer_scopes:
                assert response.status_code not in (401, 403), route.template
            else:
                assert response.status_code == 403, route.template
