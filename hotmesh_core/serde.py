"""JSON, never pickle: the one way values become bytes and come back.

User values (arguments, results, signal data, entity documents) must be plain
JSON.  They are checked *at the call* so that a bad value is refused before
anything is stored.  Records that cross the backend boundary are attrs classes,
turned into JSON-able dicts by the cattrs converter below.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import cattrs

from .errors import SerializationError

__all__ = ["converter", "dumps", "ensure_json", "loads", "structure", "unstructure"]

T = TypeVar("T")

converter = cattrs.Converter()


def dumps(value: Any, *, what: str = "value") -> str:
    """Serialize a user value to JSON text, refusing what JSON cannot hold."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what} is not JSON-serializable: {exc}") from None
    if "\\u0000" in text and _holds_nul(value):  # the cheap test first
        # PostgreSQL's jsonb cannot hold U+0000; refused on every backend alike.
        raise SerializationError(f"{what} holds a NUL character (\\x00), which cannot be stored")
    return text


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_holds_nul(item) for item in value)
    return False


def loads(text: str | bytes) -> Any:
    return json.loads(text)


def ensure_json(value: Any, *, what: str = "value") -> Any:
    """Return the JSON-normalized copy of ``value`` (tuples become lists, ...).

    Normalizing at the call means a first execution and a replay observe the
    very same value.
    """
    return json.loads(dumps(value, what=what))


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)


def structure(data: Any, cls: type[T]) -> T:
    return converter.structure(data, cls)
