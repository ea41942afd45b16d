"""stripe-mock: the Stripe API answered from Stripe's OpenAPI document, for the payment tests.

Built once with ``go install`` into ``.state/cache/stripe-mock-<version>/`` (module cache
``.state/cache/go``, like the other Go tools) and run as one process on
``MERCATO_STRIPE_MOCK_PORT`` (12111). It checks every request against the API's schema (unknown
or malformed parameters are refused as Stripe would) and answers with fixture objects that
reflect some parameters (``amount``, ``currency``), but it keeps no state: a confirmed
PaymentIntent comes back ``requires_payment_method``, and nothing is remembered between calls.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from mercato_devstack.components.base import GoProgram

__all__ = ["STRIPE_MOCK_VERSION", "StripeMock"]

STRIPE_MOCK_MODULE = "github.com/stripe/stripe-mock"
STRIPE_MOCK_VERSION = "v0.203.0"
#: Any key of the form Stripe accepts: stripe-mock checks the form, not the value.
TEST_API_KEY = "sk_test_mercato"


class StripeMock(GoProgram):
    name = "stripe-mock"
    version = STRIPE_MOCK_VERSION

    @property
    def port(self) -> int:
        return self.config.stripe_mock_port

    def prepare(self) -> None:
        self._go_install(f"{STRIPE_MOCK_MODULE}@{STRIPE_MOCK_VERSION}", purpose="stripe-mock")

    def launch(self) -> None:
        # -verbose logs each request and its parameters: what the tests read back.
        self._launch("-http-addr", f"{self.config.host}:{self.port}", "-verbose")

    def probe(self) -> str | None:
        request = urllib.request.Request(  # noqa: S310 - a loopback URL of ours
            f"{self.url}/v1/balance", headers={"Authorization": f"Bearer {TEST_API_KEY}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                body = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as error:
            return f"{self.url}: {error}"
        return None if body.get("object") == "balance" else f"unexpected answer from {self.url}"

    def requests(self, method: str, path: str) -> list[str]:
        """The parameters of every ``method path`` request so far, as stripe-mock logs them
        (``map[amount:2599 currency:eur ...]``), oldest first."""
        wanted = f"Request: {method} {path}"
        found: list[str] = []
        pending = False
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("Request: "):
                pending = line.strip() == wanted
            elif pending and line.startswith("Request data: "):
                found.append(line.removeprefix("Request data: "))
                pending = False
        return found
