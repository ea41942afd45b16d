"""Secrets out of text that leaves the process: log lines (``telemetry``) and the error headers of
dead-lettered records (``kafka.consumer``). One set of rules for both.

Best effort: code must still not put secrets in messages. This catches the usual accidents: a
DSN in a driver error, a token in a refused request's message, ``password=...`` in an
exception.
"""

from __future__ import annotations

import functools
import re

__all__ = ["REDACTED", "is_secret_name", "redact", "truncate"]

REDACTED = "[REDACTED]"
#: Names (log extras, record attributes) whose value is never written, whatever it holds.
_SECRET_NAME = re.compile(
    r"(^|[._])(password|passwd|secret|token|authorization|api_?key|credentials?)$", re.I
)
#: Secrets inside text: a JWT, a bearer credential.
_SECRET_TEXT = re.compile(r"eyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]*|(?<=Bearer )[\w.~+/=-]{8,}", re.I)
#: The password of a URL (scheme://user:password@host); the user name stays.
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")
#: ``password=...``, ``token: ...`` and the like.
_SECRET_ASSIGNMENT = re.compile(
    r"\b(password|passwd|pwd|secret|token|api[_-]?key|authorization)(\s*[=:]\s*)(?!\[REDACTED\])\S+",
    re.I,
)


# Names come from code (log extras, record attributes): a few dozen, asked on every log line.
@functools.lru_cache(maxsize=1024)
def is_secret_name(name: str) -> bool:
    """Whether a field named ``name`` holds a secret (``password``, ``client_secret``...)."""
    return _SECRET_NAME.search(name) is not None


def redact(text: str) -> str:
    """``text`` with the secrets it may carry (tokens, URL passwords, secret assignments)
    replaced by [REDACTED]."""
    if "eyJ" in text or "earer " in text:
        text = _SECRET_TEXT.sub(REDACTED, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)
    if "=" in text or ":" in text:
        text = _SECRET_ASSIGNMENT.sub(rf"\g<1>\g<2>{REDACTED}", text)
    return text


def truncate(text: str, limit: int) -> str:
    """At most ``limit`` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
