"""The in-memory tables, and the transaction that changes them all-or-nothing.

Every write goes through :class:`MemoryTx`, which remembers how to undo it, so a
failing transaction leaves the state exactly as it was — the same guarantee a
database gives.  Records are replaced (``attrs.evolve``), never edited in place,
and values are deep-copied in and out so callers cannot alias stored documents.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar, cast

import attrs

from hotmesh_core.changes import ChangeQueue
from hotmesh_core.clock import Clock
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
    """A copy safe to hand out or keep: records copied, JSON containers copied deeply.

    Much cheaper than ``copy.deepcopy``: stored records are replaced, never edited
    in place, so only the JSON values inside them (dicts, lists) need copying.
    """
    if isinstance(value, dict):
        return cast(V, {key: clone(item) for key, item in value.items()})
    if isinstance(value, list):
        return cast(V, [clone(item) for item in value])
    cls = type(value)
    names = _FIELDS.get(cls)
    if names is None:
        if not attrs.has(cls):
            return value
        names = _FIELDS[cls] = tuple(a.name for a in attrs.fields(cls))
    # Field by field: several times faster than copy.copy on slotted classes.
    copied = object.__new__(cls)
    for name in names:
        item = getattr(value, name)
        object.__setattr__(copied, name, clone(item) if isinstance(item, (dict, list)) else item)
    return copied


_FIELDS: dict[type, tuple[str, ...]] = {}


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
        self.changed = asyncio.Event()
        self.change_feeds: set[ChangeQueue] = set()  # entity watchers (watch)

    def wake(self) -> None:
        """Wake everyone waiting for a change (workers, result waiters)."""
        self.changed.set()
        self.changed = asyncio.Event()


class MemoryTx:
    """An undo log plus the wake-ups to send once the transaction commits."""

    def __init__(self, state: MemoryState) -> None:
        self.state = state
        self.undo: list[Callable[[], None]] = []
        self.queues_to_wake: set[str] = set()
        self.jobs_to_wake: set[str] = set()
        self.change_notes: list[tuple[str, int]] = []  # for entity watchers, at commit

    def now(self) -> float:
        return self.state.clock.now()

    def put(self, mapping: MutableMapping[K, V], key: K, value: V) -> None:
        previous = mapping.get(key, _MISSING)
        mapping[key] = value
        self.undo.append(lambda: self._restore(mapping, key, previous))

    def append(self, items: list[V], value: V) -> None:
        """Append in place (undone by a pop): a log that grows without copying."""
        items.append(value)

        def undo() -> None:
            items.pop()

        self.undo.append(undo)

    def pop(self, mapping: MutableMapping[K, V], key: K) -> V | None:
        previous = mapping.pop(key, _MISSING)
        if previous is _MISSING:
            return None
        self.undo.append(lambda: self._restore(mapping, key, previous))
        return previous  # type: ignore[no-any-return]

    @staticmethod
    def _restore(mapping: MutableMapping[Any, Any], key: Any, previous: Any) -> None:
        if previous is _MISSING:
            mapping.pop(key, None)
        else:
            mapping[key] = previous

    def rollback(self) -> None:
        for undo in reversed(self.undo):
            undo()
        self.undo.clear()
