"""What one GraphQL request may ask for, measured on the parsed document before anything runs.

A hostile document (deep nesting, a thousand aliases, a cost bomb, a hundred operations in a
batch, introspection where it is off) is refused with a 400 naming the limit, its value and the
document's figure, at the cost of parsing it (itself bounded by the body size and a token count):
no service is called.

Depth counts nested selections, except the ``ofType`` chains of introspection (see ``field``).
The cost of a selection is 1 per field plus, for a field of list type, the size of the list times
the cost of what is selected in each item. A list directly under a root field that takes a page
size (``pageSize`` or ``limit``) has that size (the variable's or literal's value, else
:data:`DEFAULT_PAGE`, the services' largest page); any other list counts :data:`LIST_ITEMS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)

from mercato_gateway.errors import ApiError

__all__ = ["DEFAULT_PAGE", "LIST_ITEMS", "GraphLimits", "Measure", "measure", "refusal"]

#: Items of a list under a root field with a page-size argument left out: the largest page.
DEFAULT_PAGE = 100
#: Items assumed for every other list (an order's lines, a product's attributes' keys...).
LIST_ITEMS = 10
_PAGE_ARGUMENTS = ("pageSize", "limit")
_INTROSPECTION = frozenset({"__schema", "__type"})


@dataclass(frozen=True, slots=True)
class Measure:
    #: The names of the operation's root fields (fragments expanded).
    roots: tuple[str, ...]
    depth: int
    aliases: int
    root_fields: int
    cost: int
    introspection: bool


@dataclass(frozen=True, slots=True)
class GraphLimits:
    max_depth: int = 10
    max_aliases: int = 30
    max_root_fields: int = 10
    max_cost: int = 5000
    max_batch: int = 10
    max_tokens: int = 5000
    introspection: bool = True

    def check(self, figures: Measure) -> None:
        """Raise the 400 of the first limit ``figures`` exceed."""
        if figures.introspection and not self.introspection:
            raise ApiError.bad_request(
                "introspection is disabled", reason="GRAPHQL_INTROSPECTION_DISABLED"
            )
        for reason, what, actual, limit in (
            ("GRAPHQL_DEPTH_LIMIT", "depth", figures.depth, self.max_depth),
            ("GRAPHQL_ALIAS_LIMIT", "aliases", figures.aliases, self.max_aliases),
            ("GRAPHQL_ROOT_FIELD_LIMIT", "root fields", figures.root_fields, self.max_root_fields),
            ("GRAPHQL_COST_LIMIT", "cost", figures.cost, self.max_cost),
        ):
            if actual > limit:
                raise refusal(reason, what, actual, limit)

    def check_batch(self, size: int) -> None:
        if size > self.max_batch:
            raise refusal("GRAPHQL_BATCH_LIMIT", "operations in a batch", size, self.max_batch)


def refusal(reason: str, what: str, actual: int, limit: int) -> ApiError:
    error = ApiError.bad_request(f"the request has {what} {actual}, above {limit}", reason=reason)
    error.metadata = {"limit": str(limit), "actual": str(actual)}
    return error


def measure(
    schema: GraphQLSchema,
    operation: OperationDefinitionNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any] | None,
) -> Measure:
    """The figures of ``operation`` (a document the schema's validation accepted, so its
    fragments have no cycles and its fields exist)."""
    walk = _Walk(schema, fragments, variables or {})
    root = schema.get_root_type(operation.operation)
    assert root is not None  # validation accepted the operation
    roots = walk.fields(operation.selection_set, root)
    cost, depth = 0, 0
    for node, field in roots:
        page = _page_size(node, walk.variables) if _takes_page(field) else None
        field_cost, field_depth = walk.field(node, field, page=page, level=1)
        cost += field_cost
        depth = max(depth, field_depth)
    names = tuple(node.name.value for node, _ in roots)
    return Measure(names, depth, walk.aliases, len(roots), cost, walk.introspection)


class _Walk:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.aliases = 0
        self.introspection = False

    def fields(
        self, selections: SelectionSetNode, parent: GraphQLObjectType
    ) -> list[tuple[FieldNode, GraphQLField | None]]:
        """The field nodes of a selection set, fragments expanded, with their definitions
        (None for meta fields)."""
        found: list[tuple[FieldNode, GraphQLField | None]] = []
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                if selection.alias is not None:
                    self.aliases += 1
                name = selection.name.value
                if name in _INTROSPECTION:
                    self.introspection = True
                found.append((selection, parent.fields.get(name)))
            elif isinstance(selection, InlineFragmentNode):
                found += self.fields(selection.selection_set, self._condition(selection, parent))
            elif isinstance(selection, FragmentSpreadNode):
                fragment = self.fragments[selection.name.value]
                found += self.fields(fragment.selection_set, self._condition(fragment, parent))
        return found

    def _condition(
        self, fragment: InlineFragmentNode | FragmentDefinitionNode, parent: GraphQLObjectType
    ) -> GraphQLObjectType:
        if fragment.type_condition is None:
            return parent
        named = self.schema.get_type(fragment.type_condition.name.value)
        return named if isinstance(named, GraphQLObjectType) else parent

    def field(
        self, node: FieldNode, field: GraphQLField | None, *, page: int | None, level: int
    ) -> tuple[int, int]:
        """(cost, depth) of one field and what it selects."""
        if node.selection_set is None:
            return 1, level
        inner: list[tuple[FieldNode, GraphQLField | None]]
        if field is None:  # a meta field with a selection (__schema, __type): no type info
            inner = [(child, None) for child in self._meta_fields(node.selection_set)]
        else:
            inner_type = _unwrap(field.type)
            parent = inner_type if isinstance(inner_type, GraphQLObjectType) else None
            inner = self.fields(node.selection_set, parent) if parent is not None else []
        cost, depth = 0, level
        for child_node, child in inner:
            items = 1
            if child is not None and _is_list(child.type):
                items = page if page is not None else LIST_ITEMS
            # ``ofType`` chains (``[Order!]!`` is three levels of them) do not count: they are
            # as long as a type's wrappers, and every introspecting client (GraphiQL, gql,
            # schemathesis) asks for seven of them, which would otherwise make its standard
            # query 15 deep. The recursion that does cost (types -> fields -> type -> fields)
            # counts.
            flat = child is None and child_node.name.value == "ofType"
            child_cost, child_depth = self.field(
                child_node, child, page=None, level=level if flat else level + 1
            )
            cost += items * child_cost
            depth = max(depth, child_depth)
        return 1 + cost, depth

    def _meta_fields(self, selections: SelectionSetNode) -> list[FieldNode]:
        found: list[FieldNode] = []
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                if selection.alias is not None:
                    self.aliases += 1
                found.append(selection)
            elif isinstance(selection, InlineFragmentNode):
                found += self._meta_fields(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                found += self._meta_fields(self.fragments[selection.name.value].selection_set)
        return found


def _unwrap(kind: Any) -> Any:
    while isinstance(kind, (GraphQLNonNull, GraphQLList)):
        kind = kind.of_type
    return kind


def _is_list(kind: Any) -> bool:
    if isinstance(kind, GraphQLNonNull):
        kind = kind.of_type
    return isinstance(kind, GraphQLList)


def _takes_page(field: GraphQLField | None) -> bool:
    return field is not None and any(name in field.args for name in _PAGE_ARGUMENTS)


def _page_size(node: FieldNode, variables: Mapping[str, Any]) -> int:
    for argument in node.arguments or ():
        if argument.name.value not in _PAGE_ARGUMENTS:
            continue
        value: Any = None
        if isinstance(argument.value, IntValueNode):
            value = int(argument.value.value)
        elif isinstance(argument.value, VariableNode):
            value = variables.get(argument.value.name.value)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_PAGE
