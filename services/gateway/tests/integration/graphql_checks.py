"""schemathesis hooks of the GraphQL run (``SCHEMATHESIS_HOOKS=graphql_checks``): what a server
error is for this API.

schemathesis' own ``not_a_server_error`` check, in GraphQL mode, counts as a server error every
resolver error not labelled with one of Apollo's or graphql-java's client-error codes; this API
labels its errors with the REST error body's members instead (``extensions.code`` the REST
reason, ``status`` the gRPC status, ``httpStatus`` what REST answers), so a refused argument or
an unknown id would count as a server fault there. Here a server error is what it is in REST: an
HTTP status of 500 or more, an error whose ``httpStatus`` is 500 or more or whose ``status`` is a
server-side gRPC status, a null in a non-null field, or an answer that is not a GraphQL response.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis.graphql import nodes

# The API's own scalars (docs/gateway.md, "GraphQL"): their proto3 JSON forms, valid and not.
schemathesis.graphql.scalar(
    "Int64",
    st.one_of(st.integers(-(2**63), 2**63 - 1).map(str), st.text(max_size=8)).map(nodes.String),
)
schemathesis.graphql.scalar(
    "Duration",
    st.one_of(st.integers(0, 10**6).map("{}s".format), st.text(max_size=8)).map(nodes.String),
)
schemathesis.graphql.scalar(
    "FieldMask",
    st.lists(st.sampled_from(["name", "price", "description", "roles", "x"]), max_size=3)
    .map(",".join)
    .map(nodes.String),
)
schemathesis.graphql.scalar("JSON", st.text(max_size=8).map(nodes.String))

SERVER_STATUSES = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED"})


@schemathesis.check
def no_server_fault(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code >= 500:
        raise AssertionError(f"HTTP {response.status_code}: {response.text[:500]}")
    body = response.json()
    if not isinstance(body, dict) or not ({"data", "errors"} & body.keys()):
        raise AssertionError(f"not a GraphQL response: {response.text[:500]}")
    for error in body.get("errors") or ():
        extensions = error.get("extensions") or {}
        if (
            extensions.get("status") in SERVER_STATUSES
            or int(extensions.get("httpStatus") or 0) >= 500
            or "Cannot return null for non-nullable" in str(error.get("message"))
        ):
            raise AssertionError(f"a server error: {error}")
    return None
