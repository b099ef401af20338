"""The in-memory backend: the engine's fast, faithful twin of PostgreSQL.

One asyncio lock serializes transactions (the engine never holds one across a
user's code), an undo log gives rollback, and wake-ups fire on commit only —
so the engine observes the same ordering it would against a database.  With a
:class:`~hotmesh_core.clock.VirtualClock`, leases, delays and timers follow the
virtual time, and a result-waiter may skip time when only timers remain.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from hotmesh_core.changes import ChangeQueue
from hotmesh_core.clock import Clock, SystemClock, VirtualClock
from hotmesh_core.event_wait import Wakeup
from hotmesh_core.group_commit import ADVANCE_MANY
from hotmesh_core.transactions import TransactionNotSupported

from .signal import MemorySignal
from .state import MemoryState, MemoryTx
from .store import MemoryStore
from .stream import MemoryStream

__all__ = ["MemoryBackend", "MemoryTransaction"]

# One "database" per app id and event loop: a client and a worker opened apart
# in one program see the same jobs, as they would through PostgreSQL; a new
# event loop (each test under pytest-asyncio) starts from nothing.
_DATABASES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, MemoryState]] = (
    weakref.WeakKeyDictionary()
)


class MemoryTransaction:
    def __init__(self, tx: MemoryTx) -> None:
        self.store = MemoryStore(tx)
        self.stream = MemoryStream(tx)
        self.signal = MemorySignal(tx)


class _MemoryWatch:
    """One watcher's event, registered before the caller first reads the job: a
    commit notifying the job after that sets it, so no wake-up is missed."""

    def __init__(self, backend: MemoryBackend, event: Wakeup) -> None:
        self._backend = backend
        self._event = event

    async def wait(self, timeout: float) -> None:
        await self._backend.wait_changed(self._event, timeout)
        self._event.clear()  # the caller reads the job next: it sees what woke it


class MemoryBackend:
    name = "memory"
    capabilities = frozenset({"virtual_clock", ADVANCE_MANY})

    def __init__(self, app_id: str, options: dict[str, Any]) -> None:
        self.app_id = app_id
        clock = options.get("clock")
        if clock == "virtual":
            clock = VirtualClock()
        self._requested_clock: Clock | None = clock
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.state = MemoryState(self.clock)
        self._opened = False

    async def open(self) -> None:
        if self._opened:
            return
        databases = _DATABASES.setdefault(asyncio.get_running_loop(), {})
        state = databases.get(self.app_id)
        if state is None or (
            self._requested_clock is not None and state.clock is not self._requested_clock
        ):
            # A new database (an explicitly given clock starts a fresh one).
            state = MemoryState(self.clock)
            databases[self.app_id] = state
            if isinstance(self.clock, VirtualClock):
                self.clock.subscribe(state.wake_workers)
        self.state = state
        self.clock = state.clock
        self._opened = True

    async def close(self) -> None:
        self.state.wake()

    async def maintain(self) -> int:
        async with self.transaction() as tx:
            return await tx.store.expire_jobs()

    def now(self) -> float:
        return self.clock.now()

    @asynccontextmanager
    async def transaction(
        self, *, readonly: bool = False, single: bool = False
    ) -> AsyncIterator[MemoryTransaction]:
        if not self._opened:
            await self.open()
        async with self.state.lock:
            tx = MemoryTx(self.state)
            try:
                yield MemoryTransaction(tx)
            except BaseException:
                tx.rollback()
                raise
        if tx.queues_to_wake:
            self.state.wake_queues(tx.queues_to_wake)
        if tx.jobs_to_wake:
            self.state.wake_jobs(tx.jobs_to_wake)
        for feed in self.state.change_feeds:
            for note in tx.change_notes:
                feed.put(note)

    def _next_due(self, queues: Sequence[str] | None) -> float | None:
        names = self.state.queues.keys() if queues is None else queues
        due: float | None = None
        for name in names:
            for task in self.state.queues.get(name, {}).values():
                moment = task.visible_at if task.lease_until is None else task.lease_until
                # Only future moments: a ready task this worker cannot serve must not spin it.
                if moment > self.clock.now() and (due is None or moment < due):
                    due = moment
        return due

    async def wait_for_tasks(self, queues: Sequence[str], timeout: float) -> None:
        """Sleep until a commit makes work on one of ``queues``, or, on the real
        clock, until its next delayed task is due (on a virtual clock, a move of
        the clock wakes every worker instead)."""
        if not self._opened:
            await self.open()
        if not self.clock.virtual:
            due = self._next_due(queues)
            if due is not None:
                timeout = min(timeout, max(due - self.clock.now(), 0.0) + 0.0005)
        state = self.state
        event = Wakeup()
        for queue in queues:
            state.watchers(state.queue_waiters, queue).add(event)
        try:
            await event.wait(timeout)
        finally:
            for queue in queues:
                state.unwatch(state.queue_waiters, queue, event)

    @asynccontextmanager
    async def watch_job(self, job_id: str) -> AsyncIterator[_MemoryWatch]:
        if not self._opened:
            await self.open()
        state = self.state
        event = Wakeup()
        state.watchers(state.job_watchers, job_id).add(event)
        try:
            yield _MemoryWatch(self, event)
        finally:
            state.unwatch(state.job_watchers, job_id, event)

    async def wait_changed(self, event: Wakeup, timeout: float) -> None:
        clock = self.clock
        skipping = isinstance(clock, VirtualClock) and clock.auto_skip
        woken = await event.wait(min(timeout, 0.01) if skipping else timeout)
        if not woken and isinstance(clock, VirtualClock) and clock.auto_skip:
            self._skip_if_idle(clock)

    def _skip_if_idle(self, clock: VirtualClock) -> None:
        """Jump to the next timer when no task is ready or in flight (time skipping)."""
        if self.state.lock.locked():
            # A transaction is open: its changes (a retry's new due time, say)
            # are not committed and may be rolled back, so they are no ground
            # for moving time. The next idle wait looks again.
            return
        now = clock.now()
        next_due: float | None = None
        for queue in self.state.queues.values():
            for task in queue.values():
                if task.lease_until is not None and task.lease_until > now:
                    return  # work in flight: its lease must not expire under it
                if task.visible_at <= now:
                    return  # ready work a worker will pick up
                if next_due is None or task.visible_at < next_due:
                    next_due = task.visible_at
        if next_due is not None:
            clock.advance_to(next_due)

    async def joined(self, connection: Any) -> MemoryBackend:
        raise TransactionNotSupported(
            "the memory backend cannot join your transaction (connection=)"
        )

    @asynccontextmanager
    async def watch_changes(self) -> AsyncIterator[ChangeQueue]:
        if not self._opened:
            await self.open()
        feed = ChangeQueue()
        self.state.change_feeds.add(feed)
        try:
            yield feed
        finally:
            self.state.change_feeds.discard(feed)
