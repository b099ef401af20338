"""The entity query language: validation, and a parsed form every backend compiles.

``mf.entity.find(entity, where=...)`` and ``mf.workflow.search(where=...)`` take
a ``where`` document in this language; :func:`parse_where` checks it and turns
it into a tree of :class:`Compare`, :class:`AllOf` and :class:`AnyOf` nodes that
a backend translates (PostgreSQL into SQL, the memory backend into a Python
predicate). The backends never see the user's dict, so they cannot disagree on
what it means; the conformance suite checks that their answers are identical.

Semantics (the same on every backend):

* A key is a dotted path (``"profile.tier"``); it follows JSON objects only. A
  path that does not reach a value is *missing*; ``null`` is a value.
* ``{"path": value}`` (or ``{"$eq": value}``) is JSON equality: ``True`` is not
  ``1``, ``1`` equals ``1.0``, objects and arrays compare whole. Missing equals
  nothing; ``None`` matches a stored ``null`` only.
* ``$ne``: the path holds a value that is not equal (missing does not match).
* ``$gt $gte $lt $lte``: the operand is a number or a string; only values of
  the same JSON type match (a string never compares with a number). Strings
  compare by code point (PostgreSQL: ``COLLATE "C"``), whatever the database's
  collation.
* ``$in`` / ``$nin``: a list; the value equals one of them / exists and equals
  none of them.
* ``$exists``: ``True`` when the path holds a value (``null`` included),
  ``False`` when it is missing.
* ``$contains``: JSON containment (PostgreSQL's ``@>``) of the operand in the
  value: an object contains the operand's keys with contained values, an array
  contains every operand element; a scalar operand means "an array holding it".
* ``$like``: SQL ``LIKE`` on string values (``%`` any run, ``_`` one character,
  ``\\`` escapes), case-sensitive, whole value.
* Several keys, or several operators on one key, are ANDed; ``$and`` and
  ``$or`` take a non-empty list of ``where`` documents.

Ordering (``order_by``): ``created_at``, ``updated_at``, ``id`` or a dotted path,
``-`` in front for descending; ties are broken by id. By a path, strings come
first (code point order), then numbers, then booleans (``false`` first); any
other value (missing, ``null``, objects, arrays) sorts last, in either
direction. Pages are read by keyset (``after=`` the previous page's cursor),
never by offset, so rows are neither skipped nor repeated while others commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from attrs import define, field

from .entity_ops import split_path
from .errors import HotMeshError
from .serde import ensure_json

__all__ = [
    "COMPARE_OPS",
    "JOB_FIELDS",
    "SEARCH_SET",
    "AllOf",
    "AnyOf",
    "Compare",
    "InvalidQuery",
    "JobQuery",
    "Node",
    "Order",
    "decode_cursor",
    "encode_cursor",
    "parse_order",
    "parse_where",
    "query_fingerprint",
]

#: Operators on one path, and what they take.
COMPARE_OPS = frozenset(
    {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$contains", "$like"}
)
RANGE_OPS = frozenset({"$gt", "$gte", "$lt", "$lte"})
#: Columns of a job that ``order_by`` may name instead of an entity path.
JOB_FIELDS = frozenset({"created_at", "updated_at", "id"})
MAX_LIMIT = 10_000
#: The entity-kind command that sets search fields (``workflow.search().set``;
#: the engine applies it with ``Store.set_search``).
SEARCH_SET = "search.set"


class InvalidQuery(HotMeshError, ValueError):
    """A ``where``, ``order_by``, ``limit`` or cursor that the query language
    refuses: an unknown operator, an operand of the wrong type, a cursor of
    another query. ``operator`` names the operator at fault, when there is one."""

    def __init__(self, message: str, *, operator: str | None = None) -> None:
        super().__init__(message)
        self.operator = operator


@define(frozen=True)
class Compare:
    """``path`` ``op`` ``value``; ``op`` is one of :data:`COMPARE_OPS`."""

    path: tuple[str, ...]
    op: str
    value: Any

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@define(frozen=True)
class AllOf:
    """Every item matches (an empty AllOf matches everything)."""

    items: tuple[Node, ...]


@define(frozen=True)
class AnyOf:
    """At least one item matches (never empty)."""

    items: tuple[Node, ...]


Node: TypeAlias = Compare | AllOf | AnyOf


@define(frozen=True)
class Order:
    """Sort by a job field (``created_at``/``updated_at``/``id``) or an entity path."""

    field: str  # a JOB_FIELDS name, or "path"
    path: tuple[str, ...] = ()
    descending: bool = False

    @property
    def text(self) -> str:
        name = ".".join(self.path) if self.field == "path" else self.field
        return f"-{name}" if self.descending else name


@define(frozen=True)
class JobQuery:
    """One query over jobs, as a backend receives it.

    ``target`` is the JSON column that ``where`` reads: ``"context"`` (the
    entity) or ``"search"`` (the search fields). ``after`` is the sort key of
    the last row of the previous page, as the backend gave it (opaque to the
    core). ``ids`` and ``updated_since`` restrict to those jobs, or to jobs
    updated since then (used by ``watch``).
    """

    where: Node = field(factory=lambda: AllOf(()))
    entity: str | None = None
    target: str = "context"
    order: Order = field(factory=lambda: Order("created_at"))
    limit: int = 100
    after: list[Any] | None = None
    status: str | None = None
    workflow_name: str | None = None
    ids: tuple[str, ...] | None = None
    updated_since: float | None = None  # jobs updated at or after (backend clock)


def _path(key: Any) -> tuple[str, ...]:
    """A dotted path's keys; a bad path is ``EntityPathError``, as everywhere else."""
    return tuple(split_path(key))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _operand(op: str, value: Any) -> Any:
    if op not in COMPARE_OPS:
        known = ", ".join(sorted(COMPARE_OPS | {"$and", "$or"}))
        raise InvalidQuery(f"unknown query operator {op!r} (known: {known})", operator=op)
    if op in RANGE_OPS:
        if not (_is_number(value) or isinstance(value, str)):
            raise InvalidQuery(
                f"{op} takes a number or a string, not {type(value).__name__}", operator=op
            )
    elif op in ("$in", "$nin"):
        if not isinstance(value, (list, tuple)):
            raise InvalidQuery(f"{op} takes a list, not {type(value).__name__}", operator=op)
    elif op == "$exists":
        if not isinstance(value, bool):
            raise InvalidQuery(f"$exists takes True or False, not {value!r}", operator=op)
    elif op == "$like":
        if not isinstance(value, str):
            raise InvalidQuery(f"$like takes a string, not {type(value).__name__}", operator=op)
        if "\x00" in value:
            raise InvalidQuery("$like: a pattern cannot hold NUL", operator=op)
        escaped = False
        for char in value:
            escaped = not escaped and char == "\\"
        if escaped:
            raise InvalidQuery("$like: a pattern cannot end with the escape '\\'", operator=op)
    elif op == "$contains" and not isinstance(value, (Mapping, list, tuple)):
        value = [value]  # a scalar: "an array holding it"
    return value


def _field(key: str, condition: Any) -> Node:
    path = _path(key)
    if isinstance(condition, Mapping) and any(
        isinstance(k, str) and k.startswith("$") for k in condition
    ):
        if not all(isinstance(k, str) and k.startswith("$") for k in condition):
            raise InvalidQuery(
                f"{key!r}: a condition mixes operators and plain keys: {sorted(condition)}"
            )
        if not condition:
            raise InvalidQuery(f"{key!r}: an empty condition")
        nodes = tuple(Compare(path, op, _operand(op, value)) for op, value in condition.items())
        return nodes[0] if len(nodes) == 1 else AllOf(nodes)
    return Compare(path, "$eq", _operand("$eq", condition))


def parse_where(where: Mapping[str, Any] | None) -> Node:
    """Check ``where`` and return its parsed form; :class:`InvalidQuery` if it is
    bad, ``SerializationError`` if it holds what JSON cannot (NaN, lone
    surrogates, nesting past ``serde.MAX_DEPTH``), as every stored value."""
    if where is None:
        return AllOf(())
    return _parse(ensure_json(where, what="where"))


def _parse(where: Any) -> Node:
    if not isinstance(where, Mapping):
        raise InvalidQuery(f"where must be a dict, not {type(where).__name__}")
    nodes: list[Node] = []
    for key, condition in where.items():
        if key in ("$or", "$and"):
            if not isinstance(condition, (list, tuple)) or not condition:
                raise InvalidQuery(f"{key} takes a non-empty list of conditions", operator=key)
            items = tuple(_parse(item) for item in condition)
            nodes.append(AnyOf(items) if key == "$or" else AllOf(items))
        elif isinstance(key, str) and key.startswith("$"):
            raise InvalidQuery(
                f"unknown query operator {key!r} at the top level (use $and or $or)",
                operator=key,
            )
        else:
            nodes.append(_field(key, condition))
    return nodes[0] if len(nodes) == 1 else AllOf(tuple(nodes))


def parse_order(order_by: str | None) -> Order:
    if order_by is None:
        return Order("created_at")
    if not isinstance(order_by, str):
        raise InvalidQuery(f"order_by must be a string, not {type(order_by).__name__}")
    descending = order_by.startswith("-")
    name = order_by[1:] if descending else order_by
    if name in JOB_FIELDS:
        return Order(name, (), descending)
    return Order("path", _path(name), descending)


def check_limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    return limit


def query_fingerprint(query: JobQuery) -> str:
    """What a cursor is bound to: the same filter and order (not the page size)."""
    shape = repr((query.entity, query.target, query.where, query.order, query.status))
    return hashlib.sha256(shape.encode()).hexdigest()[:16]


def encode_cursor(query: JobQuery, key: Sequence[Any]) -> str:
    """An opaque cursor: the last row's sort key, bound to its query."""
    raw = json.dumps({"q": query_fingerprint(query), "k": list(key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(query: JobQuery, cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        key = data["k"]
        fingerprint = data["q"]
    except Exception:
        raise InvalidQuery(f"not a cursor of this query: {cursor!r}") from None
    if fingerprint != query_fingerprint(query) or not isinstance(key, list):
        raise InvalidQuery("the cursor belongs to another query (filter or order_by differ)")
    return key


#: What ``mf.entity.create_index`` makes: a btree on the JSON value at a path
#: (equality, ``$in``, ``$ne``, number ranges, ``$exists``), a btree on its text
#: in code point order (string ranges, ``$like`` prefixes), or a GIN index on
#: the whole entity (``$contains``).
INDEX_KINDS = ("btree", "text", "gin")


def index_name(entity: str, path: tuple[str, ...] | None, kind: str, where: Node) -> str:
    """Check an index request; its name, derived from what it indexes (so that
    asking twice makes one index)."""
    if kind not in INDEX_KINDS:
        raise InvalidQuery(f"index kind must be one of {INDEX_KINDS}, not {kind!r}")
    if kind == "gin" and path is not None:
        raise InvalidQuery("a gin index covers the whole entity (context): give no path")
    if kind == "text" and path is None:
        raise InvalidQuery("a text index needs a path")
    shape = repr((entity, path, kind, where))
    return "hm_ix_" + hashlib.sha256(shape.encode()).hexdigest()[:20]
