"""What the clients and workers of one process hand each other directly.

The database is the hub every worker coordinates through, and nothing here
changes what is stored or who may take what: each shortcut only skips a trip
through the database that would have carried the same thing back to the same
process, and the stored rows stay the way forward should the process die.

- **Eager start** (as Temporal's eager workflow start): a client that starts a
  job in a process whose worker serves its queue and workflow, and has a free
  slot, creates the job with its first run task already *leased* to that
  worker (one statement, as every start) and hands the task over. No NOTIFY,
  no claim, no read of the job just written. Should the process die, the lease
  runs out and any worker claims the run, as any claimed task.
- **Signals handed over**: a signal sent from a process whose worker caches
  the run it wakes has that run's task leased to the worker by the delivery
  itself (``advance.Handoff``), and the worker resumes the run with the
  signal's data: no NOTIFY, no claim, no read. The answer is stored before
  ``signal()`` returns, as always; the lease is the way forward until the run
  commits.
- **Local results**: a ``result()`` waiting in the process where its job ended
  on the hot path (:meth:`Engine._advance`, a committed ``Finish``) gets the
  outcome from that commit instead of from a wake-up and a read. Only a
  ``completed`` end is handed on this way: it is final, while a failed job
  may be resumed before the caller looks.
- **Quiet ends**: a job started eagerly here and completed here, with a
  handle of this process expecting it, needs no wake-up: its finish is
  ``quiet`` (:class:`hotmesh_core.advance.Finish`), and the backend announces
  it only if a ``result()`` elsewhere asked (``Store.get_awaited_job``, which
  every handle that did not create its job uses). On PostgreSQL that saves the
  NOTIFY that every LISTENing connection of the database reads in a
  transaction of its own.

Both are per backend object and per event loop, like the result poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from .models import Job, Task

if TYPE_CHECKING:
    from .advance import Handoff
    from .protocols import Backend

__all__ = [
    "EagerTaker",
    "LocalResults",
    "eager_taker",
    "local_results",
    "serve_eagerly",
    "signal_taker",
]


class EagerTaker(Protocol):
    """A worker that can take a started job's first run, or a signalled run it
    caches, at once."""

    id: str
    lease: float

    def signal_owner(self) -> str | None:
        """A lease owner for the run a signal sent from this process wakes, if
        this worker caches runs and has a slot free; else None."""

    def take_signalled(self, owner: str, handoff: Handoff | None, data: Any, lost: bool) -> None:
        """Resume the cached run that ``handoff`` (filled in by the delivery) leased
        to ``owner``, with the signal's ``data``; None: nothing was handed, and
        with ``lost`` whatever a lost commit may have leased goes back."""

    def eager_owner(self, queue: str, workflow_name: str) -> str | None:
        """A lease owner for the first run of a job of ``workflow_name`` on
        ``queue``, if this worker serves it and has a slot free; else None."""

    def take_started(self, owner: str, job: Job | None, run: Task) -> None:
        """Run ``run``, leased to ``owner``: the first run of ``job``, just created.
        With ``job`` None the start created nothing (the id existed, or the
        call failed): whatever a lost commit may have leased to ``owner`` is to
        be handed back."""


class LocalResults:
    """The completed outcomes of jobs that ended in this process, kept only for the
    jobs a handle of this process expects (started here, or waited on here)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._expected: dict[str, int] = {}  # job id: how many handles expect it
        self._ended: dict[str, asyncio.Future[Any]] = {}
        self._eager: dict[str, float] = {}  # job id: created_at, of eager starts here

    def started_eagerly(self, job_id: str, created_at: float) -> None:
        """The job of ``job_id`` created at ``created_at`` was started here with its
        first run leased to a worker here (its end is not announced unless a
        handle elsewhere asks)."""
        self._eager[job_id] = created_at

    def hears(self, job_id: str, created_at: float) -> bool:
        """Whether the completion of this job, committed here, reaches every handle
        that waits on it without a wake-up: it was started eagerly here, and a
        handle here expects it (a handle elsewhere asked for the wake-up)."""
        return job_id in self._expected and self._eager.get(job_id) == created_at

    def expect(self, job_id: str) -> None:
        self._expected[job_id] = self._expected.get(job_id, 0) + 1

    def release(self, job_id: str) -> None:
        left = self._expected.get(job_id, 0) - 1
        if left > 0:
            self._expected[job_id] = left
            return
        self._expected.pop(job_id, None)
        self._eager.pop(job_id, None)
        ended = self._ended.pop(job_id, None)
        if ended is not None and not ended.done():
            with contextlib.suppress(RuntimeError):  # a handle collected after its loop closed
                ended.cancel()

    def ended(self, job_id: str) -> asyncio.Future[Any] | None:
        """Resolved with the result once the job completes in this process; None
        if no handle here expects it."""
        if job_id not in self._expected:
            return None
        future = self._ended.get(job_id)
        if future is None:
            future = self._ended[job_id] = self.loop.create_future()
        return future

    def completed(self, job_id: str, created_at: float, result: Any) -> None:
        """The engine committed the completion of ``job_id`` (the job of that id
        created at ``created_at``) with ``result``."""
        if self._eager.get(job_id) == created_at:
            del self._eager[job_id]  # ended: nothing more to keep quiet
        if job_id not in self._expected:
            return
        future = self.ended(job_id)
        assert future is not None
        if not future.done():
            future.set_result((created_at, result))

    def take(self, job_id: str, created_at: float | None) -> tuple[bool, Any]:
        """(True, result) once, if the job of ``job_id`` created at ``created_at``
        completed here; after that a handle reads. An outcome of another job
        of the id (an earlier one, expired since: ids can be reused) or for a
        handle that does not know which job it has (None) is dropped, not
        given: the handle reads instead."""
        future = self._ended.get(job_id)
        if future is None or not future.done() or future.cancelled():
            return False, None
        del self._ended[job_id]
        ended_at, result = future.result()
        if created_at is None or ended_at != created_at:
            return False, None
        return True, result


_RESULTS: weakref.WeakKeyDictionary[Any, LocalResults] = weakref.WeakKeyDictionary()
_TAKERS: weakref.WeakKeyDictionary[Any, list[EagerTaker]] = weakref.WeakKeyDictionary()


def local_results(backend: Backend) -> LocalResults | None:
    """The local results of ``backend`` in the running loop (made on first use);
    None for a backend that cannot be weakly referenced."""
    loop = asyncio.get_running_loop()
    try:
        results = _RESULTS.get(backend)
    except TypeError:
        return None
    if results is None or results.loop is not loop:
        results = _RESULTS[backend] = LocalResults()
    return results


def serve_eagerly(backend: Backend, taker: EagerTaker, serving: bool) -> None:
    """Register (or, ``serving=False``, remove) a worker of ``backend`` that takes
    first runs of jobs this process starts."""
    try:
        takers = _TAKERS.setdefault(backend, [])
    except TypeError:
        return
    if serving:
        takers.append(taker)
    elif taker in takers:
        takers.remove(taker)


def eager_taker(backend: Backend, queue: str, workflow_name: str) -> tuple[EagerTaker, str] | None:
    """A worker of this process, and a lease owner of its, for a job to start."""
    try:
        takers = _TAKERS.get(backend, [])
    except TypeError:
        return None
    for taker in takers:
        owner = taker.eager_owner(queue, workflow_name)
        if owner is not None:
            return taker, owner
    return None


def signal_taker(backend: Backend) -> tuple[EagerTaker, str] | None:
    """A worker of this process that caches runs and has a slot free, and a lease
    owner of its, for the run a signal sent from here wakes (if it is its)."""
    try:
        takers = _TAKERS.get(backend, [])
    except TypeError:
        return None
    for taker in takers:
        owner = taker.signal_owner()
        if owner is not None:
            return taker, owner
    return None
