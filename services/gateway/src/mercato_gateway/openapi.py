"""OpenAPI 3.1 document generated from the same descriptors as the routes, and a docs page.

Paths and operations come from the routes; parameters from path variables, the request fields
left for the query string and header-bound fields; request and response schemas from the
messages (proto3 JSON: lowerCamelCase or explicit ``json_name``, int64 as strings, enums by
name, well-known types as their JSON forms) and ``google.api`` field behaviours (REQUIRED ->
required, OUTPUT_ONLY -> readOnly, INPUT_ONLY -> writeOnly). The gateway accepts exactly these
forms (``transcode.check_body``): no enum numbers, no ``null`` but for the wrapper types and
``google.protobuf.Value``, no proto-name aliases of members.

Every ``buf.validate`` rule that JSON Schema can express is in the schemas, so that a request
valid against the document passes the services' validation: ``required`` (required, a
non-empty string or list, an enum other than its zero value; and a field without presence whose
rules refuse its zero value, which an absent member is), string lengths (a UTF-8 byte bound as
the length bound it implies, described), ``pattern`` (and no U+0000 in any string, which every
server refuses),
``const``/``in``/``not_in``, prefix/suffix/contains (as extra patterns), the well-known string
formats, numeric bounds (int64 is a JSON string, so only a sign bound becomes a pattern, the
others stay in the description), enum ``defined_only``/``in``/``not_in``, list sizes and
uniqueness, map sizes and a field mask's allowed paths. CEL rules are named in the description
(their message); the two simple forms ``this.f != ''`` and ``has(this.f)`` on a message field
also become ``required``. ``IGNORE_IF_ZERO_VALUE`` admits the zero value besides the rules
(``anyOf`` empty or the format, for the well-known formats).
Security requirements come from the access option: bearer JWT with the route's scopes. Every
GET declares the conditional request: the ``If-None-Match`` header, the ``ETag`` of its 200 and
its 304 Not Modified (``conditional.py``).
"""

from __future__ import annotations

import html
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from buf.validate import validate_pb2
from google.api import field_behavior_pb2  # type: ignore[import-untyped]
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from mercato_common.identity import Audience
from mercato_gateway.routing import Route
from mercato_gateway.transcode import (
    INT32_RANGES,
    INT64_PATTERNS,
    is_query_scalar,
    message_of,
)

__all__ = [
    "ERROR_STATUSES",
    "build_openapi",
    "docs_page",
    "document_path",
    "openapi_path",
    "parameter_name",
]

# A string without U+0000 (refused in every string field by every server).
NUL_FREE = "^[^\\x00]*$"
# Error statuses every operation may answer (besides its own 200).
ERROR_STATUSES = ("400", "401", "403", "404", "409", "413", "415", "429", "500", "503", "504")
# int64 is a JSON string: the digits the transcoder accepts, as an anchored pattern.
_INT64 = {kind: f"^{pattern.pattern}$" for kind, pattern in INT64_PATTERNS.items()}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated lowerCamelCase field paths.",
    },
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.Int64Value": {"type": ["string", "null"], "format": "int64"},
    "google.protobuf.UInt64Value": {"type": ["string", "null"], "format": "int64"},
    "google.protobuf.FloatValue": {"type": ["number", "null"]},
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
}


def parameter_name(variable: str) -> str:
    """The OpenAPI name of a path variable: ``product.sku`` -> ``product_sku``.

    Dotted names are valid OpenAPI but break common tooling (URI template expansion reads the
    dot as an operator); the field path stays in the parameter's ``x-field-path``.
    """
    return variable.replace(".", "_")


def openapi_path(template: str) -> str:
    """``/v1/{product.sku}`` -> ``/v1/{product_sku}``; ``{name=shelves/*}`` -> ``{name}``."""
    out: list[str] = []
    name: list[str] = []
    depth, skipping = 0, False
    for char in template:
        if char == "{":
            depth += 1
            skipping = False
            name = []
            out.append(char)
        elif char == "}":
            depth -= 1
            skipping = False
            out.append(parameter_name("".join(name)) + char)
        elif depth:
            if char == "=":
                skipping = True
            elif not skipping:
                name.append(char)
        else:
            out.append(char)
    return "".join(out)


def document_path(routes: Sequence[Route], route: Route) -> str:
    """The OpenAPI path of ``route`` in the document of ``routes``: that of the first route of
    the same template shape."""
    key = (route.parsed.shape, len(route.parsed.variables))
    first = next(r for r in routes if (r.parsed.shape, len(r.parsed.variables)) == key)
    return openapi_path(first.template)


def _behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


# String formats of protovalidate that JSON Schema (or a pattern) says exactly.
_STRING_FORMATS = {
    "email": "email",
    "hostname": "hostname",
    "ipv4": "ipv4",
    "ipv6": "ipv6",
    "uri": "uri",
    "uri_ref": "uri-reference",
    "uuid": "uuid",
}
_STRING_PATTERNS = {
    "tuuid": "^[0-9a-fA-F]{32}$",
    "ulid": "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$",
}
_INT_KINDS = ("int32", "sint32", "sfixed32", "uint32", "fixed32")
_INT64_KINDS = ("int64", "sint64", "sfixed64", "uint64", "fixed64")
# CEL rules on a message field that are plain presence rules on one of its fields.
_CEL_NOT_EMPTY = re.compile(r"^this\.([a-z_][a-z0-9_]*) != ''$")
_CEL_HAS = re.compile(r"^has\(this\.([a-z_][a-z0-9_]*)\)$")


def _camel(path: str) -> str:
    """``category_id`` -> ``categoryId`` (proto3 JSON names of field mask paths)."""
    head, *rest = path.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _cel_messages(rules: Iterable[validate_pb2.Rule]) -> list[str]:
    return [rule.message or rule.expression for rule in rules]


def _with_description(schema: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    if notes:
        text = "Also checked: " + "; ".join(notes) + "."
        existing = schema.get("description")
        schema["description"] = f"{existing} {text}" if existing else text
    return schema


def _rules(field: FieldDescriptor) -> validate_pb2.FieldRules | None:
    options = field.GetOptions()
    if not options.HasExtension(validate_pb2.field):
        return None
    rules: validate_pb2.FieldRules = options.Extensions[validate_pb2.field]
    return rules


class _SchemaBuilder:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursion ends here
            self.components[name] = self.message(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def message(
        self, descriptor: Descriptor, *, exclude: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in descriptor.fields:
            if field.name in exclude:
                continue
            properties[field.json_name] = self.field(field)
            if _is_required(field):
                required.append(field.json_name)
        schema: dict[str, Any] = {
            "type": "object",
            "title": descriptor.full_name,
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            schema["required"] = required
        message_rules = descriptor.GetOptions().Extensions[validate_pb2.message]
        return _with_description(schema, _cel_messages(message_rules.cel))

    def field(self, field: FieldDescriptor, *, single: bool = False) -> dict[str, Any]:
        rules = _rules(field)
        behaviors = _behaviors(field)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self.scalar(value_field, None),
            }
            if rules is not None and rules.HasField("map"):
                map_rules = rules.map
                if map_rules.HasField("max_pairs"):
                    schema["maxProperties"] = map_rules.max_pairs
                if map_rules.HasField("min_pairs"):
                    schema["minProperties"] = map_rules.min_pairs
                if map_rules.keys.HasField("string"):
                    key_schema = self._string_rules({"type": "string"}, map_rules.keys, False)
                    key_schema.pop("type", None)
                    if key_schema:
                        schema["propertyNames"] = key_schema
                if map_rules.values.HasField("string"):
                    schema["additionalProperties"] = self._string_rules(
                        self.scalar(value_field, None), map_rules.values, False
                    )
        elif field.is_repeated and not single:
            item_rules = rules.repeated.items if rules is not None else None
            schema = {"type": "array", "items": self.scalar(field, item_rules)}
            if rules is not None and rules.HasField("repeated"):
                repeated = rules.repeated
                if repeated.HasField("min_items"):
                    schema["minItems"] = repeated.min_items
                if repeated.HasField("max_items"):
                    schema["maxItems"] = repeated.max_items
                if repeated.unique:
                    schema["uniqueItems"] = True
            if rules is not None and rules.required:
                schema["minItems"] = max(1, schema.get("minItems", 0))
        else:
            schema = self.scalar(field, rules)
        if rules is not None:
            schema = self._cel(field, schema, rules)
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            if "$ref" in schema:
                schema = {"allOf": [schema]}
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in behaviors:
            if "$ref" in schema:
                schema = {"allOf": [schema]}
            schema["writeOnly"] = True
        return schema

    @staticmethod
    def _cel(
        field: FieldDescriptor, schema: dict[str, Any], rules: validate_pb2.FieldRules
    ) -> dict[str, Any]:
        """Name the field's CEL rules; presence rules on a message's fields become required."""
        notes = _cel_messages(rules.cel) + list(rules.cel_expression)
        if not notes:
            return schema
        present: list[str] = []
        if field.message_type is not None and not field.is_repeated:
            for rule in rules.cel:
                found = _CEL_NOT_EMPTY.match(rule.expression) or _CEL_HAS.match(rule.expression)
                inner = found and field.message_type.fields_by_name.get(found.group(1))
                if inner:
                    present.append(inner.json_name)
                    if inner.type == FieldDescriptor.TYPE_STRING:
                        schema = {
                            "allOf": [schema, {"properties": {inner.json_name: {"minLength": 1}}}]
                        }
        if present:
            if "allOf" not in schema:
                schema = {"allOf": [schema]}
            schema["allOf"].append({"required": present})
        return _with_description(schema, notes)

    def scalar(
        self, field: FieldDescriptor, rules: validate_pb2.FieldRules | None
    ) -> dict[str, Any]:
        kind = field.type
        ignore_empty = rules is not None and rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE
        required = rules is not None and rules.required
        if kind == FieldDescriptor.TYPE_MESSAGE:
            if (
                message_of(field).full_name == "google.protobuf.FieldMask"
                and rules is not None
                and rules.HasField("field_mask")
            ):
                return _field_mask_schema(rules.field_mask, required)
            return self.ref(message_of(field))
        if kind == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            return _enum_schema(field, rules)
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == FieldDescriptor.TYPE_STRING:
            schema: dict[str, Any] = {"type": "string"}
            schema = self._string_rules(schema, rules, ignore_empty)
            if required and not schema.get("minLength"):
                schema["minLength"] = 1
            # Every server refuses U+0000 in any string (PostgreSQL and FerretDB cannot store
            # it); the patterns of the protos all exclude it already.
            schema.setdefault("pattern", NUL_FREE)
            return schema
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        if kind in INT32_RANGES:
            low, high = INT32_RANGES[kind]
            schema = {"type": "integer", "format": "int32", "minimum": low, "maximum": high}
            number_rules = _kind_rules(rules, _INT_KINDS)
            if number_rules is not None:
                if number_rules.HasField("gte"):
                    schema["minimum"] = max(low, number_rules.gte)
                if number_rules.HasField("gt"):
                    schema["minimum"] = max(low, number_rules.gt + 1)
                if number_rules.HasField("lte"):
                    schema["maximum"] = min(high, number_rules.lte)
                if number_rules.HasField("lt"):
                    schema["maximum"] = min(high, number_rules.lt - 1)
                _choices(schema, number_rules)
            if required:
                schema["not"] = {"const": 0}
            return schema
        if kind in _INT64:
            return _int64_schema(kind, _kind_rules(rules, _INT64_KINDS))
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            schema = {"type": "number"}
            number_rules = _kind_rules(rules, ("double", "float"))
            if number_rules is not None:
                for rule, keyword in (
                    ("gte", "minimum"),
                    ("gt", "exclusiveMinimum"),
                    ("lte", "maximum"),
                    ("lt", "exclusiveMaximum"),
                ):
                    if number_rules.HasField(rule):
                        schema[keyword] = getattr(number_rules, rule)
                _choices(schema, number_rules)
            return schema
        return {}

    @staticmethod
    def _string_rules(
        schema: dict[str, Any], rules: validate_pb2.FieldRules | None, ignore_empty: bool
    ) -> dict[str, Any]:
        if rules is None or not rules.HasField("string"):
            return schema
        string = rules.string
        if string.HasField("pattern"):
            pattern = string.pattern
            schema["pattern"] = f"^$|{pattern}" if ignore_empty else pattern
        if string.HasField("max_len"):
            schema["maxLength"] = string.max_len
        if string.HasField("min_len") and not ignore_empty:
            schema["minLength"] = string.min_len
        if string.HasField("len"):
            schema["maxLength"] = string.len
            if not ignore_empty:
                schema["minLength"] = string.len
        if string.HasField("max_bytes"):
            # A character is 1-4 bytes in UTF-8: the length bound is necessary, the byte bound
            # itself is only described.
            schema["maxLength"] = min(schema.get("maxLength", string.max_bytes), string.max_bytes)
            _with_description(schema, [f"at most {string.max_bytes} bytes in UTF-8"])
        if string.HasField("min_bytes"):
            _with_description(schema, [f"at least {string.min_bytes} bytes in UTF-8"])
        _choices(schema, string)
        extra = [
            f"^{re.escape(string.prefix)}" if string.HasField("prefix") else "",
            f"{re.escape(string.suffix)}$" if string.HasField("suffix") else "",
            re.escape(string.contains) if string.HasField("contains") else "",
        ]
        extra_patterns = [f"^$|{p}" if ignore_empty else p for p in extra if p]
        well_known = string.WhichOneof("well_known")
        if well_known in _STRING_PATTERNS and getattr(string, well_known):
            pattern = _STRING_PATTERNS[well_known]
            extra_patterns.append(f"^$|{pattern}" if ignore_empty else pattern)
        if extra_patterns:
            if "pattern" not in schema:
                schema["pattern"] = extra_patterns.pop(0)
            if extra_patterns:
                schema["allOf"] = [{"pattern": p} for p in extra_patterns]
        if well_known in _STRING_FORMATS and getattr(string, well_known):
            if ignore_empty:
                # The zero value skips the rules: empty, or that format.
                schema["anyOf"] = [{"maxLength": 0}, {"format": _STRING_FORMATS[well_known]}]
            else:
                schema["format"] = _STRING_FORMATS[well_known]
        return schema


def _is_required(field: FieldDescriptor) -> bool:
    """REQUIRED by field behaviour, or by protovalidate: ``required``, or rules that refuse the
    zero value of a field without presence (in proto3 JSON an absent member is the zero value,
    e.g. ``Money.currency_code`` with the pattern ``^[A-Z]{3}$``)."""
    if field_behavior_pb2.REQUIRED in _behaviors(field):
        return True
    rules = _rules(field)
    if rules is None:
        return False
    return rules.required or _refuses_zero(field, rules)


def _refuses_zero(field: FieldDescriptor, rules: validate_pb2.FieldRules) -> bool:
    """Whether the rules refuse the field's zero value (which they are applied to, unless
    ignored, when the field has no presence)."""
    if rules.ignore in (validate_pb2.IGNORE_IF_ZERO_VALUE, validate_pb2.IGNORE_ALWAYS):
        return False
    if field.is_repeated:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            return rules.HasField("map") and rules.map.min_pairs > 0
        return rules.HasField("repeated") and rules.repeated.min_items > 0
    if field.has_presence:
        return False
    kind = rules.WhichOneof("type")
    if kind == "string":
        return not _string_admits(rules.string, "")
    if kind in _INT_KINDS or kind in _INT64_KINDS or kind == "enum":
        return not _number_admits(getattr(rules, kind), 0)
    if kind == "bool":
        return rules.bool.HasField("const") and rules.bool.const
    return False


def _string_admits(string: validate_pb2.StringRules, value: str) -> bool:
    if string.min_len > 0 or string.len > 0 or string.min_bytes > 0 or string.len_bytes > 0:
        return False
    if string.HasField("pattern") and not re.search(string.pattern, value):
        return False
    if any(getattr(string, rule) for rule in ("prefix", "suffix", "contains")):
        return False
    if string.HasField("const") and string.const != value:
        return False
    if len(getattr(string, "in")) and value not in getattr(string, "in"):
        return False
    if value in string.not_in:
        return False
    well_known = string.WhichOneof("well_known")
    return not (well_known and getattr(string, well_known))


_COMPARISONS: dict[str, Callable[[int, int], bool]] = {
    "const": operator.eq,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def _number_admits(number: Any, value: int) -> bool:
    fields = number.DESCRIPTOR.fields_by_name
    for name, admits in _COMPARISONS.items():
        if name in fields and number.HasField(name) and not admits(value, getattr(number, name)):
            return False
    if len(getattr(number, "in")) and value not in getattr(number, "in"):
        return False
    return value not in number.not_in


def _kind_rules(rules: validate_pb2.FieldRules | None, kinds: Sequence[str]) -> Any:
    if rules is None:
        return None
    kind = rules.WhichOneof("type")
    return getattr(rules, kind) if kind is not None and kind in kinds else None


def _choices(schema: dict[str, Any], rules: Any) -> None:
    """``const``, ``in`` and ``not_in`` of scalar rules."""
    if rules.HasField("const"):
        schema["const"] = rules.const
    if len(getattr(rules, "in")):
        schema["enum"] = list(getattr(rules, "in"))
    if len(rules.not_in):
        schema["not"] = {"enum": list(rules.not_in)}


def _enum_schema(field: FieldDescriptor, rules: validate_pb2.FieldRules | None) -> dict[str, Any]:
    """Enum values by name; ``in``/``not_in``/``const`` and ``required`` (non-zero) narrow them.
    ``defined_only`` needs nothing more: names are the only JSON form documented and accepted
    (the gateway refuses numbers, which proto3 JSON parsers also take)."""
    values = list(field.enum_type.values) if field.enum_type is not None else []
    numbers = [value.number for value in values]
    if rules is not None and rules.HasField("enum"):
        enum_rules = rules.enum
        if enum_rules.HasField("const"):
            numbers = [n for n in numbers if n == enum_rules.const]
        if len(getattr(enum_rules, "in")):
            numbers = [n for n in numbers if n in set(getattr(enum_rules, "in"))]
        numbers = [n for n in numbers if n not in set(enum_rules.not_in)]
    if rules is not None and rules.required:
        numbers = [n for n in numbers if n != 0]
    names = [value.name for value in values if value.number in numbers]
    title = field.enum_type.full_name if field.enum_type is not None else ""
    return {"type": "string", "enum": names, "title": title}


def _int64_schema(kind: int, rules: Any) -> dict[str, Any]:
    """int64 is a JSON string: a lower bound of 0 (or 1) becomes the digits-only pattern, any
    other bound is only described (a pattern for it would be unreadable)."""
    schema: dict[str, Any] = {"type": "string", "format": "int64", "pattern": _INT64[kind]}
    if rules is None:
        return schema
    lowest = None
    if rules.HasField("gte"):
        lowest = rules.gte
    elif rules.HasField("gt"):
        lowest = rules.gt + 1
    if lowest == 0:
        schema["pattern"] = r"^[0-9]+$"
    elif lowest == 1:
        schema["pattern"] = r"^0*[1-9][0-9]*$"
    notes = [
        f"{text} {getattr(rules, rule)}"
        for rule, text in (("gte", ">="), ("gt", ">"), ("lte", "<="), ("lt", "<"))
        if rules.HasField(rule)
    ]
    if len(getattr(rules, "in")):
        schema["enum"] = [str(value) for value in getattr(rules, "in")]
    if len(rules.not_in):
        schema["not"] = {"enum": [str(value) for value in rules.not_in]}
    if rules.HasField("const"):
        schema["const"] = str(rules.const)
    return _with_description(schema, [f"value {' and '.join(notes)}"] if notes else [])


def _field_mask_schema(rules: validate_pb2.FieldMaskRules, required: bool) -> dict[str, Any]:
    """A field mask is one comma-separated string of lowerCamelCase paths: ``in`` becomes a
    pattern over those paths (each one the enum of allowed paths)."""
    schema = dict(_WELL_KNOWN["google.protobuf.FieldMask"])
    paths = [_camel(path) for path in getattr(rules, "in")]
    if paths:
        one = "(" + "|".join(re.escape(path) for path in paths) + ")"
        many = f"{one}(,{one})*"
        schema["pattern"] = f"^{many}$" if required else f"^({many})?$"
        schema["description"] = "Comma-separated field paths, each one of: " + ", ".join(paths)
        schema["x-field-mask-paths"] = paths
    elif required:
        schema["minLength"] = 1
    return schema


def _access_extension(route: Route) -> dict[str, Any]:
    return {"audience": route.access.audience.value, "scopes": sorted(route.access.scopes)}


def _security(route: Route) -> list[dict[str, list[str]]]:
    if route.form_encoded:
        return [{}, {"clientBasic": []}]
    if route.access.audience is Audience.PUBLIC:
        return []
    if route.access.audience is Audience.AUTHENTICATED:
        return [{"bearerAuth": []}]
    return [{"bearerAuth": sorted(route.access.scopes)}]


def _query_parameters(
    builder: _SchemaBuilder, descriptor: Descriptor, exclude: frozenset[str]
) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []

    def walk(message: Descriptor, prefix: str, depth: int, top: bool) -> None:
        for field in message.fields:
            if top and field.name in exclude:
                continue
            name = prefix + field.json_name
            is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
            if is_map:
                continue
            if field.type == FieldDescriptor.TYPE_MESSAGE and not is_query_scalar(field):
                if not field.is_repeated and depth < 2:
                    walk(message_of(field), name + ".", depth + 1, False)
                continue
            schema = builder.field(field)
            schema.pop("readOnly", None)
            parameter: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
            if field.is_repeated:
                parameter["style"] = "form"
                parameter["explode"] = True
            if top and field_behavior_pb2.REQUIRED in _behaviors(field):
                parameter["required"] = True
            if field_behavior_pb2.OUTPUT_ONLY in _behaviors(field):
                continue
            parameters.append(parameter)

    walk(descriptor, "", 0, True)
    return parameters


def _path_parameter(
    builder: _SchemaBuilder, route: Route, variable: str, name: str
) -> dict[str, Any]:
    message: Descriptor | None = route.request_descriptor
    field: FieldDescriptor | None = None
    for part in variable.split("."):
        assert message is not None
        field = message.fields_by_name[part]
        message = field.message_type
    assert field is not None
    schema = builder.field(field, single=True)
    schema.pop("readOnly", None)
    if schema.get("pattern", "").startswith("^$|"):
        schema["pattern"] = schema["pattern"][3:]
    if schema.get("type") == "string":
        schema.setdefault("minLength", 1)
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "x-field-path": variable,
    }


def _without_path_bound(schema: dict[str, Any], route: Route) -> dict[str, Any]:
    """A body field's schema without presence rules on the fields its path sets (the path of
    ``PATCH /v1/products/{product.sku}`` fills ``product.sku``, the body need not)."""
    prefix = route.body + "."
    bound = {v.removeprefix(prefix) for v in route.parsed.variables if v.startswith(prefix)}
    if not bound or "allOf" not in schema:
        return schema
    json_names = {
        f.json_name
        for f in message_of(route.request_descriptor.fields_by_name[route.body]).fields
        if f.name in bound
    }
    parts = []
    for part in schema["allOf"]:
        if "required" in part:
            part = {**part, "required": [n for n in part["required"] if n not in json_names]}
            if not part["required"]:
                continue
        parts.append(part)
    return {**schema, "allOf": parts}


def _error_responses(form: bool) -> dict[str, Any]:
    target = "OAuthError" if form else "Error"
    return {
        status: {"$ref": f"#/components/responses/{target}{status}"} for status in ERROR_STATUSES
    }


def _operation(builder: _SchemaBuilder, route: Route, path_names: Sequence[str]) -> dict[str, Any]:
    descriptor = route.request_descriptor
    path_roots = frozenset(v.split(".")[0] for v in route.parsed.variables)
    header_names = frozenset(name for name, _, _ in route.header_fields)
    parameters: list[dict[str, Any]] = [
        _path_parameter(builder, route, variable, name)
        for variable, name in zip(route.parsed.variables, path_names, strict=True)
    ]
    for name, header, required in route.header_fields:
        header_field = descriptor.fields_by_name[name]
        schema = builder.field(header_field)
        parameters.append(
            {
                "name": "-".join(p.capitalize() for p in header.split("-")),
                "in": "header",
                "required": required,
                "schema": schema,
                "description": f"Sets the request field `{header_field.json_name}`.",
            }
        )
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": f"{route.method.containing_service.name}.{route.method.name}",
        "tags": [route.method.containing_service.full_name],
        "security": _security(route),
        "x-grpc-method": route.full_method,
        "x-mercato-access": _access_extension(route),
        "x-mercato-rate-limit-class": route.rate_class,
    }
    if route.body == "*":
        schema = builder.message(descriptor, exclude=path_roots | header_names)
        media = "application/x-www-form-urlencoded" if route.form_encoded else "application/json"
        if route.form_encoded:
            for prop in schema["properties"].values():
                prop.pop("writeOnly", None)
            schema["additionalProperties"] = True
        operation["requestBody"] = {
            "required": bool(schema.get("required")),
            "content": {media: {"schema": schema}},
        }
    else:
        parameters.extend(_query_parameters(builder, descriptor, route.bound_fields | header_names))
        if route.raw_body:
            # google.api.HttpBody: any bytes, passed on as they came (a signed webhook).
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {}}},
            }
        elif route.body:
            field = descriptor.fields_by_name[route.body]
            schema = _without_path_bound(builder.field(field), route)
            operation["requestBody"] = {
                "required": field_behavior_pb2.REQUIRED in _behaviors(field),
                "content": {"application/json": {"schema": schema}},
            }
    if route.http_method == "GET":
        parameters.append(_IF_NONE_MATCH)
    if parameters:
        operation["parameters"] = parameters
    response_schema: dict[str, Any]
    if route.response_body:
        response_field = route.response_descriptor.fields_by_name[route.response_body]
        response_schema = builder.field(response_field)
    else:
        response_schema = builder.ref(route.response_descriptor)
    ok: dict[str, Any] = {
        "description": "OK",
        "content": {"application/json": {"schema": response_schema}},
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
    }
    responses: dict[str, Any] = {"200": ok}
    if route.http_method == "GET":
        ok["headers"]["ETag"] = {"$ref": "#/components/headers/ETag"}
        responses["304"] = {"$ref": "#/components/responses/NotModified"}
    operation["responses"] = {**responses, **_error_responses(route.form_encoded)}
    return operation


# Conditional GET (conditional.py): every GET answer has a weak ETag; If-None-Match gets 304.
_IF_NONE_MATCH: dict[str, Any] = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": (
        "RFC 9110 section 13.1.2: `*` or a comma-separated list of entity tags (from `ETag`). "
        "When one matches (weak comparison) the answer is 304 Not Modified without content; "
        "members that are not entity tags never match."
    ),
}
_ETAG_HEADER: dict[str, Any] = {
    "description": (
        "Weak entity tag of the answer (RFC 9110 section 8.8.3): a digest of the resource as "
        "served, new whenever it changes. Send it back in If-None-Match."
    ),
    "required": True,
    "schema": {"type": "string", "pattern": '^W/"[A-Za-z0-9_-]+"$'},
}
_NOT_MODIFIED: dict[str, Any] = {
    "description": (
        "Not Modified: If-None-Match matched the current entity tag (or was `*`); no content."
    ),
    "headers": {
        "ETag": {"$ref": "#/components/headers/ETag"},
        "X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"},
    },
}


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message", "reason", "domain"],
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status."},
                "status": {"type": "string", "description": "The google.rpc.Code name."},
                "message": {"type": "string"},
                "reason": {"type": "string", "description": "ErrorInfo reason, UPPER_SNAKE_CASE."},
                "domain": {"type": "string", "description": "ErrorInfo domain."},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                "fieldViolations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "description"],
                        "properties": {
                            "field": {"type": "string"},
                            "description": {"type": "string"},
                        },
                    },
                },
                "preconditionViolations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string"},
                            "subject": {"type": "string"},
                            "description": {"type": "string"},
                        },
                    },
                },
                "retryAfterSeconds": {"type": "integer"},
                "requestId": {"type": "string"},
            },
        }
    },
}
_OAUTH_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "RFC 6749 section 5.2 error code."},
        "error_description": {"type": "string"},
    },
}
_STATUS_TEXT = {
    "400": "Bad request: malformed JSON, wrong types, unknown fields, invalid values",
    "401": "Missing or invalid access token (see WWW-Authenticate)",
    "403": "The access token lacks a required scope, or the caller may not do this",
    "404": "Not found",
    "409": "Conflict: already exists, aborted (retry), or failed precondition",
    "413": "Request body too large",
    "415": "Unsupported media type",
    "429": "Rate limited or throttled (see Retry-After)",
    "500": "Internal error",
    "503": "A service is unavailable (see Retry-After)",
    "504": "A service did not answer in time",
}


def _health_paths() -> dict[str, Any]:
    """The gateway's own endpoints: liveness, readiness and the upstreams' status."""
    checks = {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string"},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    upstreams = {
        "type": "object",
        "required": ["status", "upstreams"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "upstreams": {
                "type": "object",
                "additionalProperties": {"type": "string", "enum": ["SERVING", "NOT_SERVING"]},
            },
        },
    }

    def operation(name: str, summary: str, schema: dict[str, Any], **answers: str) -> Any:
        content = {"application/json": {"schema": schema}}
        return {
            "get": {
                "operationId": f"Gateway_{name}",
                "summary": summary,
                "tags": ["gateway"],
                "security": [],
                "responses": {
                    code.removeprefix("s"): {"description": description, "content": content}
                    for code, description in answers.items()
                },
            }
        }

    return {
        "/healthz": operation(
            "Healthz", "Liveness: the process serves requests.", checks, s200="alive"
        ),
        "/readyz": operation(
            "Readyz",
            "Readiness of the gateway itself (not draining; Redis when the rate limiter fails"
            " closed). Upstreams do not count: see /status.",
            checks,
            s200="ready",
            s503="not ready",
        ),
        "/status": operation(
            "Status",
            "Each upstream service's gRPC health as the gateway sees it.",
            upstreams,
            s200="every upstream serving",
            s503="some upstream not serving",
        ),
    }


def build_openapi(
    routes: Sequence[Route], *, title: str = "Mercato API", version: str, server_url: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    builder = _SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    scopes: set[str] = set()
    # Templates of the same shape are one OpenAPI path (OpenAPI forbids two paths that differ
    # only in their variables' names): the first route's names it, and by position the others'
    # parameters take its names (``PATCH /v1/products/{product.sku}`` is under
    # ``/v1/products/{sku}``, its parameter ``sku`` with ``x-field-path: product.sku``).
    first_of_shape: dict[tuple[str, int], Route] = {}
    for route in routes:
        scopes.update(route.access.scopes)
        key = (route.parsed.shape, len(route.parsed.variables))
        first = first_of_shape.setdefault(key, route)
        names = [parameter_name(variable) for variable in first.parsed.variables]
        path = paths.setdefault(openapi_path(first.template), {})
        path[route.http_method.lower()] = _operation(builder, route, names)
    paths.update(_health_paths())
    responses: dict[str, Any] = {"NotModified": _NOT_MODIFIED}
    for status in ERROR_STATUSES:
        headers: dict[str, Any] = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
        if status in ("429", "503"):
            headers["Retry-After"] = {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer"},
            }
        if status in ("401", "403"):
            headers["WWW-Authenticate"] = {
                "description": "RFC 6750 bearer challenge.",
                "schema": {"type": "string"},
            }
        for name, schema in (("Error", "Error"), ("OAuthError", "OAuthError")):
            responses[f"{name}{status}"] = {
                "description": _STATUS_TEXT[status],
                "headers": headers,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                },
            }
    schemas = dict(sorted(builder.components.items()))
    schemas["Error"] = _ERROR_SCHEMA
    schemas["OAuthError"] = _OAUTH_ERROR_SCHEMA
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "REST/JSON API of the mercato suite, derived from the gRPC contracts' "
                "google.api.http annotations. JSON is the proto3 JSON mapping; errors share one "
                "shape (components.schemas.Error), the OAuth endpoints answer RFC 6749 errors."
            ),
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "responses": responses,
            "headers": {
                "X-Request-Id": {
                    "description": "The request id (echoed, or generated when absent).",
                    "schema": {"type": "string"},
                },
                "ETag": _ETAG_HEADER,
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Access token (RFC 9068) from /oauth2/token or "
                    "/v1/auth/login. Scopes: " + ", ".join(sorted(scopes)),
                },
                "clientBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "OAuth client authentication (RFC 6749 section 2.3.1).",
                },
            },
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def docs_page(document: dict[str, Any]) -> str:
    """A self-contained HTML page listing every operation (no scripts, no external assets)."""
    esc = html.escape
    groups: dict[str, list[str]] = {}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            access = operation.get("x-mercato-access", {"audience": "public", "scopes": []})
            scopes = " ".join(access["scopes"]) or access["audience"]
            params = ", ".join(
                f"{p['name']} ({p['in']}{', required' if p.get('required') else ''})"
                for p in operation.get("parameters", [])
            )
            body = operation.get("requestBody", {}).get("content", {})
            media = ", ".join(body) if body else ""
            row = (
                f"<tr><td class='m {esc(method)}'>{esc(method.upper())}</td>"
                f"<td><code>{esc(path)}</code></td><td>{esc(operation.get('summary', ''))}</td>"
                f"<td>{esc(scopes)}</td><td>{esc(params)}</td><td>{esc(media)}</td></tr>"
            )
            groups.setdefault(operation.get("tags", ["other"])[0], []).append(row)
    sections = "".join(
        f"<h2>{esc(tag)}</h2><table><tr><th>method</th><th>path</th><th>operation</th>"
        f"<th>access</th><th>parameters</th><th>body</th></tr>{''.join(rows)}</table>"
        for tag, rows in groups.items()
    )
    title = esc(document["info"]["title"])
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}"
        "table{border-collapse:collapse;width:100%;margin-bottom:1.5rem}"
        "td,th{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}"
        "th{background:#f4f4f4}.m{font-weight:bold;font-family:monospace}"
        ".get{color:#1a7f37}.post{color:#0550ae}.patch{color:#9a6700}.delete{color:#cf222e}"
        "</style></head><body>"
        f"<h1>{title} <small>{esc(document['info']['version'])}</small></h1>"
        "<p>Generated from the gRPC contracts. Machine-readable: "
        "<a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
        f"{sections}</body></html>"
    )
