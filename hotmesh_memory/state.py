"""The in-memory tables, and the transaction that changes them all-or-nothing.

Every write goes through :class:`MemoryTx`, which remembers how to undo it, so a
failing transaction leaves the state exactly as it was — the same guarantee a
database gives.  Records are replaced (:func:`revise`), never edited in place,
and what a caller could mutate (records, JSON values) is copied in and out
(:func:`clone`), so callers cannot alias stored documents.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TypeVar

import attrs

from hotmesh_core.changes import ChangeQueue
from hotmesh_core.clock import Clock
from hotmesh_core.event_wait import Wakeup
from hotmesh_core.models import (
    DeadLetter,
    EntityChange,
    Job,
    Step,
    Task,
    Thread,
    Waiter,
    WorkerPresence,
)

K = TypeVar("K")
V = TypeVar("V")

_MISSING: Any = object()


def clone(value: V) -> V:
    """A copy safe to hand out or keep: what a caller could mutate is copied, nothing else.

    Records (attrs classes, mutable) are copied field by field, and of their
    fields only those that can hold something mutable (JSON values, lists,
    records) are copied further; strings, numbers and frozen records of them
    are shared. JSON containers are copied deeply. Each record class gets a
    copier generated once (``_copier``): the generic field loop this replaces
    was a quarter of the memory backend's CPU under W1.
    """
    cls = value.__class__
    if cls in _SCALARS:
        return value
    if cls is dict:
        return _copy_dict(value)  # type: ignore[arg-type, return-value]
    if cls is list:
        return _copy_list(value)  # type: ignore[arg-type, return-value]
    copier = _COPIERS.get(cls)
    if copier is None:
        copier = _copier(cls)
    return copier(value)  # type: ignore[no-any-return]


_SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})


def _copy_dict(value: dict[Any, Any]) -> dict[Any, Any]:
    # Inlined dispatch (no call per scalar): most of a document is scalars.
    return {
        key: item
        if item.__class__ in _SCALARS
        else _copy_dict(item)
        if item.__class__ is dict
        else clone(item)
        for key, item in value.items()
    }


def _copy_list(value: list[Any]) -> list[Any]:
    return [
        item
        if item.__class__ in _SCALARS
        else _copy_dict(item)
        if item.__class__ is dict
        else clone(item)
        for item in value
    ]


def _identity(value: Any) -> Any:
    return value


# Annotations of fields that hold nothing a caller can mutate: shared, not copied.
_IMMUTABLE_TYPES = frozenset({"str", "int", "float", "bool", "None", "ErrorInfo"})


def _immutable_field(annotation: Any) -> bool:
    if not isinstance(annotation, str):
        return False
    return all(part.strip() in _IMMUTABLE_TYPES for part in annotation.split("|"))


def _frozen(cls: Any) -> bool:
    """Whether ``cls`` refuses attribute assignment (attrs' frozen classes)."""
    return cls.__setattr__ is not object.__setattr__


def _copier(cls: type) -> Callable[[Any], Any]:
    """The copy function of ``cls``, generated and cached on first use."""
    if not attrs.has(cls):
        if isinstance(cls, type) and issubclass(cls, dict):
            copier: Callable[[Any], Any] = _copy_dict  # a dict subclass: a plain dict copy
        elif isinstance(cls, type) and issubclass(cls, list):
            copier = _copy_list
        else:
            copier = _identity  # tuples, and anything else JSON cannot hold
        _COPIERS[cls] = copier
        return copier
    fields = attrs.fields(cls)
    frozen = _frozen(cls)
    if frozen and all(_immutable_field(f.type) for f in fields):
        _COPIERS[cls] = _identity  # nothing in it can change (ErrorInfo, Backlog)
        return _identity
    lines = ["def copy(value):", "    copied = new(cls)"]
    for f in fields:
        if _immutable_field(f.type):
            item = f"value.{f.name}"
        else:
            lines.append(f"    item = value.{f.name}")
            item = "item if item.__class__ in scalars else clone(item)"
        if frozen:
            lines.append(f"    setattr(copied, {f.name!r}, {item})")
        else:
            lines.append(f"    copied.{f.name} = {item}")
    lines.append("    return copied")
    namespace: dict[str, Any] = {
        "new": object.__new__,
        "cls": cls,
        "clone": clone,
        "scalars": _SCALARS,
        "setattr": object.__setattr__,
    }
    exec("\n".join(lines), namespace)  # generated from the class's own fields
    copier = namespace["copy"]
    _COPIERS[cls] = copier
    return copier


_COPIERS: dict[type, Callable[[Any], Any]] = {}


class MemoryState:
    """All the data of one app."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.children: dict[str, dict[str, None]] = {}
        self.threads: dict[tuple[str, str], Thread] = {}
        self.steps: dict[tuple[str, str], dict[int, Step]] = {}
        self.changes: dict[str, list[EntityChange]] = {}
        self.queues: dict[str, dict[str, Task]] = {}
        self.task_queue_of: dict[str, str] = {}
        self.unclaimed_runs: dict[tuple[str, str], str] = {}
        self.dead_letters: list[DeadLetter] = []
        self.workers: dict[tuple[str, str], WorkerPresence] = {}
        # Workers that stopped, by queue: their sticky run tasks are anyone's.
        self.stopped_workers: dict[str, dict[str, None]] = {}
        self.waiters: dict[str, list[Waiter]] = {}
        self.buffered: dict[str, list[tuple[float, Any]]] = {}
        self.task_ids = itertools.count(1)
        self.lock = asyncio.Lock()
        # Who waits for what: a commit wakes the watchers of the jobs it notified
        # and the waiters of the queues it touched, nobody else. (One event for
        # all made every commit wake every waiting result(), which then re-read
        # its job: O(N^2) reads with N workflows waited on.)
        self.job_watchers: dict[str, set[Wakeup]] = {}
        self.queue_waiters: dict[str, set[Wakeup]] = {}
        self.change_feeds: set[ChangeQueue] = set()  # entity watchers (watch)

    def wake_jobs(self, job_ids: Iterable[str]) -> None:
        """Wake the watchers of ``job_ids`` (a commit notified them)."""
        for job_id in job_ids:
            for event in self.job_watchers.get(job_id, ()):
                event.set()

    def wake_queues(self, queues: Iterable[str]) -> None:
        """Wake the workers waiting on ``queues`` (a commit made work there)."""
        for queue in queues:
            for event in self.queue_waiters.get(queue, ()):
                event.set()

    def wake_workers(self) -> None:
        """Wake every worker: the virtual clock moved, so delayed tasks may be due."""
        for waiters in self.queue_waiters.values():
            for event in waiters:
                event.set()

    def wake(self) -> None:
        """Wake everyone waiting (the backend closes)."""
        self.wake_workers()
        for watchers in self.job_watchers.values():
            for event in watchers:
                event.set()

    def watchers(self, table: dict[str, set[Wakeup]], key: str) -> set[Wakeup]:
        found = table.get(key)
        if found is None:
            found = table[key] = set()
        return found

    @staticmethod
    def unwatch(table: dict[str, set[Wakeup]], key: str, event: Wakeup) -> None:
        found = table.get(key)
        if found is not None:
            found.discard(event)
            if not found:
                del table[key]


class MemoryTx:
    """An undo log plus the wake-ups to send once the transaction commits."""

    def __init__(self, state: MemoryState) -> None:
        self.state = state
        # What undoes each write, newest last: a (mapping, key, previous value)
        # to put back (most writes; a tuple costs less than a closure), or a
        # function to call.
        self.undo: list[tuple[MutableMapping[Any, Any], Any, Any] | Callable[[], None]] = []
        self.queues_to_wake: set[str] = set()
        self.jobs_to_wake: set[str] = set()
        self.change_notes: list[tuple[str, int]] = []  # for entity watchers, at commit

    def now(self) -> float:
        return self.state.clock.now()

    def put(self, mapping: MutableMapping[K, V], key: K, value: V) -> None:
        previous = mapping.get(key, _MISSING)
        mapping[key] = value
        self.undo.append((mapping, key, previous))

    def append(self, items: list[V], value: V) -> None:
        """Append in place (undone by a pop): a log that grows without copying."""
        items.append(value)

        def undo() -> None:
            items.pop()

        self.undo.append(undo)

    def pop(
        self, mapping: MutableMapping[K, V], key: K, *, order: Callable[[K], Any] | None = None
    ) -> V | None:
        """Remove ``key``. Undone, it comes back last, unless ``order`` is given:
        the sort key of the mapping's keys, which are kept in that order (a
        queue, served first come, first served), and it comes back in its place."""
        previous = mapping.pop(key, _MISSING)
        if previous is _MISSING:
            return None
        if order is None:
            self.undo.append((mapping, key, previous))
        else:

            def undo() -> None:
                mapping[key] = previous
                if len(mapping) > 1:  # rolled back seldom: a sort then is cheaper than a place kept
                    ordered = sorted(mapping.items(), key=lambda item: order(item[0]))
                    mapping.clear()
                    mapping.update(ordered)

            self.undo.append(undo)
        return previous  # type: ignore[no-any-return]

    @staticmethod
    def _restore(mapping: MutableMapping[Any, Any], key: Any, previous: Any) -> None:
        if previous is _MISSING:
            mapping.pop(key, None)
        else:
            mapping[key] = previous

    def savepoint(self) -> tuple[int, int, frozenset[str], frozenset[str]]:
        """Where the transaction is now: :meth:`rollback_to` undoes what comes after."""
        return (
            len(self.undo),
            len(self.change_notes),
            frozenset(self.queues_to_wake),
            frozenset(self.jobs_to_wake),
        )

    def rollback_to(self, mark: tuple[int, int, frozenset[str], frozenset[str]]) -> None:
        """Undo what was done since ``mark`` (a subtransaction's rollback); the
        transaction goes on."""
        undone, notes, queues, jobs = mark
        self._undo(self.undo[undone:])
        del self.undo[undone:]
        del self.change_notes[notes:]
        self.queues_to_wake = set(queues)
        self.jobs_to_wake = set(jobs)

    def rollback(self) -> None:
        self._undo(self.undo)
        self.undo.clear()

    def _undo(
        self, entries: list[tuple[MutableMapping[Any, Any], Any, Any] | Callable[[], None]]
    ) -> None:
        for entry in reversed(entries):
            if isinstance(entry, tuple):
                self._restore(*entry)
            else:
                entry()
