"""JSON, never pickle: the one way values become bytes and come back.

User values (arguments, results, signal data, entity documents) must be plain
JSON.  They are checked *at the call* so that a bad value is refused before
anything is stored.  Records that cross the backend boundary are attrs classes,
turned into JSON-able dicts by the cattrs converter below.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import cattrs

from .errors import SerializationError

__all__ = ["MAX_DEPTH", "converter", "dumps", "ensure_json", "loads", "structure", "unstructure"]

T = TypeVar("T")

converter = cattrs.Converter()


# How deeply lists and dicts may nest in a stored value ([[1]] is 2 deep).  Far
# beyond any real document, yet shallow enough that json, psycopg and every
# backend read such a value back without exhausting the interpreter's stack.
# Checked by a walk with an explicit stack, so even a 100,000-deep value is
# refused with a SerializationError, never a RecursionError.
MAX_DEPTH = 100

_SURROGATE = re.compile(r"[\ud800-\udfff]")


def dumps(value: Any, *, what: str = "value") -> str:
    """Serialize a user value to JSON text, refusing what JSON cannot hold.

    Beyond what ``json`` refuses (sets, objects, NaN, cycles), every backend alike
    refuses U+0000 (no PostgreSQL jsonb holds it), lone surrogates (U+D800 to
    U+DFFF: not Unicode, no UTF-8 encoding) and nesting deeper than ``MAX_DEPTH``.
    """
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except RecursionError:
        deep = _unstorable(value, strings=False) or "is nested too deeply to serialize"
        raise SerializationError(f"{what} {deep}") from None
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what} is not JSON-serializable: {exc}") from None
    # The cheap tests on the text first: json escapes U+0000 and every code point
    # beyond ASCII (a surrogate as \udXXX); the walk only runs when one may be there.
    strings = "\\u0000" in text or "\\ud" in text
    if strings or text.count("[") + text.count("{") > MAX_DEPTH:
        found = _unstorable(value, strings=strings)
        if found is not None:
            raise SerializationError(f"{what} {found}")
    return text


def _unstorable(value: Any, *, strings: bool) -> str | None:
    """Why ``value`` cannot be stored (too deep; with ``strings``, a NUL or a lone
    surrogate in a string or key), or None.  Iterative: no recursion to blow up."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if strings:
                if "\x00" in item:
                    return "holds a NUL character (\\x00), which cannot be stored"
                found = _SURROGATE.search(item)
                if found is not None:
                    return (
                        f"holds a lone surrogate (U+{ord(found.group()):04X}), which is not "
                        "valid Unicode and cannot be stored"
                    )
        elif isinstance(item, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                return f"nests lists and dicts more than {MAX_DEPTH} deep, which cannot be stored"
            if isinstance(item, dict):
                for key, child in item.items():
                    stack.append((key, depth))
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
    return None


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
