"""The GraphQL schema, derived at start from the same descriptors as the REST routes.

Every route of an RPC (its first binding) becomes one root field named after the RPC in lower
camel case (``GetProduct`` -> ``getProduct``): a query when the route is a GET, a mutation
otherwise. Its arguments are the request message's fields and its type is the response message,
both with their proto3 JSON names, so a new RPC appears in REST and GraphQL alike and nothing
here names one. Left out: the form-encoded OAuth endpoints and ``/.well-known/`` documents,
protocol endpoints rather than API.

Types follow the proto3 JSON mapping: 64-bit integers are the ``Int64`` scalar (a decimal
string), ``google.protobuf.Timestamp`` is ``DateTime`` (RFC 3339), ``Duration`` is
``Duration`` (``"1.5s"``), ``FieldMask`` is ``FieldMask`` (``"title,price"``), maps, ``Struct``,
``Value`` and ``Any`` are ``JSON``, wrappers their scalar, and ``google.protobuf.Empty`` as a
result is ``Boolean`` (true). Enums keep their value names. A field the contract marks
``REQUIRED`` is non-null as an argument or input field; ``OUTPUT_ONLY`` fields are left out of
inputs and ``INPUT_ONLY`` ones out of results; output fields are nullable, as in any proto3
message. A message is an object type named after it (nested messages joined:
``Order.Line`` -> ``OrderLine``; on a clash of names across packages the package's service name
comes first) and, used as input, the same name with ``Input``.

A field carrying ``(mercato.api.v1.reference)`` (say ``OrderLine.sku``) gets a sibling of the
referred resource's type (``product: Product``), resolved by the batch RPC the reference names;
the endpoint batches those per request (one call for every key an operation reaches). An RPC
carrying ``(mercato.api.v1.live)`` (``GetOrder``) also gets a subscription root field
(``orderUpdated``) with its arguments and result.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any, Protocol, TypeVar, cast

from google.api import field_behavior_pb2  # type: ignore[import-untyped]
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from graphql import (
    GraphQLArgument,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLEnumValue,
    GraphQLField,
    GraphQLFloat,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLNullableInputType,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
)
from graphql.language import (
    BooleanValueNode,
    FloatValueNode,
    IntValueNode,
    ListValueNode,
    NullValueNode,
    ObjectValueNode,
    StringValueNode,
    ValueNode,
)

from mercato.api.v1 import live_pb2, reference_pb2
from mercato_gateway.routing import Route, is_required

__all__ = ["Resolvers", "build_schema", "graph_routes", "live_option", "root_field_name"]

_T = TypeVar("_T")


class Resolvers(Protocol):
    """What the schema's fields call; each raises what the endpoint maps to GraphQL errors."""

    async def resolve(self, route: Route, arguments: dict[str, Any], info: Any) -> dict[str, Any]:
        """A root field: the RPC of ``route`` with ``arguments`` (a proto3 JSON document); its
        response as a proto3 JSON document."""

    async def relate(
        self, route: Route, reference: reference_pb2.Reference, key: str, info: Any
    ) -> dict[str, Any] | None:
        """A reference: the resource of ``key`` from the batch RPC of ``route``, None when the
        answer has none."""

    async def watch(
        self, route: Route, live: live_pb2.Live, arguments: dict[str, Any], info: Any
    ) -> AsyncIterable[dict[str, Any]]:
        """A subscription: the RPC's response now, then at each change."""


def _int64_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError("Int64 takes an integer or its decimal string")
    text = str(value)
    if not re.fullmatch(r"-?\d{1,20}", text):
        raise TypeError(f"not an integer: {text!r}")
    return text


def _string_literal(node: ValueNode, _variables: Any = None) -> str:
    if isinstance(node, (StringValueNode, IntValueNode)):
        return node.value
    raise TypeError("a string")


def _json_literal(node: ValueNode, variables: Any = None) -> Any:
    if isinstance(node, NullValueNode):
        return None
    if isinstance(node, (StringValueNode, BooleanValueNode)):
        return node.value
    if isinstance(node, IntValueNode):
        return int(node.value)
    if isinstance(node, FloatValueNode):
        return float(node.value)
    if isinstance(node, ListValueNode):
        return [_json_literal(item, variables) for item in node.values]
    if isinstance(node, ObjectValueNode):
        return {field.name.value: _json_literal(field.value, variables) for field in node.fields}
    raise TypeError("a JSON value")


def _string_scalar(name: str, description: str) -> GraphQLScalarType:
    """A scalar carried as a string, checked by the service (json_format) like REST's."""

    def text(value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{name} is a string")
        return value

    return GraphQLScalarType(
        name,
        serialize=str,
        parse_value=text,
        parse_literal=_string_literal,
        description=description,
    )


def _int64_literal(node: ValueNode, _variables: Any = None) -> str:
    return _int64_value(_string_literal(node))


INT64 = GraphQLScalarType(
    "Int64",
    serialize=_int64_value,
    parse_value=_int64_value,
    parse_literal=_int64_literal,
    description="A 64-bit integer as its decimal string (the proto3 JSON form).",
)
DATETIME = _string_scalar("DateTime", "An instant, RFC 3339 (google.protobuf.Timestamp).")
DURATION = _string_scalar("Duration", 'A duration in seconds with an "s" suffix, e.g. "1.5s".')
FIELD_MASK = _string_scalar(
    "FieldMask", 'Comma-separated field paths in JSON names, e.g. "title,price".'
)
JSON = GraphQLScalarType(
    "JSON",
    serialize=lambda value: value,
    parse_value=lambda value: value,
    parse_literal=_json_literal,
    description="Any JSON value (maps, google.protobuf.Struct, Value, Any).",
)

_SCALARS: dict[int, GraphQLScalarType] = {
    FieldDescriptor.TYPE_DOUBLE: GraphQLFloat,
    FieldDescriptor.TYPE_FLOAT: GraphQLFloat,
    FieldDescriptor.TYPE_INT32: GraphQLInt,
    FieldDescriptor.TYPE_SINT32: GraphQLInt,
    FieldDescriptor.TYPE_SFIXED32: GraphQLInt,
    FieldDescriptor.TYPE_UINT32: INT64,  # above Int's 2^31 - 1
    FieldDescriptor.TYPE_FIXED32: INT64,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT64: INT64,
    FieldDescriptor.TYPE_FIXED64: INT64,
    FieldDescriptor.TYPE_BOOL: GraphQLBoolean,
    FieldDescriptor.TYPE_STRING: GraphQLString,
    FieldDescriptor.TYPE_BYTES: GraphQLString,  # base64, as proto3 JSON
}
_WELL_KNOWN: dict[str, GraphQLScalarType] = {
    "google.protobuf.Timestamp": DATETIME,
    "google.protobuf.Duration": DURATION,
    "google.protobuf.FieldMask": FIELD_MASK,
    "google.protobuf.Struct": JSON,
    "google.protobuf.Value": JSON,
    "google.protobuf.ListValue": JSON,
    "google.protobuf.Any": JSON,
    "google.protobuf.DoubleValue": GraphQLFloat,
    "google.protobuf.FloatValue": GraphQLFloat,
    "google.protobuf.Int32Value": GraphQLInt,
    "google.protobuf.UInt32Value": INT64,
    "google.protobuf.Int64Value": INT64,
    "google.protobuf.UInt64Value": INT64,
    "google.protobuf.BoolValue": GraphQLBoolean,
    "google.protobuf.StringValue": GraphQLString,
    "google.protobuf.BytesValue": GraphQLString,
}
EMPTY = "google.protobuf.Empty"

#: Routes GraphQL leaves to REST (protocol endpoints, not API).
_PROTOCOL_PREFIXES = ("/.well-known/",)


def graph_routes(routes: Iterable[Route]) -> list[Route]:
    """The routes that get a root field: the first binding of each RPC, OAuth, raw-body
    (provider webhooks) and ``/.well-known/`` endpoints left out."""
    return [
        route
        for route in routes
        if route.binding_index == 0
        and not route.form_encoded
        and not route.raw_body
        and not route.template.startswith(_PROTOCOL_PREFIXES)
    ]


def root_field_name(route: Route) -> str:
    name = route.method.name
    return name[:1].lower() + name[1:]


class _Types:
    """The object, input and enum types of the messages the roots reach, built once each."""

    def __init__(
        self, messages: Iterable[Descriptor], targets: dict[str, Route], resolvers: Resolvers
    ) -> None:
        self._names = _type_names(messages)
        self._targets = targets  # the routes references may name, by full method name
        self._resolvers = resolvers
        self._objects: dict[str, GraphQLObjectType] = {}
        self._inputs: dict[str, GraphQLInputObjectType] = {}
        self._enums: dict[str, GraphQLEnumType] = {}

    def name(self, descriptor: Descriptor | EnumDescriptor) -> str:
        return self._names[descriptor.full_name]

    def enum(self, descriptor: EnumDescriptor) -> GraphQLEnumType:
        return _once(
            self._enums,
            descriptor.full_name,
            lambda: GraphQLEnumType(
                self.name(descriptor),
                {value.name: GraphQLEnumValue(value.name) for value in descriptor.values},
            ),
        )

    def output(self, descriptor: Descriptor) -> GraphQLObjectType:
        fields = _fields(descriptor, field_behavior_pb2.INPUT_ONLY, self.field_output)
        return _once(
            self._objects,
            descriptor.full_name,
            lambda: GraphQLObjectType(
                self.name(descriptor),
                lambda: {
                    **{name: GraphQLField(kind) for name, kind in fields().items()},
                    **self._references(descriptor),
                },
            ),
        )

    def _references(self, descriptor: Descriptor) -> dict[str, GraphQLField]:
        """The fields the message's references add, checked against the RPC they name (a wrong
        reference is a contract error: the schema, hence the gateway, does not build)."""
        added: dict[str, GraphQLField] = {}
        for field in descriptor.fields:
            options = field.GetOptions()
            if not options.HasExtension(reference_pb2.reference):
                continue
            reference = options.Extensions[reference_pb2.reference]
            route = self._targets.get(reference.method)
            if route is None:
                raise ValueError(f"{field.full_name}: {reference.method} has no REST binding")
            keys = route.request_descriptor.fields_by_name.get(reference.keys)
            results = route.response_descriptor.fields_by_name.get(reference.results)
            if (
                field.type != FieldDescriptor.TYPE_STRING
                or field.is_repeated
                or keys is None
                or keys.type != FieldDescriptor.TYPE_STRING
                or not keys.is_repeated
                or results is None
                or results.message_type is None
                or not results.is_repeated
                or reference.key not in results.message_type.fields_by_name
                or reference.field in descriptor.fields_by_camelcase_name
            ):
                raise ValueError(f"{field.full_name}: a reference that does not fit its RPC")
            added[reference.field] = GraphQLField(
                self.output(results.message_type),
                resolve=_reference_resolver(route, reference, field.json_name, self._resolvers),
                description=f"The resource of `{field.json_name}` ({reference.method}).",
            )
        return added

    def input(self, descriptor: Descriptor) -> GraphQLInputObjectType:
        fields = _fields(descriptor, field_behavior_pb2.OUTPUT_ONLY, self.field_input)
        return _once(
            self._inputs,
            descriptor.full_name,
            lambda: GraphQLInputObjectType(
                self.name(descriptor) + "Input",
                lambda: {name: GraphQLInputField(kind) for name, kind in fields().items()},
            ),
        )

    def field_output(self, field: FieldDescriptor) -> GraphQLOutputType:
        base: GraphQLOutputType = self._base(field, self.output)
        return GraphQLList(GraphQLNonNull(base)) if _is_list(field) else base

    def field_input(self, field: FieldDescriptor) -> GraphQLInputType:
        base: GraphQLNullableInputType = self._base(field, self.input)
        if _is_list(field):
            base = GraphQLList(GraphQLNonNull(base))
        return GraphQLNonNull(base) if is_required(field) else base

    def _base(self, field: FieldDescriptor, message_type: Callable[[Descriptor], Any]) -> Any:
        """The type of one value of ``field``; ``message_type`` makes a message's own type
        (output or input)."""
        if _is_map(field):
            return JSON
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            message = cast(Descriptor, field.message_type)
            return _WELL_KNOWN.get(message.full_name) or message_type(message)
        if field.type == FieldDescriptor.TYPE_ENUM:
            return self.enum(cast(EnumDescriptor, field.enum_type))
        return _SCALARS[field.type]


def _once(built: dict[str, _T], key: str, make: Callable[[], _T]) -> _T:
    """``built[key]``, made by ``make`` the first time (a type exists once per schema)."""
    if key not in built:
        built[key] = make()
    return built[key]


def _fields(
    descriptor: Descriptor, leave_out: int, make: Callable[[FieldDescriptor], Any]
) -> Callable[[], dict[str, Any]]:
    """The message's fields by JSON name, each made by ``make``, those with the field behaviour
    ``leave_out`` left out; called late, so that messages may refer to each other."""
    return lambda: {
        field.json_name: make(field)
        for field in descriptor.fields
        if leave_out not in _behaviors(field)
    }


def _is_list(field: FieldDescriptor) -> bool:
    return field.is_repeated and not _is_map(field)


def _behaviors(field: FieldDescriptor) -> list[int]:
    return list(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return bool(field.is_repeated and message is not None and message.GetOptions().map_entry)


def _type_names(messages: Iterable[Descriptor]) -> dict[str, str]:
    """GraphQL names of every message and enum reachable from ``messages``: nested names
    joined, prefixed with the package's service name where two packages share a name."""
    found: dict[str, Descriptor | EnumDescriptor] = {}

    def visit(descriptor: Descriptor) -> None:
        if descriptor.full_name in found or descriptor.full_name in _WELL_KNOWN:
            return
        found[descriptor.full_name] = descriptor
        for field in descriptor.fields:
            if field.enum_type is not None:
                found.setdefault(field.enum_type.full_name, field.enum_type)
            if field.message_type is not None and not _is_map(field):
                visit(field.message_type)
            elif field.message_type is not None:  # a map entry: its value may be a message
                value = field.message_type.fields_by_name["value"]
                if value.message_type is not None:
                    visit(value.message_type)
                if value.enum_type is not None:
                    found.setdefault(value.enum_type.full_name, value.enum_type)

    for message in messages:
        visit(message)
    short = {full: _short_name(descriptor) for full, descriptor in found.items()}
    counts: dict[str, int] = {}
    for name in short.values():
        counts[name] = counts.get(name, 0) + 1
    names = {}
    for full, name in short.items():
        if counts[name] > 1:
            package = found[full].file.package.split(".")
            name = (package[1] if len(package) > 1 else package[0]).capitalize() + name
        names[full] = name
    return names


def _short_name(descriptor: Descriptor | EnumDescriptor) -> str:
    package = descriptor.file.package
    return descriptor.full_name.removeprefix(package + ".").replace(".", "")


def live_option(route: Route) -> live_pb2.Live | None:
    """The route's ``(mercato.api.v1.live)`` option, None when its RPC has none."""
    options = route.method.GetOptions()
    return options.Extensions[live_pb2.live] if options.HasExtension(live_pb2.live) else None


def build_schema(routes: Iterable[Route], resolvers: Resolvers) -> GraphQLSchema:
    """The schema of ``routes`` (see :func:`graph_routes`), its fields calling ``resolvers``."""
    chosen = graph_routes(routes)
    types = _Types(
        [route.request_descriptor for route in chosen]
        + [
            route.response_descriptor
            for route in chosen
            if route.response_descriptor.full_name != EMPTY
        ],
        {route.method.full_name: route for route in chosen},
        resolvers,
    )
    queries: dict[str, GraphQLField] = {}
    mutations: dict[str, GraphQLField] = {}
    subscriptions: dict[str, GraphQLField] = {}
    for route in sorted(chosen, key=root_field_name):
        request, response = route.request_descriptor, route.response_descriptor
        result: GraphQLScalarType | GraphQLObjectType = (
            GraphQLBoolean if response.full_name == EMPTY else types.output(response)
        )
        arguments = {
            item.json_name: GraphQLArgument(types.field_input(item))
            for item in request.fields
            if field_behavior_pb2.OUTPUT_ONLY not in _behaviors(item)
        }
        # Nullable: a root field that fails is null with its error, the others keep their data.
        field = GraphQLField(
            result,
            args=arguments,
            resolve=_resolver(route, resolvers, empty=response.full_name == EMPTY),
            description=f"{route.http_method} {route.template} ({route.full_method})",
        )
        (queries if route.http_method == "GET" else mutations)[root_field_name(route)] = field
        live = live_option(route)
        if live is not None:
            key = request.fields_by_name.get(live.key)
            if key is None or key.type != FieldDescriptor.TYPE_STRING or key.is_repeated:
                raise ValueError(f"{route.method.full_name}: live key {live.key!r} is no id")
            subscriptions[live.field] = GraphQLField(
                result,
                args=arguments,
                subscribe=_watcher(route, live, resolvers),
                resolve=lambda document, _info, **_arguments: document,
                description=(
                    f"{route.full_method} now, then again at each event of its "
                    f"`{key.json_name}` on {live.topic}."
                ),
            )
    return GraphQLSchema(
        query=GraphQLObjectType("Query", queries),
        mutation=GraphQLObjectType("Mutation", mutations) if mutations else None,
        subscription=GraphQLObjectType("Subscription", subscriptions) if subscriptions else None,
        types=[INT64, DATETIME, DURATION, FIELD_MASK, JSON],
    )


def _resolver(route: Route, resolvers: Resolvers, *, empty: bool) -> Callable[..., Any]:
    async def field(_root: Any, info: Any, **arguments: Any) -> Any:
        result = await resolvers.resolve(route, arguments, info)
        return True if empty else result

    return field


def _watcher(route: Route, live: live_pb2.Live, resolvers: Resolvers) -> Callable[..., Any]:
    async def stream(_root: Any, info: Any, **arguments: Any) -> Any:
        return await resolvers.watch(route, live, arguments, info)

    return stream


def _reference_resolver(
    route: Route, reference: reference_pb2.Reference, key_name: str, resolvers: Resolvers
) -> Callable[..., Any]:
    async def field(source: Any, info: Any) -> Any:
        key = source.get(key_name) if isinstance(source, dict) else None
        return await resolvers.relate(route, reference, key, info) if key else None

    return field
