"""HTTP request -> request message, response message -> JSON: the proto3 JSON mapping.

Path variables, query parameters (lowerCamelCase or proto names, dotted for nested fields,
repeated by repeating the key, enums by name), the JSON body (``body: "*"`` or one field),
header-bound fields (``Idempotency-Key``) and, for the OAuth endpoints, form parameters. Unknown
fields and parameters are refused with a field violation naming them. Responses are proto3 JSON
(lowerCamelCase or the field's explicit ``json_name``, int64 as strings, enums by name, RFC 3339
timestamps, fields at their default value omitted).

Requests are held to the JSON the OpenAPI document describes, which is stricter than what a
proto3 JSON parser also accepts (:func:`check_body`): members by their JSON name only (not the
proto name), enums by name only (not by number), ``null`` only where the document allows it (the
wrapper types and ``google.protobuf.Value``; elsewhere a client omits the member for the
default), int64 as decimal strings and 32-bit integers as JSON numbers (not the other way
round), and no path-bound field repeated in a ``body: "*"`` body. So every request the document
calls invalid is refused here, with a field violation naming the member.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from mercato_gateway.errors import ApiError, invalid_argument
from mercato_gateway.routing import Route

__all__ = [
    "INT32_RANGES",
    "INT64_PATTERNS",
    "build_request",
    "check_body",
    "json_field_path",
    "parse_json_body",
    "parse_message",
    "render_response",
]

_WKT_SCALARS = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
    }
)
_WRAPPERS = frozenset(
    {
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)
#: Each integer type's width in bits and whether it is signed.
_INTEGER_TYPES = {
    FieldDescriptor.TYPE_INT32: (32, True),
    FieldDescriptor.TYPE_SINT32: (32, True),
    FieldDescriptor.TYPE_SFIXED32: (32, True),
    FieldDescriptor.TYPE_UINT32: (32, False),
    FieldDescriptor.TYPE_FIXED32: (32, False),
    FieldDescriptor.TYPE_INT64: (64, True),
    FieldDescriptor.TYPE_SINT64: (64, True),
    FieldDescriptor.TYPE_SFIXED64: (64, True),
    FieldDescriptor.TYPE_UINT64: (64, False),
    FieldDescriptor.TYPE_FIXED64: (64, False),
}


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    message_type = field.message_type
    if message_type is None:
        raise TypeError(f"{field.full_name} is not a message field")
    return message_type


def is_query_scalar(field: FieldDescriptor) -> bool:
    """Whether a field can be given as one query/path string."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = message_of(field).full_name
        return name in _WKT_SCALARS or name in _WRAPPERS
    return True


def _find_field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    for candidate in descriptor.fields:
        if candidate.json_name == name:
            return candidate
    return descriptor.fields_by_name.get(name)


def _leaf_value(field: FieldDescriptor, raw: str, location: str) -> Any:
    """A query/path string as the JSON value json_format expects for ``field``."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE and message_of(field).full_name in _WRAPPERS:
        kind = message_of(field).fields_by_name["value"].type
    if kind == FieldDescriptor.TYPE_BOOL:
        if raw == "true":
            return True
        if raw == "false":
            return False
        raise invalid_argument(location, "must be true or false")
    if kind == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        if raw not in field.enum_type.values_by_name:
            raise invalid_argument(location, _enum_names(field))
        return raw
    if kind in _INTEGER_TYPES:
        if not re.fullmatch(r"-?[0-9]+", raw):
            raise invalid_argument(location, "must be an integer")
        return raw
    if kind == FieldDescriptor.TYPE_BYTES:
        try:
            base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            raise invalid_argument(location, "must be base64") from None
        return raw
    return raw


def _duplicate_refusing_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ApiError.bad_request(
                f"duplicate member {key!r} in the JSON body", reason="MALFORMED_JSON"
            )
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_body(body: bytes, route: Route | None = None) -> Any:
    """The JSON document of a request body; 400 MALFORMED_JSON when it is not JSON (RFC 8259:
    no ``NaN``/``Infinity``), 400 INVALID_JSON when it is ``null`` (with ``route``: the body is
    an object, or the one field's value, never null)."""
    try:
        document = json.loads(
            body, object_pairs_hook=_duplicate_refusing_object, parse_constant=_no_constants
        )
    except (ValueError, RecursionError):
        raise ApiError.bad_request(
            "the request body is not valid JSON", reason="MALFORMED_JSON"
        ) from None
    if document is None and route is not None:
        where = (
            ""
            if route.body in ("", "*")
            else route.request_descriptor.fields_by_name[route.body].json_name
        )
        raise invalid_argument(where or "(body)", "must not be null", reason="INVALID_JSON")
    return document


def _set_path(target: dict[str, Any], path: Sequence[str], value: Any, repeated: bool) -> bool:
    node = target
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return False
        node = child
    leaf = path[-1]
    if repeated:
        node.setdefault(leaf, []).append(value)
        return True
    if leaf in node:
        return False
    node[leaf] = value
    return True


def _resolve(descriptor: Descriptor, dotted: str) -> tuple[list[FieldDescriptor], str] | None:
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for part in dotted.split("."):
        if current is None:
            return None
        found = _find_field(current, part)
        if found is None:
            return None
        fields.append(found)
        is_message = found.type == FieldDescriptor.TYPE_MESSAGE and not is_query_scalar(found)
        current = found.message_type if is_message and not found.is_repeated else None
    return fields, ".".join(f.json_name for f in fields)


def _query_document(
    route: Route, query: Iterable[tuple[str, str]], bound: frozenset[str]
) -> dict[str, Any]:
    document: dict[str, Any] = {}
    descriptor = route.request_descriptor
    for key, value in query:
        resolved = _resolve(descriptor, key)
        if resolved is None:
            raise invalid_argument(key, "unknown query parameter", reason="UNKNOWN_PARAMETER")
        fields, json_path = resolved
        if fields[0].name in bound:
            raise invalid_argument(
                json_path, "bound by the path or the body, not a query parameter"
            )
        leaf = fields[-1]
        if any(f.is_repeated for f in fields[:-1]) or (
            leaf.type == FieldDescriptor.TYPE_MESSAGE and not is_query_scalar(leaf)
        ):
            raise invalid_argument(json_path, "cannot be given as a query parameter")
        if leaf.message_type is not None and leaf.message_type.GetOptions().map_entry:
            raise invalid_argument(json_path, "cannot be given as a query parameter")
        converted = _leaf_value(leaf, value, json_path)
        if not _set_path(document, [f.json_name for f in fields], converted, leaf.is_repeated):
            raise invalid_argument(json_path, "given more than once")
    return document


def build_request(
    route: Route,
    *,
    path_params: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: Any,
    headers: Mapping[str, str],
    content_type: str = "",
) -> Message:
    """The request message of ``route``; raises :class:`ApiError` (400) naming the field.

    ``body`` is the parsed JSON document (or form parameters as a dict), or None when the
    request had no body; for a raw-body route, the body's bytes and ``content_type``.
    """
    message = route.request_class()
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    document: dict[str, Any] = {}
    if route.raw_body:
        document = _query_document(route, query, route.bound_fields)
    elif route.body == "*":
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ApiError.bad_request("the request body must be a JSON object")
        document = dict(body)
        if query:
            key = query[0][0]
            raise invalid_argument(key, "unknown query parameter", reason="UNKNOWN_PARAMETER")
    else:
        document = _query_document(route, query, route.bound_fields)
        if route.body:
            field = descriptor.fields_by_name[route.body]
            document[field.json_name] = {} if body is None else body
        elif body not in (None, {}):
            raise ApiError.bad_request("this route takes no request body")
    if not (route.form_encoded or route.raw_body):
        check_body(route, document if route.body == "*" else body)
    if document:  # most reads bind only path fields: nothing for json_format to parse
        parse_message(document, message)
    if route.raw_body:
        payload = getattr(message, route.body)
        payload.data = body or b""
        payload.content_type = content_type
    for variable, value in path_params.items():
        _set_scalar(message, variable, value)
    for name, header, required in route.header_fields:
        header_value = headers.get(header)
        field = descriptor.fields_by_name[name]
        if header_value is None:
            if required:
                raise invalid_argument(
                    field.json_name,
                    f"the {_header_title(header)} header is required",
                    reason="HEADER_MISSING",
                )
            continue
        setattr(message, name, header_value)
    return message


# ----------------------------------------------------------------------------------------------
# The JSON the document describes (stricter than a proto3 JSON parser)

_NULLABLE = _WRAPPERS | {"google.protobuf.Value"}
_JSON_STRING_WKT = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
#: The values each integer type accepts.
_INTEGER_RANGES = {
    kind: (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    for kind, (bits, signed) in _INTEGER_TYPES.items()
}
#: The 32-bit integer types (JSON numbers): the values each accepts.
INT32_RANGES = {
    kind: _INTEGER_RANGES[kind] for kind, (bits, _) in _INTEGER_TYPES.items() if bits == 32
}
#: The 64-bit integer types (JSON strings): the digits each accepts (signed or not).
INT64_PATTERNS = {
    kind: re.compile(r"-?[0-9]+" if signed else r"[0-9]+")
    for kind, (bits, signed) in _INTEGER_TYPES.items()
    if bits == 64
}
_MAX_VIOLATIONS = 20


def _enum_names(field: FieldDescriptor) -> str:
    names = [value.name for value in field.enum_type.values] if field.enum_type else []
    return "must be one of " + ", ".join(names) + " (by name)"


class _Violations:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.unknown = False

    def add(self, path: str, description: str, *, unknown: bool = False) -> None:
        if len(self.items) < _MAX_VIOLATIONS:
            self.items.append((path or "(body)", description))
        self.unknown = self.unknown or unknown


def check_body(route: Route, body: Any) -> None:
    """Refuse a JSON body the OpenAPI document calls invalid (400 naming each member).

    ``body`` is the parsed request body (None: there was none), checked against the route's
    body field (``body: "field"``) or its whole request message without the fields the path or
    a header binds (``body: "*"``). What passes is then parsed by ``json_format``, which still
    checks what is left (timestamp syntax, field mask paths).
    """
    if body is None or not route.body:
        return
    found = _Violations()
    descriptor = route.request_descriptor
    if route.body == "*":
        bound = {v.split(".")[0] for v in route.parsed.variables}
        bound.update(name for name, _, _ in route.header_fields)
        if isinstance(body, dict):
            _check_message(descriptor, body, "", found, frozenset(bound))
    else:
        field = descriptor.fields_by_name[route.body]
        _check_field(field, body, field.json_name, found)
    if not found.items:
        return
    reason = "UNKNOWN_FIELD" if found.unknown else "INVALID_JSON"
    if len(found.items) == 1:
        path, description = found.items[0]
        raise invalid_argument(path, description, reason=reason)
    raise ApiError(
        400,
        "INVALID_ARGUMENT",
        "invalid " + ", ".join(path for path, _ in found.items),
        reason,
        field_violations=found.items,
    )


def _check_message(
    descriptor: Descriptor,
    value: Any,
    path: str,
    found: _Violations,
    bound: frozenset[str] = frozenset(),
) -> None:
    if not isinstance(value, dict):
        found.add(path, "must be an object")
        return
    by_json_name = {f.json_name: f for f in descriptor.fields}
    for key, member in value.items():
        member_path = f"{path}.{key}" if path else str(key)
        field = by_json_name.get(key)
        if field is None:
            alias = descriptor.fields_by_name.get(key)
            hint = f" (its JSON name is {alias.json_name})" if alias is not None else ""
            found.add(member_path, "unknown field" + hint, unknown=True)
        elif field.name in bound:
            found.add(member_path, "set by the path or a header, not the body", unknown=True)
        else:
            _check_field(field, member, member_path, found)


def _check_field(field: FieldDescriptor, value: Any, path: str, found: _Violations) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if value is None:
            found.add(path, "must not be null (omit it for an empty map)")
        elif not isinstance(value, dict):
            found.add(path, "must be an object")
        else:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                _check_single(value_field, item, f"{path}[{key!r}]", found, element=True)
    elif field.is_repeated:
        if value is None:
            found.add(path, "must not be null (omit it for an empty list)")
        elif not isinstance(value, list):
            found.add(path, "must be an array")
        else:
            for index, item in enumerate(value):
                _check_single(field, item, f"{path}[{index}]", found, element=True)
    else:
        _check_single(field, value, path, found, element=False)


def _check_single(
    field: FieldDescriptor, value: Any, path: str, found: _Violations, *, element: bool
) -> None:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        name = message_of(field).full_name
        if value is None:
            if name not in _NULLABLE or element:
                found.add(path, _null_description(element))
            return
        if name in _WRAPPERS:
            _check_single(
                message_of(field).fields_by_name["value"], value, path, found, element=True
            )
        elif name in _JSON_STRING_WKT:
            if not isinstance(value, str):
                found.add(path, "must be a string")
        elif name == "google.protobuf.ListValue":
            if not isinstance(value, list):
                found.add(path, "must be an array")
        elif name == "google.protobuf.Value":
            return
        elif name in ("google.protobuf.Struct", "google.protobuf.Any", "google.protobuf.Empty"):
            if not isinstance(value, dict):
                found.add(path, "must be an object")
        else:
            _check_message(message_of(field), value, path, found)
        return
    if value is None:
        enum_type = field.enum_type if kind == FieldDescriptor.TYPE_ENUM else None
        if enum_type is None or enum_type.full_name != "google.protobuf.NullValue":
            found.add(path, _null_description(element))
        return
    if kind == FieldDescriptor.TYPE_ENUM:
        if not isinstance(value, str) or (
            field.enum_type is not None and value not in field.enum_type.values_by_name
        ):
            found.add(path, _enum_names(field))
    elif kind in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        if not isinstance(value, str):
            found.add(path, "must be a string")
    elif kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            found.add(path, "must be true or false")
    elif kind in INT64_PATTERNS:
        if not isinstance(value, str) or not INT64_PATTERNS[kind].fullmatch(value):
            unsigned = INT64_PATTERNS[kind].pattern == "[0-9]+"
            found.add(
                path,
                "must be a string of decimal digits"
                + ("" if unsigned else ", optionally signed")
                + " (a 64-bit integer)",
            )
        elif not _in_range(int(value), _INTEGER_RANGES[kind]):
            found.add(path, "out of range for a 64-bit integer")
    elif kind in INT32_RANGES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            found.add(path, "must be an integer (a JSON number)")
        elif isinstance(value, float) and not value.is_integer():
            found.add(path, "must be an integer")
        elif not _in_range(int(value), INT32_RANGES[kind]):
            found.add(path, "out of range for a 32-bit integer")
    elif kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT) and (
        isinstance(value, bool) or not isinstance(value, (int, float))
    ):
        found.add(path, "must be a number")


def _in_range(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _null_description(element: bool) -> str:
    if element:
        return "must not be null"
    return "must not be null (omit it for the default value)"


def _header_title(header: str) -> str:
    return "-".join(part.capitalize() for part in header.split("-"))


def _set_scalar(message: Message, variable: str, value: str) -> None:
    parts = variable.split(".")
    target = message
    for part in parts[:-1]:
        target = getattr(target, part)
    field = cast(Descriptor, target.DESCRIPTOR).fields_by_name[parts[-1]]
    json_path = json_field_path(cast(Descriptor, message.DESCRIPTOR), variable)
    document = {field.json_name: _leaf_value(field, value, json_path)}
    try:
        json_format.ParseDict(document, target)
    except json_format.ParseError as error:
        raise invalid_argument(json_path, _describe(str(error))) from None


_AT = re.compile(r' at "?([A-Za-z_][\w.\[\]"\']*?)"?(?:\.\n|\.?$|\n)')
_NO_FIELD = re.compile(r'has no field named "([^"]+)" at "([^"]+)"')
_PREFIX = re.compile(r"^(Failed to parse \S+ field: )+")
_FIELD_CHAIN = re.compile(r"Failed to parse (\S+) field: ")


def _describe(text: str) -> str:
    text = _PREFIX.sub("", text.strip())
    text = text.split("\n")[0]
    text = _AT.sub("", text).rstrip(".")
    return text or "invalid value"


def _error_path(root: str, text: str) -> str:
    """The JSON path a json_format error is about, without the root message's name."""
    unknown = _NO_FIELD.search(text)
    found = _AT.findall(text + "\n")
    if unknown:
        path = f"{unknown.group(2)}.{unknown.group(1)}"
    elif found:
        path = found[-1].rstrip(".")
    else:
        chain = _FIELD_CHAIN.findall(text)
        path = ".".join([root, *chain]) if chain else root
    if path == root:
        return ""
    if path.startswith(root + "."):
        return path[len(root) + 1 :]
    return path


def parse_message(document: dict[str, Any], message: Message) -> None:
    """``document`` (proto3 JSON) into ``message``; raises :class:`ApiError` (400) naming the
    field."""
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        text = str(error)
        path = _error_path(cast(Descriptor, message.DESCRIPTOR).name, text)
        reason = "UNKNOWN_FIELD" if _NO_FIELD.search(text) else "INVALID_JSON"
        description = "unknown field" if reason == "UNKNOWN_FIELD" else _describe(text)
        raise invalid_argument(path or "(body)", description, reason=reason) from None
    except (TypeError, ValueError, AttributeError, RecursionError):
        raise ApiError.bad_request("the request body does not fit the message") from None


def json_field_path(descriptor: Descriptor, path: str) -> str:
    """``order.lines[0].unit_price`` -> ``order.lines[0].unitPrice`` (unknown parts kept)."""
    out: list[str] = []
    current: Descriptor | None = descriptor
    for part in path.split("."):
        name, bracket, rest = part.partition("[")
        suffix = bracket + rest
        field = current.fields_by_name.get(name) if current is not None else None
        if field is None:
            out.append(part)
            current = None
            continue
        out.append(field.json_name + suffix)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            message_type = message_of(field)
            if message_type.GetOptions().map_entry:
                value = message_type.fields_by_name["value"]
                current = value.message_type if suffix else message_type
            else:
                current = message_type
        else:
            current = None
    return ".".join(out)


def render_response(route: Route, message: Message) -> bytes:
    """The JSON body of a successful call (``response_body`` selects one field)."""
    target: Any = message
    if route.response_body:
        target = getattr(message, route.response_body)
        field = cast(Descriptor, message.DESCRIPTOR).fields_by_name[route.response_body]
        if field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
            wrapper = json_format.MessageToDict(message)
            return _dumps(wrapper.get(field.json_name))
    return _dumps(json_format.MessageToDict(target))


def _dumps(value: Any) -> bytes:
    # orjson: compact UTF-8 like json.dumps(ensure_ascii=False, separators=(",", ":")), at a
    # fifth of its cost on a product (the encoding was 2 % of the gateway's CPU per request).
    return orjson.dumps(value)
