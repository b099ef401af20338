"""One safety-net poll per backend for every waiting ``result()``.

A waiting ``handle.result()`` returns when its backend's wake-up for the job
arrives (NOTIFY on PostgreSQL, a commit on the memory backend). Wake-ups can be
lost (a LISTEN connection cut, a fault injected), so a waiting handle also
needs a poll. Each handle used to re-read its own job every second: with 2,000
workflows waited on and queued behind a busy worker that was 2,000 reads a
second, 47 per workflow, and the throughput of the worker fell from 213 to
16-86 workflows a second. Here every waiting handle of a backend registers
with one :class:`ResultPoller`, whose single loop reads all their jobs with one
``Store.get_jobs`` each interval and wakes the handles whose job has finished
(or is gone). A handle unregisters when it returns, is cancelled or times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Iterator
from typing import Any

from .models import TERMINAL_STATUSES, Job
from .protocols import Backend

__all__ = ["SAFETY_POLL", "ResultPoller", "ResultWaiter", "poller_for"]

log = logging.getLogger("hotmesh.client")

SAFETY_POLL = 1.0  # seconds between the batched re-reads of the jobs waited on
BATCH = 1000  # job ids per read: a bounded statement, however many are waited on


class ResultWaiter:
    """One waiting handle: ``polled`` is resolved when a poll saw its job finished
    (with that job) or gone (with None)."""

    __slots__ = ("job_id", "polled")

    def __init__(self, job_id: str, polled: asyncio.Future[Job | None]) -> None:
        self.job_id = job_id
        self.polled = polled


class ResultPoller:
    """The poll loop of one backend: runs while any handle waits, then stops."""

    def __init__(self, backend: Backend, interval: float = SAFETY_POLL) -> None:
        # Weak: the loop must not keep a closed backend alive; waiting handles
        # hold it strongly while they wait.
        self._backend = weakref.ref(backend)
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self._waiting: dict[str, set[ResultWaiter]] = {}
        self._task: asyncio.Task[None] | None = None
        self._sleeping = False
        self.polls = 0  # batched reads done (tests, diagnostics)

    def __len__(self) -> int:
        return sum(len(waiters) for waiters in self._waiting.values())

    def register(self, job_id: str) -> ResultWaiter:
        waiter = ResultWaiter(job_id, self.loop.create_future())
        self._waiting.setdefault(job_id, set()).add(waiter)
        if self._task is None:
            self._task = self.loop.create_task(self._run(), name="hotmesh result poller")
        return waiter

    def unregister(self, waiter: ResultWaiter) -> None:
        waiters = self._waiting.get(waiter.job_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiting[waiter.job_id]
        if not waiter.polled.done():
            waiter.polled.cancel()
        if not self._waiting and self._task is not None and self._sleeping:
            # Nobody waits: stop now rather than at the next tick. Never in the
            # middle of a read (its connection would be cut); a read ends the
            # loop itself when it finds nobody waiting.
            self._task.cancel()
            self._task = None

    @contextlib.contextmanager
    def waiting(self, job_id: str) -> Iterator[ResultWaiter]:
        waiter = self.register(job_id)
        try:
            yield waiter
        finally:
            self.unregister(waiter)

    async def _run(self) -> None:
        try:
            while self._waiting:
                self._sleeping = True
                try:
                    await asyncio.sleep(self.interval)
                finally:
                    self._sleeping = False
                backend = self._backend()
                if backend is None or not self._waiting:
                    break
                await self._poll(backend)
                del backend
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _poll(self, backend: Backend) -> None:
        ids = list(self._waiting)
        found: dict[str, Job] = {}
        try:
            async with backend.transaction(readonly=True) as tx:
                for start in range(0, len(ids), BATCH):
                    for job in await tx.store.get_jobs(ids[start : start + BATCH]):
                        found[job.id] = job
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # The poll is only the safety net: try again at the next tick.
            log.warning("result() safety poll of %d jobs failed: %s", len(ids), error)
            return
        finally:
            self.polls += 1
        for job_id in ids:
            seen = found.get(job_id)
            if seen is not None and seen.status not in TERMINAL_STATUSES:
                continue
            for waiter in list(self._waiting.get(job_id, ())):
                if not waiter.polled.done():
                    waiter.polled.set_result(seen)


# One poller per backend object (a CodecBackend is its own backend: its handles
# read decoded jobs), and per event loop: a poller's loop task lives in one.
_POLLERS: weakref.WeakKeyDictionary[Any, ResultPoller] = weakref.WeakKeyDictionary()


def poller_for(backend: Backend) -> ResultPoller:
    """The poller of ``backend`` in the running event loop, made on first use."""
    loop = asyncio.get_running_loop()
    try:
        poller = _POLLERS.get(backend)
    except TypeError:  # not weakly referenceable: a poller of its own each time
        return ResultPoller(backend)
    if poller is None or poller.loop is not loop:
        poller = _POLLERS[backend] = ResultPoller(backend)
    return poller
