"""Request helpers every API shares: page sizes, page tokens (AIP-158), field masks (AIP-134).

Pure functions with no I/O, so a service's ``domain`` may use them. Errors are the caller's own
types (its ``InvalidPageToken``/``InvalidRequest``), passed in as factories, because the ErrorInfo
domain of an error is the service's (``<service>.mercato``), not the kit's.

A page token is the base64url (unpadded) of ``{"k": kind, "p": position, "f": fingerprint}``:
``kind`` names the listing (a token of another listing is refused), ``position`` holds the
keyset position after the last item of the page (scalars only, checked field by field on the
way back) and ``fingerprint`` the filters the page was read with (a token used with other
filters is refused).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = [
    "MAX_PAGE_TOKEN_LENGTH",
    "decode_page_token",
    "encode_page_token",
    "page_size",
    "unknown_mask_paths",
]

# Longer tokens are refused before they are decoded.
MAX_PAGE_TOKEN_LENGTH = 1024

Scalar = str | int | bool | float


def page_size(
    requested: int,
    *,
    default: int,
    maximum: int,
    invalid: Callable[[str], BaseException],
) -> int:
    """The page size to use: ``default`` for 0, at most ``maximum`` (AIP-158 coerces, never fails
    above it); a negative size raises ``invalid(description)``."""
    if type(requested) is not int or requested < 0:
        raise invalid(f"page_size must be between 0 and {maximum}")
    return default if requested == 0 else min(requested, maximum)


def encode_page_token(kind: str, position: Mapping[str, Scalar], fingerprint: str = "") -> str:
    """An opaque token for the page after ``position`` of listing ``kind`` under these filters."""
    body = {"k": kind, "p": dict(position), "f": fingerprint}
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(
    token: str,
    *,
    kind: str,
    fields: Mapping[str, type],
    fingerprint: str = "",
    invalid: Callable[[], BaseException],
) -> dict[str, Any] | None:
    """The position of a token made by :func:`encode_page_token`; None for an empty token.

    Raises ``invalid()`` for a token that is malformed, too long, of another listing, of other
    filters, or whose position does not hold exactly ``fields`` with exactly those scalar types.
    """
    if not token:
        return None
    if not isinstance(token, str) or len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise invalid()
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid() from None
    if not isinstance(body, dict) or body.get("k") != kind or body.get("f") != fingerprint:
        raise invalid()
    position = body.get("p")
    if not isinstance(position, dict) or set(position) != set(fields):
        raise invalid()
    for name, expected in fields.items():
        if type(position[name]) is not expected:
            raise invalid()
    return position


def unknown_mask_paths(paths: Collection[str], updatable: Collection[str]) -> list[str]:
    """The paths of an update mask that name no updatable field, sorted (AIP-134); an empty
    mask is the caller's decision (usually "every updatable field")."""
    allowed = set(updatable)
    return sorted(path for path in set(paths) if path not in allowed)
