"""The one set of redaction rules of log lines and dead-letter headers."""

from __future__ import annotations

import pytest

from mercato_common.redaction import REDACTED, is_secret_name, redact, truncate

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"refused {JWT}", f"refused {REDACTED}"),
        ("Authorization: Bearer abcdefgh12345678", f"Authorization: {REDACTED} {REDACTED}"),
        ("dsn postgresql://app:s3cret@db:5432/x", f"dsn postgresql://app:{REDACTED}@db:5432/x"),
        ("login failed: password=hunter2 for x", f"login failed: password={REDACTED} for x"),
        ("API_KEY: k-123 given", f"API_KEY: {REDACTED} given"),
        ("order o-1 placed: 3 lines", "order o-1 placed: 3 lines"),
        ("tokens_issued=5", "tokens_issued=5"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(redact(text)) == expected  # applied twice, nothing more is masked


def test_secret_names() -> None:
    for name in ("password", "client_secret", "refresh_token", "http.authorization", "api_key"):
        assert is_secret_name(name), name
    for name in ("refresh_tokens", "order_id", "tokenizer"):
        assert not is_secret_name(name), name


def test_truncate() -> None:
    assert truncate("abc", 3) == "abc"
    assert truncate("abcdef", 5) == "ab..."
