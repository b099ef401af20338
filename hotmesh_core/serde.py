"""JSON, never pickle: the one way values become bytes and come back.

User values (arguments, results, signal data, entity documents) must be plain
JSON.  They are checked *at the call* so that a bad value is refused before
anything is stored.  Records that cross the backend boundary are attrs classes,
turned into JSON-able dicts by the cattrs converter below.
"""

from __future__ import annotations

import json
import math
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


def _walk_floats(value: Any, change: Any) -> Any:
    """``value`` with each float ``f`` replaced by ``change(f)`` (iterative)."""
    if isinstance(value, float):
        return change(value)
    if not isinstance(value, (dict, list)):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        source, target = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in items:
            if isinstance(item, (dict, list)):
                child: Any = {} if isinstance(item, dict) else []
                stack.append((item, child))
            else:
                child = change(item) if isinstance(item, float) else item
            if isinstance(target, dict):
                target[key] = child
            else:
                target.append(child)
    return root


NUL, BACKSLASH = chr(0), chr(92)


def exact_json(value: Any) -> str:
    """JSON text that a database keeping numbers as decimals (PostgreSQL's jsonb)
    reads back as the same Python values: a whole float written ``1e+20`` would
    come back as the int 100000000000000000000, so whole floats in exponent form
    are written out with ``.0``. The plain ``json.dumps`` text otherwise (the
    walk runs only when an exponent is there)."""
    text = json.dumps(value)
    if "e+" not in text:
        return text
    marks: dict[str, str] = {}

    def mark(number: float) -> Any:
        if number.is_integer() and "e+" in repr(number):
            n = len(marks)  # a NUL leads the mark: no storable string holds one
            marks['"' + BACKSLASH + "u0000" + str(n) + '"'] = f"{int(number)}.0"
            return NUL + str(n)
        return number

    text = json.dumps(_walk_floats(value, mark))
    for placeholder, number in marks.items():
        text = text.replace(placeholder, number)
    return text


# Ints this far from zero take the short way; a longer one may exceed the
# digits Python turns into text (sys.get_int_max_str_digits), which the long
# way refuses with a SerializationError.
_SHORT_INT = 1 << 64


def _plain(value: Any) -> bool:
    """Whether ``value``'s JSON form reads back as itself, a short int, a bool or
    None (exactly these classes: an IntEnum member reads back as a plain int,
    so it takes the long way)."""
    cls = value.__class__
    return value is None or cls is bool or (cls is int and -_SHORT_INT < value < _SHORT_INT)


def ensure_json(value: Any, *, what: str = "value") -> Any:
    """Return the JSON-normalized copy of ``value`` (tuples become lists, ...).

    Normalizing at the call means a first execution and a replay observe the
    very same value.
    """
    if _plain(value):
        return value
    cls = value.__class__
    if cls is float and math.isfinite(value):
        return 0.0 if value == 0 else value  # -0.0 too (see below)
    if cls is str and "\x00" not in value and _SURROGATE.search(value) is None:
        return value
    if (cls is list or cls is tuple) and all(_plain(item) for item in value):
        return list(value)  # activity arguments, mostly: no text made and parsed
    text = dumps(value, what=what)
    normal = json.loads(text)
    if "-0.0" in text:
        # No decimal keeps a negative zero (PostgreSQL reads -0.0 back as 0.0):
        # every backend, and a first run and its replay, see 0.0.
        normal = _walk_floats(normal, lambda number: 0.0 if number == 0 else number)
    return normal


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)


def structure(data: Any, cls: type[T]) -> T:
    return converter.structure(data, cls)
