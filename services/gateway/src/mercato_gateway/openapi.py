"""OpenAPI 3.1 document generated from the same descriptors as the routes, and a docs page.

Paths and operations come from the routes; parameters from path variables, the request fields
left for the query string and header-bound fields; request and response schemas from the
messages (proto3 JSON: lowerCamelCase or explicit ``json_name``, int64 as strings, enums by
name, well-known types as their JSON forms), with the protovalidate rules that JSON Schema can
express (lengths, patterns, ranges, item counts, uuid/email formats) and ``google.api``
field behaviours (REQUIRED -> required, OUTPUT_ONLY -> readOnly, INPUT_ONLY -> writeOnly).
Security requirements come from the access option: bearer JWT with the route's scopes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from buf.validate import validate_pb2
from google.api import field_behavior_pb2  # type: ignore[import-untyped]
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from mercato_common.identity import Audience
from mercato_gateway.routing import Route
from mercato_gateway.transcode import is_query_scalar, message_of

__all__ = ["ERROR_STATUSES", "build_openapi", "docs_page", "openapi_path", "parameter_name"]

# Error statuses every operation may answer (besides its own 200).
ERROR_STATUSES = ("400", "401", "403", "404", "409", "413", "415", "429", "500", "503", "504")
_INT32 = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
}
_INT64 = {
    FieldDescriptor.TYPE_INT64: r"^-?[0-9]+$",
    FieldDescriptor.TYPE_SINT64: r"^-?[0-9]+$",
    FieldDescriptor.TYPE_SFIXED64: r"^-?[0-9]+$",
    FieldDescriptor.TYPE_UINT64: r"^[0-9]+$",
    FieldDescriptor.TYPE_FIXED64: r"^[0-9]+$",
}
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


def _behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


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
            if field_behavior_pb2.REQUIRED in _behaviors(field):
                required.append(field.json_name)
        schema: dict[str, Any] = {
            "type": "object",
            "title": descriptor.full_name,
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            schema["required"] = required
        return schema

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
        else:
            schema = self.scalar(field, rules)
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            if "$ref" in schema:
                schema = {"allOf": [schema]}
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in behaviors:
            if "$ref" in schema:
                schema = {"allOf": [schema]}
            schema["writeOnly"] = True
        return schema

    def scalar(
        self, field: FieldDescriptor, rules: validate_pb2.FieldRules | None
    ) -> dict[str, Any]:
        kind = field.type
        ignore_empty = rules is not None and rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE
        if kind == FieldDescriptor.TYPE_MESSAGE:
            return self.ref(message_of(field))
        if kind == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            names = [value.name for value in field.enum_type.values]
            return {"type": "string", "enum": names, "title": field.enum_type.full_name}
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == FieldDescriptor.TYPE_STRING:
            schema: dict[str, Any] = {"type": "string"}
            return self._string_rules(schema, rules, ignore_empty)
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        if kind in _INT32:
            low, high = _INT32[kind]
            schema = {"type": "integer", "format": "int32", "minimum": low, "maximum": high}
            number_rules: Any = None
            if rules is not None:
                for kind_name in ("int32", "sint32", "sfixed32", "uint32", "fixed32"):
                    if rules.HasField(kind_name):
                        number_rules = getattr(rules, kind_name)
            if number_rules is not None:
                if number_rules.HasField("gte"):
                    schema["minimum"] = max(low, number_rules.gte)
                if number_rules.HasField("gt"):
                    schema["minimum"] = max(low, number_rules.gt + 1)
                if number_rules.HasField("lte"):
                    schema["maximum"] = min(high, number_rules.lte)
                if number_rules.HasField("lt"):
                    schema["maximum"] = min(high, number_rules.lt - 1)
            return schema
        if kind in _INT64:
            return {"type": "string", "format": "int64", "pattern": _INT64[kind]}
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return {"type": "number"}
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
        if not ignore_empty:
            if string.HasField("uuid") and string.uuid:
                schema["format"] = "uuid"
            elif string.HasField("email") and string.email:
                schema["format"] = "email"
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


def _path_parameter(builder: _SchemaBuilder, route: Route, variable: str) -> dict[str, Any]:
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
        "name": parameter_name(variable),
        "in": "path",
        "required": True,
        "schema": schema,
        "x-field-path": variable,
    }


def _error_responses(form: bool) -> dict[str, Any]:
    target = "OAuthError" if form else "Error"
    return {
        status: {"$ref": f"#/components/responses/{target}{status}"} for status in ERROR_STATUSES
    }


def _operation(builder: _SchemaBuilder, route: Route) -> dict[str, Any]:
    descriptor = route.request_descriptor
    path_roots = frozenset(v.split(".")[0] for v in route.parsed.variables)
    header_names = frozenset(name for name, _, _ in route.header_fields)
    parameters: list[dict[str, Any]] = [
        _path_parameter(builder, route, variable) for variable in route.parsed.variables
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
        if route.body:
            field = descriptor.fields_by_name[route.body]
            schema = builder.field(field)
            operation["requestBody"] = {
                "required": field_behavior_pb2.REQUIRED in _behaviors(field),
                "content": {"application/json": {"schema": schema}},
            }
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
    operation["responses"] = {"200": ok, **_error_responses(route.form_encoded)}
    return operation


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
    for route in routes:
        scopes.update(route.access.scopes)
        path = paths.setdefault(openapi_path(route.template), {})
        path[route.http_method.lower()] = _operation(builder, route)
    paths.update(_health_paths())
    responses: dict[str, Any] = {}
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
                }
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
