"""Read-only views of an app for people watching it (``hotmesh ui``), backend-agnostic.

- :class:`RunCursor`: the keyset position in a newest-first listing of runs
  (``Store.page_jobs``): the (created_at, id) of the last row shown, so the
  next page starts right after it, however deep, without OFFSET.
- :class:`QueueStats`: one task queue's depth, oldest ready task and the
  workers holding its leases (``Stream.queue_stats``).
- The entity's past: :func:`entity_at` rebuilds the document as it stood at
  a version by replaying its change log with the same pure function every
  backend matches (:func:`hotmesh_core.entity_ops.apply_op`);
  :func:`version_at` finds the version current at a moment; :func:`diff`
  lists what differs between two documents, path by path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from attrs import define

from .entity_ops import READ_ONLY_OPS, apply_op
from .errors import HotMeshError
from .models import EntityChange

__all__ = [
    "DiffEntry",
    "QueueStats",
    "RunCursor",
    "diff",
    "entity_at",
    "version_at",
]


class InvalidCursor(HotMeshError, ValueError):
    """A page cursor that this code did not make (edited or truncated)."""


@define(frozen=True, order=True)
class RunCursor:
    """Where a newest-first page of runs ended: its last run's creation time, in
    whole microseconds (exact on every backend), and id (the tie-break)."""

    created_us: int
    job_id: str

    @classmethod
    def after(cls, created_at: float, job_id: str) -> RunCursor:
        return cls(round(created_at * 1_000_000), job_id)

    def encode(self) -> str:
        return f"{self.created_us}:{self.job_id}"

    @classmethod
    def decode(cls, text: str) -> RunCursor:
        micros, colon, job_id = text.partition(":")
        if not colon or not job_id or not micros.lstrip("-").isdigit():
            raise InvalidCursor(f"invalid page cursor {text!r}")
        return cls(int(micros), job_id)


@define(frozen=True)
class QueueStats:
    """One task queue now: ``ready`` tasks waiting for a worker (timers left
    out) and since when the oldest has waited (None when none), ``delayed``
    tasks not yet due (retries, timers, sleeps), ``leased`` tasks being worked
    on, and the workers holding those leases (a worker idle right now holds
    none and is not seen: there is no registry of workers, by design)."""

    queue: str
    ready: int
    oldest_ready: float | None
    delayed: int
    leased: int
    workers: tuple[str, ...]


def entity_at(changes: Iterable[EntityChange], version: int) -> dict[str, Any]:
    """The entity document as it stood at ``version`` (0: before any change).

    Replays the change log in version order with :func:`apply_op`, the
    reference every backend's entity operations match, so the result equals
    what the backend held then."""
    doc: dict[str, Any] = {}
    for change in sorted(changes, key=lambda c: c.version):
        if change.version > version:
            break
        if change.op in READ_ONLY_OPS:
            continue
        doc, _result, _changed = apply_op(doc, change.op, change.path, change.value)
    return doc


def version_at(changes: Iterable[EntityChange], moment: float) -> int:
    """The entity's version at time ``moment``: that of its last change made then or before."""
    version = 0
    for change in changes:
        if change.at <= moment and change.version > version:
            version = change.version
    return version


@define(frozen=True)
class DiffEntry:
    """One difference: ``kind`` is ``added``, ``removed`` or ``changed`` at dotted ``path``
    (list items as ``path[i]``)."""

    path: str
    kind: str
    before: Any = None
    after: Any = None


_ABSENT: Any = object()


def diff(before: Any, after: Any) -> list[DiffEntry]:
    """What changed from ``before`` to ``after``, leaf by leaf, in the documents' key order."""
    found: list[DiffEntry] = []
    _diff(before, after, "", found)
    return found


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _same(left: Any, right: Any) -> bool:
    """JSON equality of two scalars: 1 is 1.0, but True is not 1."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left == right
    return type(left) is type(right) and bool(left == right)


def _diff(before: Any, after: Any, path: str, found: list[DiffEntry]) -> None:
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        for key in [*before, *(k for k in after if k not in before)]:
            left, right = before.get(key, _ABSENT), after.get(key, _ABSENT)
            where = _join(path, str(key))
            if left is _ABSENT:
                found.append(DiffEntry(where, "added", None, right))
            elif right is _ABSENT:
                found.append(DiffEntry(where, "removed", left, None))
            else:
                _diff(left, right, where, found)
        return
    if isinstance(before, list) and isinstance(after, list):
        for position in range(max(len(before), len(after))):
            where = f"{path}[{position}]"
            if position >= len(before):
                found.append(DiffEntry(where, "added", None, after[position]))
            elif position >= len(after):
                found.append(DiffEntry(where, "removed", before[position], None))
            else:
                _diff(before[position], after[position], where, found)
        return
    if not _same(before, after):
        found.append(DiffEntry(path or "(document)", "changed", before, after))
