"""Conditional GET (RFC 9110 sections 8.8.3 and 13.1.2): entity tags and ``If-None-Match``.

Every GET answer carries a weak entity tag computed from the response message: a digest of its
deterministic serialization, so it changes with every change of what is served (for a product:
its fields, its stock and its ``update_time``; for an order: every transition). It is weak
(``W/"..."``) because equal messages may still be written as different bytes (the order of map
members is not fixed); weak comparison is all ``If-None-Match`` uses anyway.

The resource's own version fields are not enough on their own: a product's ``etag`` versions
its fields for optimistic concurrency and deliberately ignores stock movements, and
``update_time`` has the document store's millisecond precision.

``If-None-Match`` is ``*`` or a list of entity tags; the request's condition is false (the
answer is 304 Not Modified, without content) when it is ``*`` (a current representation
exists: the call succeeded) or when one of the tags matches weakly (same opaque tag, ``W/``
ignored). Members that are not entity tags never match, so a malformed header only costs a
full answer. The header is only looked at when the call succeeded (section 13.2.1: a request
that would fail without the condition fails the same with it).
"""

from __future__ import annotations

import base64
import hashlib
import re

from google.protobuf.message import Message

__all__ = ["entity_tag", "none_match"]

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
_ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')
_SEPARATORS = " \t,"


def entity_tag(message: Message) -> str:
    """The weak entity tag of a response message (``W/"<22 base64url characters>"``)."""
    digest = hashlib.blake2b(message.SerializeToString(deterministic=True), digest_size=16)
    opaque = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")
    return f'W/"{opaque}"'


def _opaque(tag: str) -> str | None:
    found = _ENTITY_TAG.fullmatch(tag)
    return found.group(2) if found else None


def none_match(if_none_match: str | None, current: str) -> bool:
    """Whether ``If-None-Match`` matches ``current`` (weak comparison): answer 304."""
    if if_none_match is None:
        return False
    text = if_none_match.strip(_SEPARATORS)
    if text == "*":
        return True
    wanted = _opaque(current)
    position = 0
    while position < len(if_none_match):
        char = if_none_match[position]
        if char in _SEPARATORS:
            position += 1
            continue
        found = _ENTITY_TAG.match(if_none_match, position)
        if found is None:
            # Not an entity tag: skip to the next list member.
            comma = if_none_match.find(",", position)
            if comma < 0:
                return False
            position = comma + 1
            continue
        if found.group(2) == wanted:
            return True
        position = found.end()
    return False
