"""REST routes derived at start from the compiled descriptors.

Every RPC with a ``google.api.http`` annotation becomes a route (its additional bindings too);
its access rule is the ``(mercato.api.v1.access)`` option. Nothing here names an RPC except
the two OAuth endpoints whose requests are form-encoded (RFC 6749/7009), which the protos
document as that exception.

Path templates follow ``google/api/http.proto``::

    Template = "/" Segments [ Verb ] ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;

Matching first finds the path's template, as OpenAPI does: among all templates that match, the
most specific one (segment by segment a literal beats a variable, which beats ``**``; so
``/v1/users/me`` is GetCurrentUser's path, never GetUser's with ``id = "me"``). The request's
method must be one of that template's (its routes of the same shape), else 405 with exactly
those methods in ``Allow``: what ``/openapi.json`` documents for the path.

A ``:verb`` suffix that some route's template declares belongs to that verb only: a template
without it never matches a last segment ending in it (``PATCH /v1/products/X:adjustStock`` is
not UpdateProduct with ``sku = "X:adjustStock"``, and its 405 allows POST only). A value that
really ends in such a suffix is sent with the colon percent-encoded (``X%3AadjustStock``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal, cast
from urllib.parse import unquote

from google.api import (  # type: ignore[import-untyped]
    annotations_pb2,
    field_behavior_pb2,
    http_pb2,
)
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

import mercato
from mercato_common.identity import AccessPolicy, Audience, access_policy

__all__ = [
    "FORM_ENCODED_METHODS",
    "HEADER_FIELDS",
    "HTTP_BODY_TYPE",
    "Match",
    "Route",
    "RouteError",
    "Router",
    "Segment",
    "discover_methods",
    "is_required",
    "load_contract_modules",
    "parse_template",
    "routes_from_methods",
]

# RFC 6749 (token) and RFC 7009 (revocation): form-encoded requests, RFC-shaped errors.
FORM_ENCODED_METHODS = frozenset(
    {"mercato.auth.v1.AuthService/IssueToken", "mercato.auth.v1.AuthService/RevokeToken"}
)
# Request fields bound from HTTP headers, wherever an RPC has them: field name -> header.
HEADER_FIELDS = {"idempotency_key": "idempotency-key", "stripe_signature": "stripe-signature"}
# A body field of this type takes the request body as it came (grpc-gateway's convention):
# for payloads whose bytes are signed, such as a payment provider's webhook.
HTTP_BODY_TYPE = "google.api.HttpBody"

_READ_LEVELS = (descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,)


#: Leading path segments the router indexes its templates by, and how many keys it keeps.
_PREFIX_SEGMENTS = 2
_PREFIXES_KEPT = 256


class RouteError(ValueError):
    """A path template or a binding the gateway cannot serve (a contract error, at start)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One path segment: a literal, ``*`` / ``**`` (possibly inside a variable)."""

    kind: Literal["literal", "single", "multi"]
    literal: str = ""
    # The field path a variable binds (None for a bare wildcard or a literal).
    variable: str | None = None
    # Index of the variable's first segment (variables may span several segments).
    variable_start: bool = False


@dataclass(frozen=True, slots=True)
class Template:
    segments: tuple[Segment, ...]
    verb: str
    variables: tuple[str, ...]
    # Whether a ``**`` segment takes the rest of the path (read on every match: stored once).
    has_multi: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "has_multi", any(s.kind == "multi" for s in self.segments))

    @property
    def shape(self) -> str:
        """Two templates with the same shape match the same paths (variable names aside)."""
        kinds = [s.literal if s.kind == "literal" else s.kind for s in self.segments]
        return "/".join(kinds) + (":" + self.verb if self.verb else "")

    def fits(self, part_count: int) -> bool:
        """Whether a path of ``part_count`` segments can match, by its length alone."""
        if self.has_multi:
            return part_count >= len(self.segments) - 1
        return part_count == len(self.segments)


def parse_template(template: str) -> Template:
    """Parse a ``google.api.http`` path template."""
    if not template.startswith("/"):
        raise RouteError(f"template must start with '/': {template!r}")
    body, verb = template, ""
    last_close = template.rfind("}")
    colon = template.rfind(":")
    if colon > template.rfind("/") and colon > last_close:
        body, verb = template[:colon], template[colon + 1 :]
        if not verb:
            raise RouteError(f"empty verb in {template!r}")
    segments: list[Segment] = []
    variables: list[str] = []
    i = 1
    text = body
    while i <= len(text):
        if i < len(text) and text[i] == "{":
            end = text.find("}", i)
            if end < 0:
                raise RouteError(f"unclosed variable in {template!r}")
            inner = text[i + 1 : end]
            name, _, pattern = inner.partition("=")
            if not name or not all(part.isidentifier() for part in name.split(".")):
                raise RouteError(f"bad variable {inner!r} in {template!r}")
            variables.append(name)
            parts = pattern.split("/") if pattern else ["*"]
            for index, part in enumerate(parts):
                if part == "*":
                    segments.append(Segment("single", variable=name, variable_start=index == 0))
                elif part == "**":
                    segments.append(Segment("multi", variable=name, variable_start=index == 0))
                elif part and "{" not in part:
                    segments.append(
                        Segment("literal", part, variable=name, variable_start=index == 0)
                    )
                else:
                    raise RouteError(f"bad variable pattern {pattern!r} in {template!r}")
            i = end + 1
        else:
            end = text.find("/", i)
            end = len(text) if end < 0 else end
            part = text[i:end]
            if part == "*":
                segments.append(Segment("single"))
            elif part == "**":
                segments.append(Segment("multi"))
            elif part and "{" not in part and "}" not in part:
                segments.append(Segment("literal", part))
            else:
                raise RouteError(f"bad segment {part!r} in {template!r}")
            i = end
        if i < len(text):
            if text[i] != "/":
                raise RouteError(f"unexpected {text[i]!r} in {template!r}")
            i += 1
        else:
            break
    if any(s.kind == "multi" for s in segments[:-1]):
        raise RouteError(f"'**' must be the last segment: {template!r}")
    return Template(tuple(segments), verb, tuple(variables))


def _field_path(descriptor: Descriptor, path: str) -> list[FieldDescriptor]:
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for name in path.split("."):
        if current is None:
            raise RouteError(f"{path!r} descends into a non-message field")
        found = current.fields_by_name.get(name)
        if found is None:
            raise RouteError(f"{descriptor.full_name} has no field {path!r}")
        fields.append(found)
        current = found.message_type if found.type == FieldDescriptor.TYPE_MESSAGE else None
    return fields


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str
    template: str
    parsed: Template = field(repr=False)
    method: MethodDescriptor = field(repr=False)
    body: str
    response_body: str
    access: AccessPolicy
    request_class: type[Message] = field(repr=False)
    response_class: type[Message] = field(repr=False)
    # Fields bound from headers: (field name, header name, required).
    header_fields: tuple[tuple[str, str, bool], ...] = ()
    form_encoded: bool = False
    # 0 for the annotation's own pattern, 1.. for its additional bindings.
    binding_index: int = 0

    @property
    def request_descriptor(self) -> Descriptor:
        return cast(Descriptor, self.request_class.DESCRIPTOR)

    @property
    def response_descriptor(self) -> Descriptor:
        return cast(Descriptor, self.response_class.DESCRIPTOR)

    @property
    def full_method(self) -> str:
        """``mercato.catalog.v1.CatalogService/GetProduct``."""
        return f"{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def grpc_path(self) -> str:
        return "/" + self.full_method

    @property
    def service_key(self) -> str:
        """``catalog`` for ``mercato.catalog.v1``: the upstream this route calls."""
        parts = self.method.containing_service.full_name.split(".")
        return parts[1] if len(parts) > 2 else parts[0]

    @property
    def is_read(self) -> bool:
        return self.method.GetOptions().idempotency_level in _READ_LEVELS

    @property
    def raw_body(self) -> bool:
        """Whether the body field is a ``google.api.HttpBody``: the body is passed as it came."""
        if not self.body or self.body == "*":
            return False
        body_field = self.request_descriptor.fields_by_name[self.body]
        return (
            body_field.message_type is not None
            and body_field.message_type.full_name == HTTP_BODY_TYPE
        )

    @property
    def rate_class(self) -> str:
        """``strict`` for public writes (register, login, token, revoke), else ``default``.

        A raw-body route (a provider's signed webhook) is ``default``: its signature, not a
        guessable secret, authenticates it, and throttling it would delay payments."""
        if self.access.audience is Audience.PUBLIC and self.http_method != "GET":
            return "default" if self.raw_body else "strict"
        return "default"

    @property
    def operation_id(self) -> str:
        """``CatalogService_GetProduct`` (``_1``, ``_2``... for additional bindings)."""
        base = f"{self.method.containing_service.name}_{self.method.name}"
        return base if self.binding_index == 0 else f"{base}_{self.binding_index}"

    @property
    def bound_fields(self) -> frozenset[str]:
        """Top-level request fields bound by the path, the body or a header."""
        names = {variable.split(".")[0] for variable in self.parsed.variables}
        if self.body and self.body != "*":
            names.add(self.body)
        names.update(name for name, _, _ in self.header_fields)
        return frozenset(names)


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    path_params: dict[str, str]


class Router:
    """Finds the route of a request: most specific matching template of the HTTP method."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self._verb_suffixes = tuple(
            sorted({":" + r.parsed.verb for r in self.routes if r.parsed.verb})
        )
        seen: dict[tuple[str, str], Route] = {}
        for route in self.routes:
            key = (route.http_method, _shape(route.parsed))
            if key in seen:
                raise RouteError(
                    f"{route.full_method} and {seen[key].full_method} bind the same route "
                    f"{route.http_method} {route.template}"
                )
            seen[key] = route
        # The routes a path can match by its length and its leading segments ("v1",
        # "products"), in table order: most paths are told apart there, so a lookup tries one
        # or two templates instead of all of them. Filled on use; at most _PREFIXES_KEPT keys
        # are kept, so odd paths cannot grow it without bound.
        self._by_prefix: dict[tuple[int, tuple[str, ...]], tuple[Route, ...]] = {}

    def _candidates(self, parts: list[str]) -> tuple[Route, ...]:
        # The last part may carry a custom verb (":reserve"), so it is never a key.
        leading = tuple(parts[: min(_PREFIX_SEGMENTS, len(parts) - 1)])
        key = (len(parts), leading)
        routes = self._by_prefix.get(key)
        if routes is None:
            decoded = [unquote(part) for part in leading]
            routes = tuple(
                r
                for r in self.routes
                if r.parsed.fits(len(parts)) and _leading_literals_agree(r.parsed, decoded)
            )
            if len(self._by_prefix) < _PREFIXES_KEPT:
                self._by_prefix[key] = routes
        return routes

    def match(self, http_method: str, raw_path: str) -> Match | None:
        """The route of ``http_method raw_path`` (raw: still percent-encoded), or None."""
        for route, params in self._path_routes(raw_path):
            if route.http_method == http_method:
                return Match(route, params)
        return None

    def allowed_methods(self, raw_path: str) -> list[str]:
        """The HTTP methods of the path's template (for 405 and its Allow header)."""
        return sorted({route.http_method for route, _ in self._path_routes(raw_path)})

    def _path_routes(self, raw_path: str) -> list[tuple[Route, dict[str, str]]]:
        """The routes of the most specific template matching the path (one per method)."""
        parts = _split(raw_path)
        if parts is None:
            return []
        best_score: tuple[int, ...] | None = None
        best: list[tuple[Route, dict[str, str]]] = []
        for route in self._candidates(parts):
            found = self._match(route, parts)
            if found is None:
                continue
            score, params = found
            if best_score is None or score > best_score:
                best_score, best = score, [(route, params)]
            elif score == best_score:
                best.append((route, params))
        return best

    def _match(
        self, route: Route, parts: list[str]
    ) -> tuple[tuple[int, ...], dict[str, str]] | None:
        if not route.parsed.verb and parts[-1].endswith(self._verb_suffixes):
            return None  # the suffix is another route's custom verb, never part of a value
        return _match(route.parsed, parts)


def _leading_literals_agree(template: Template, leading: list[str]) -> bool:
    """Whether the template's literal segments among the first ones equal the path's
    (decoded) ``leading`` segments; a variable or wildcard segment agrees with anything."""
    for segment, part in zip(template.segments, leading, strict=False):
        if segment.kind == "multi":
            return True
        if segment.kind == "literal" and segment.literal != part:
            return False
    return True


def _shape(template: Template) -> str:
    return template.shape


def _split(raw_path: str) -> list[str] | None:
    if not raw_path.startswith("/"):
        return None
    return raw_path[1:].split("/")


def _match(template: Template, parts: list[str]) -> tuple[tuple[int, ...], dict[str, str]] | None:
    if template.verb:
        last = parts[-1]
        suffix = ":" + template.verb
        if not last.endswith(suffix):
            return None
        parts = [*parts[:-1], last[: -len(suffix)]]
    segments = template.segments
    if not template.fits(len(parts)):
        return None
    score: list[int] = [1 if template.verb else 0]
    values: dict[str, list[str]] = {}
    for index, segment in enumerate(segments):
        if segment.kind == "multi":
            taken = parts[index:]
            score.append(0)
            if segment.variable is not None:
                values.setdefault(segment.variable, []).extend(unquote(p) for p in taken)
            break
        part = parts[index]
        if segment.kind == "literal":
            if unquote(part) != segment.literal:
                return None
            score.append(2)
        else:
            if not part:
                return None
            score.append(1)
        if segment.variable is not None:
            values.setdefault(segment.variable, []).append(unquote(part))
    return tuple(score), {name: "/".join(value) for name, value in values.items()}


# ----------------------------------------------------------------------------------------------
# Discovery


def load_contract_modules(root: ModuleType = mercato) -> list[ModuleType]:
    """Import every generated ``*_pb2`` module under the contracts package ``root`` (fills the
    descriptor pool)."""
    modules: list[ModuleType] = []
    for info in pkgutil.walk_packages(root.__path__, prefix=root.__name__ + "."):
        if info.name.endswith("_pb2"):
            modules.append(importlib.import_module(info.name))
    return modules


def discover_methods(modules: Iterable[ModuleType]) -> list[MethodDescriptor]:
    """Every RPC of the modules' services that carries a ``google.api.http`` annotation."""
    methods: list[MethodDescriptor] = []
    for module in modules:
        file_descriptor: Any = getattr(module, "DESCRIPTOR", None)
        if file_descriptor is None:
            continue
        for service in file_descriptor.services_by_name.values():
            for method in service.methods:
                if method.GetOptions().HasExtension(annotations_pb2.http):
                    methods.append(method)
    return sorted(methods, key=lambda m: (m.containing_service.full_name, m.index))


def _bindings(rule: http_pb2.HttpRule) -> Iterator[tuple[str, str, str, str]]:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise RouteError("an http rule without a pattern")
    if pattern == "custom":
        verb, template = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, template = pattern.upper(), getattr(rule, pattern)
    yield verb, template, rule.body, rule.response_body
    for extra in rule.additional_bindings:
        if extra.additional_bindings:
            raise RouteError("additional bindings must not nest")
        yield from _bindings(extra)


def is_required(descriptor: FieldDescriptor) -> bool:
    """Whether the contract marks the field ``REQUIRED`` (google.api.field_behavior)."""
    behaviors = descriptor.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.REQUIRED in behaviors


def routes_from_methods(
    methods: Iterable[MethodDescriptor], *, form_encoded: frozenset[str] = FORM_ENCODED_METHODS
) -> list[Route]:
    """The routes of ``methods``, checked: templates, path fields and bodies must exist."""
    routes: list[Route] = []
    for method in methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        full = f"{method.containing_service.full_name}/{method.name}"
        for index, (http_method, template, body, response_body) in enumerate(_bindings(rule)):
            parsed = parse_template(template)
            for variable in parsed.variables:
                path = _field_path(method.input_type, variable)
                leaf = path[-1]
                if leaf.is_repeated or leaf.type == FieldDescriptor.TYPE_MESSAGE:
                    raise RouteError(f"{full}: path variable {variable} must be a scalar")
            if body and body != "*":
                _field_path(method.input_type, body)
            if response_body:
                _field_path(method.output_type, response_body)
            if http_method == "GET" and body:
                raise RouteError(f"{full}: GET cannot have a body")
            headers = tuple(
                (name, header, is_required(method.input_type.fields_by_name[name]))
                for name, header in HEADER_FIELDS.items()
                if name in method.input_type.fields_by_name
            )
            routes.append(
                Route(
                    http_method=http_method,
                    template=template,
                    parsed=parsed,
                    method=method,
                    body=body,
                    response_body=response_body,
                    access=access_policy("/" + full),
                    request_class=request_class,
                    response_class=response_class,
                    header_fields=headers,
                    form_encoded=full in form_encoded,
                    binding_index=index,
                )
            )
    return routes
