"""The entity query language evaluated in Python, over the in-memory tables.

It implements the semantics documented in :mod:`hotmesh_core.entity_query`;
the conformance suite holds it and the PostgreSQL compiler to the same answers.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from hotmesh_core.entity_query import AllOf, AnyOf, Compare, JobQuery, Node, Order
from hotmesh_core.models import Job

__all__ = ["job_matches", "json_contains", "json_equal", "matches", "sort_key"]

_MISSING: Any = object()


def _value(doc: Any, path: tuple[str, ...]) -> Any:
    node = doc
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def json_equal(left: Any, right: Any) -> bool:
    """Equality as JSON sees it: ``True`` is not ``1``; ``1`` is ``1.0``."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    return type(left) is type(right) and bool(left == right)


def json_contains(value: Any, operand: Any) -> bool:
    """PostgreSQL's ``jsonb @> jsonb`` below the top level."""
    if isinstance(operand, dict):
        return isinstance(value, dict) and all(
            key in value and json_contains(value[key], item) for key, item in operand.items()
        )
    if isinstance(operand, list):
        return isinstance(value, list) and all(
            any(json_contains(element, item) for element in value) for item in operand
        )
    return not isinstance(value, (dict, list)) and json_equal(value, operand)


@lru_cache(maxsize=256)
def _like(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            out.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _compare(value: Any, op: str, operand: Any) -> bool:
    if op == "$exists":
        return (value is not _MISSING) is operand
    if value is _MISSING:
        return False
    if op == "$eq":
        return json_equal(value, operand)
    if op == "$ne":
        return not json_equal(value, operand)
    if op == "$in":
        return any(json_equal(value, item) for item in operand)
    if op == "$nin":
        return not any(json_equal(value, item) for item in operand)
    if op == "$contains":
        return json_contains(value, operand)
    if op == "$like":
        return isinstance(value, str) and _like(operand).fullmatch(value) is not None
    # Ranges: same JSON type only; strings by code point.
    if _is_number(operand):
        if not _is_number(value):
            return False
    elif not isinstance(value, str):
        return False
    if op == "$gt":
        return bool(value > operand)
    if op == "$gte":
        return bool(value >= operand)
    if op == "$lt":
        return bool(value < operand)
    return bool(value <= operand)


def matches(node: Node, doc: Any) -> bool:
    if isinstance(node, Compare):
        return _compare(_value(doc, node.path), node.op, node.value)
    if isinstance(node, AllOf):
        return all(matches(item, doc) for item in node.items)
    assert isinstance(node, AnyOf)
    return any(matches(item, doc) for item in node.items)


def job_matches(job: Job, query: JobQuery) -> bool:
    if query.entity is not None and job.entity != query.entity:
        return False
    if query.status is not None and job.status != query.status:
        return False
    if query.workflow_name is not None and job.workflow_name != query.workflow_name:
        return False
    if query.ids is not None and job.id not in query.ids:
        return False
    if query.updated_since is not None and job.updated_at < query.updated_since:
        return False
    return matches(query.where, job.search if query.target == "search" else job.context)


def sort_key(job: Job, order: Order) -> list[Any]:
    """The row's keyset key, ascending-comparable: ``[rank, number, text, id]`` for
    a path (rank: 1 string, 2 number, 3 boolean, other last), ``[value, id]`` else.
    This is also what the cursor carries."""
    if order.field != "path":
        return [getattr(job, order.field), job.id]
    value = _value(job.context, order.path)
    if isinstance(value, str):
        return [1, 0, value, job.id]
    if _is_number(value):
        return [2, value, "", job.id]
    if isinstance(value, bool):
        return [3, int(value), "", job.id]
    return [0 if order.descending else 4, 0, "", job.id]


def after(key: list[Any], last: list[Any], descending: bool) -> bool:
    """Whether a row with ``key`` comes after the cursor's ``last`` row."""
    return key < last if descending else key > last
