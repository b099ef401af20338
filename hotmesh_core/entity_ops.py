"""The meaning of each entity operation, as a pure function.

This is the reference every backend must match (the conformance suite checks
it): the memory backend applies it directly, the PostgreSQL backend mirrors it
in SQL so that changes happen in the database, never read-modify-write here.

Paths are dotted (``"perspectives.optimistic"``); writes create missing
intermediate objects; an intermediate that is not an object is an error.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import HotMeshError

__all__ = [
    "ENTITY_OPS",
    "READ_ONLY_OPS",
    "EntityPathError",
    "apply_op",
    "deep_merge",
    "split_path",
]

ENTITY_OPS = frozenset(
    {
        "set",
        "merge",
        "get",
        "append",
        "prepend",
        "increment",
        "toggle",
        "set_if_not_exists",
        "delete",
    }
)
READ_ONLY_OPS = frozenset({"get"})


class EntityPathError(HotMeshError, TypeError):
    """An entity operation does not fit the document (wrong type at a path, bad path)."""


def split_path(path: str) -> list[str]:
    """A dotted path's keys. Keys are JSON object keys, so a path holds only what
    a stored key can (no NUL, no lone surrogate): refused here, the same on every
    backend, rather than by one database's text type."""
    if not isinstance(path, str):
        raise EntityPathError(f"invalid entity path {path!r}: a path is a string like 'a.b.c'")
    parts = path.split(".")
    if not path or any(part == "" for part in parts):
        raise EntityPathError(f"invalid entity path {path!r}: use dotted keys like 'a.b.c'")
    if "\x00" in path or (not path.isprintable() and _unstorable(path)):
        raise EntityPathError(
            f"invalid entity path {path!r}: NUL and lone surrogates cannot be stored"
        )
    return parts


def _unstorable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def deep_merge(base: Any, patch: Any) -> Any:
    """Objects merge key by key at every depth; anything else in ``patch`` replaces."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return patch


_MISSING: Any = object()


def _lookup(doc: dict[str, Any], parts: list[str]) -> Any:
    node: Any = doc
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _parent_for_write(doc: dict[str, Any], parts: list[str], path: str) -> dict[str, Any]:
    node = doc
    for part in parts[:-1]:
        child = node.get(part, _MISSING)
        if child is _MISSING or child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise EntityPathError(f"entity path {path!r}: {part!r} holds a non-object")
        node = child
    return node


def apply_op(
    doc: dict[str, Any], op: str, path: str | None, value: Any
) -> tuple[dict[str, Any], Any, bool]:
    """Apply ``op`` to a copy of ``doc``; return ``(new_doc, result, changed)``."""
    if op not in ENTITY_OPS:
        raise EntityPathError(f"unknown entity operation {op!r}")
    if op == "set":
        if not isinstance(value, dict):
            raise EntityPathError("entity.set takes an object (dict)")
        return copy.deepcopy(value), copy.deepcopy(value), True
    if op == "merge":
        if not isinstance(value, dict):
            raise EntityPathError("entity.merge takes an object (dict)")
        merged = deep_merge(doc, value)
        return merged, copy.deepcopy(merged), True
    if op == "get":
        if path is None:
            return doc, copy.deepcopy(doc), False
        found = _lookup(doc, split_path(path))
        return doc, None if found is _MISSING else copy.deepcopy(found), False
    if path is None:
        raise EntityPathError(f"entity.{op} needs a path")
    parts = split_path(path)
    new = copy.deepcopy(doc)
    current = _lookup(new, parts)
    if op == "delete":
        if current is _MISSING:
            return doc, None, False
        parent = _parent_for_write(new, parts, path)
        del parent[parts[-1]]
        return new, current, True
    if op == "set_if_not_exists":
        if current is not _MISSING:
            return doc, copy.deepcopy(current), False
        _parent_for_write(new, parts, path)[parts[-1]] = value
        return new, copy.deepcopy(value), True
    if op in ("append", "prepend"):
        if current is _MISSING or current is None:
            current = []
        if not isinstance(current, list):
            raise EntityPathError(f"entity.{op}: {path!r} holds a non-list")
        updated = [*current, value] if op == "append" else [value, *current]
        _parent_for_write(new, parts, path)[parts[-1]] = updated
        return new, copy.deepcopy(updated), True
    if op == "increment":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EntityPathError("entity.increment: 'by' must be a number")
        if current is _MISSING or current is None:
            current = 0
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise EntityPathError(f"entity.increment: {path!r} holds a non-number")
        total = current + value
        _parent_for_write(new, parts, path)[parts[-1]] = total
        return new, total, True
    # toggle
    if current is _MISSING or current is None:
        current = False
    if not isinstance(current, bool):
        raise EntityPathError(f"entity.toggle: {path!r} holds a non-boolean")
    _parent_for_write(new, parts, path)[parts[-1]] = not current
    return new, not current, True
