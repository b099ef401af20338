"""A cheap ``attrs.evolve`` for the engine's own records.

``attrs.evolve`` walks the class's fields and runs ``__init__`` on every call;
under W1 on the memory backend the engine called it a dozen times a workflow
and it was 6% of all CPU. The records of :mod:`hotmesh_core.models` have no
validators, converters or ``__attrs_post_init__``, so a copy of their slots
with the changes set is the same record ``evolve`` would build.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

__all__ = ["revise"]

R = TypeVar("R")


def revise(record: R, **changes: Any) -> R:
    """``record`` with ``changes``, as a new record (what ``attrs.evolve`` does).

    The fields not changed are shared, as with ``evolve``. A class with
    validators, converters, a post-init, fields outside ``__init__`` or no
    slots is evolved after all (what its ``__init__`` does cannot be
    skipped). An unknown field name raises (``AttributeError`` here,
    ``TypeError`` from ``evolve``).
    """
    cls = record.__class__
    shallow = _SHALLOW.get(cls, _UNSEEN)
    if shallow is _UNSEEN:
        shallow = _SHALLOW[cls] = _shallow_copier(cls)
    if shallow is None:
        return attrs.evolve(record, **changes)  # type: ignore[misc]
    copied = shallow(record)
    for name, value in changes.items():
        _set(copied, name, value)  # slots: an unknown name raises
    return copied  # type: ignore[no-any-return]


_set = object.__setattr__  # frozen records refuse setattr; a fresh copy is still ours


def _shallow_copier(cls: type) -> Callable[[Any], Any] | None:
    """The slot copier of ``cls``, or None where ``attrs.evolve`` must build it."""
    fields = attrs.fields(cls)
    if (
        "__slots__" not in cls.__dict__
        or hasattr(cls, "__attrs_post_init__")
        or any(f.validator is not None or f.converter is not None or not f.init for f in fields)
    ):
        return None  # what its __init__ does cannot be skipped
    names = [f.name for f in fields]
    lines = ["def copy(value):", "    copied = new(cls)"]
    if getattr(cls, "__setattr__", None) is _set:  # not frozen: plain stores, far cheaper
        lines += [f"    copied.{name} = value.{name}" for name in names]
    else:
        lines += [f"    setattr(copied, {name!r}, value.{name})" for name in names]
    lines.append("    return copied")
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls, "setattr": _set}
    exec("\n".join(lines), namespace)  # generated from the class's own fields
    copier: Callable[[Any], Any] = namespace["copy"]
    return copier


_UNSEEN: Any = object()
_SHALLOW: dict[type, Callable[[Any], Any] | None] = {}
