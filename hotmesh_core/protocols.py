"""What a backend must provide, at the level of meaning (never SQL text).

A backend hands out *transactions*; each transaction exposes the three roles of
the design — :class:`Store`, :class:`Stream`, :class:`Signal` — and everything
done through one transaction commits or rolls back together.  That is how a
task's completion and the enqueue it causes, or an entity change and its step
record, are made atomic without the engine knowing any storage detail.

Wake-ups (``wait_for_tasks``/``wait_for_job``) live on the backend itself: they
are how idle workers and waiting clients learn that something committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

from .advance import Advance, Advanced, Handoff
from .changes import ChangeQueue
from .entity_query import JobQuery, Node
from .models import (
    Backlog,
    DeadLetter,
    EntityChange,
    EntityOp,
    ErrorInfo,
    Job,
    Step,
    Task,
    Thread,
    Waiter,
    WorkerPresence,
)
from .observe import QueueStats, RunCursor

__all__ = ["Backend", "JobWatch", "Signal", "Store", "Stream", "Transaction"]


class Store(Protocol):
    """Jobs with their entity, hook threads, step history, entity changes, search."""

    async def create_job(
        self, job: Job, *, run: Task | None = None, owner: str | None = None, lease: float = 0.0
    ) -> tuple[Job, bool]:
        """Insert ``job`` unless its id exists; return the stored job and whether it was created.

        With ``run`` (its first run task), a job that is created has it enqueued
        with it, as :meth:`Stream.enqueue` would, idle workers woken: a start is
        one call (on PostgreSQL one statement). With ``owner`` too, the run is
        leased to ``owner`` for ``lease`` seconds instead (an eager start,
        :mod:`hotmesh_core.in_process`: nobody is woken) and, if the job was
        created, ``run.id``, ``run.attempts`` (1) and ``run.lease_owner`` are
        set on the given task, for its owner to run and ack."""

    async def get_job(self, job_id: str) -> Job | None: ...

    async def lock_job(self, job_id: str) -> None:
        """Hold the job's row until the transaction ends (nothing if it does not
        exist). Taken first by every transaction that answers a job's steps or
        moves its activation, as ``hm_advance`` and an interrupt do: all of them
        then lock in one order (the job, its tasks, its steps) and queue behind
        each other instead of deadlocking. A backend whose transactions are
        serialized does nothing."""

    async def get_awaited_job(self, job_id: str) -> Job | None:
        """The job, as :meth:`get_job`, for a ``result()`` that waits on it but did
        not start it: from now on its end is announced (``Signal.notify_job``)
        even when the process that finishes it could keep quiet
        (:attr:`hotmesh_core.advance.Finish.quiet`). A backend that announces
        every end reads the job."""

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        """The jobs of ``job_ids`` that exist, each once, in no particular order:
        one read for many (the safety poll of every waiting ``result()``,
        :mod:`hotmesh_core.result_waiters`)."""

    async def set_job_status(
        self, job_id: str, status: str, *, result: Any = None, error: ErrorInfo | None = None
    ) -> Job | None:
        """Move a job that is not finished to ``status``; return it, or None if it was finished."""

    async def continue_job(self, job_id: str, args: list[Any]) -> Job | None:
        """Start the next generation of a running job (``continue_as_new``): delete
        its main thread's steps, set ``args``, reset its activation, count the
        generation. Its entity, hooks and their histories stay. None if the job
        is not running (interrupted meanwhile)."""

    async def reopen_job(
        self, job_id: str, *, activation: int, delete: Sequence[int]
    ) -> Job | None:
        """Reopen a failed job (``handle.resume()``): back to running, its error,
        result and finish time cleared; the main thread's steps ``delete`` are
        deleted (the code will issue them again). Its activation, ``activation``
        (a compare-and-set), moves on by one that delivers nothing, so that a
        worker's cached run of the job is stale: the next run replays the
        history under the code deployed now. None if the job is not failed or
        its activation moved."""

    async def active_children(self, job_id: str) -> list[str]:
        """Ids of the job's child jobs that have not finished."""

    async def create_thread(self, thread: Thread) -> bool:
        """Insert a hook thread unless (job, dimension) exists; return whether it was created."""

    async def get_thread(self, job_id: str, dimension: str) -> Thread | None: ...

    async def finish_thread(
        self, job_id: str, dimension: str, status: str, error: ErrorInfo | None = None
    ) -> Thread | None:
        """Mark a running hook thread finished; None if it was already finished."""

    async def threads(self, job_id: str) -> list[Thread]: ...

    async def load_steps(
        self, job_id: str, dimension: str | None = None, indexes: Sequence[int] | None = None
    ) -> list[Step]:
        """The step history of one dimension (or all, ordered by dimension then index);
        with ``indexes``, only those steps of the dimension (a cached run reads
        just the answers it waits for: constant cost, however long the history)."""

    async def load_thread(
        self, job_id: str, dimension: str, indexes: Sequence[int] | None = None
    ) -> tuple[Job | None, Thread | None, list[Step]]:
        """What a run of a thread reads, as :func:`hotmesh_core.advance.read_thread`
        does: the job (None if there is none), the hook thread (for a hook's
        dimension; None if there is none, and then no steps) and the thread's
        steps (``indexes``: only those). One call (on PostgreSQL one statement)."""

    async def insert_step(self, step: Step) -> bool:
        """Record a step unless (job, dimension, index) exists or the job was interrupted
        (an interrupted job takes no new step); return whether it was inserted."""

    async def resolve_step(
        self,
        job_id: str,
        dimension: str,
        index: int,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
        attempts: int | None = None,
    ) -> Step | None:
        """Answer a *pending* step (done, or failed when ``error``); None if it was not pending."""

    async def mark_delivered(
        self, job_id: str, dimension: str, indexes: Sequence[int], activation: int
    ) -> bool:
        """Record that the answered steps ``indexes`` reached the workflow in
        ``activation``, the thread's next: the thread's last delivered
        activation moves from ``activation - 1`` to ``activation`` (a
        compare-and-set, so two runs racing to deliver activation n cannot both
        succeed, whichever steps each delivers) and the steps get it. Returns
        False, changing nothing, when another run of the thread got there
        first, or (main thread) when an undelivered cancel request (index
        ``-1``) is not among ``indexes``: it came after this run read, and the
        next activation must deliver it. This run must give way."""

    async def advance(self, plan: Advance) -> Advanced:
        """Apply one run's commit atomically, as :func:`hotmesh_core.advance.apply_advance`
        does with this transaction's primitive calls (the reference semantics):
        answers if pending, the delivered activation's compare-and-set, values,
        a pending job made running, each dispatch's step if absent and then its
        task, the job's end with its wake-up, a run of the thread, acks.
        Raises :class:`hotmesh_core.advance.Superseded`, having changed nothing,
        when an answer was not pending or the activation had moved."""

    async def advance_many(self, plans: Sequence[Advance]) -> list[Advanced | None]:
        """Apply several runs' commits in this transaction (group commit,
        :mod:`hotmesh_core.group_commit`), each as :meth:`advance` applies it
        alone and each all-or-nothing on its own: one that would raise
        (superseded, or any other error) changes nothing and is None in the
        result, in its plan's place; the caller applies it again alone, where
        it fails or succeeds as it would have. The plans are applied in job
        order (``job_id``, then the order given), so that two groups lock
        jobs in one order. Asked only of a backend with the ``advance_many``
        capability."""

    async def note_attempt(
        self, job_id: str, dimension: str, index: int, attempts: int, error: ErrorInfo
    ) -> None:
        """Record a failed attempt on a pending step (the step stays pending)."""

    async def apply_entity(
        self, job_id: str, op: EntityOp, *, dimension: str | None, index: int | None
    ) -> tuple[Any, int]:
        """Apply an entity operation atomically; return (result, version after)."""

    async def entity_changes(self, job_id: str) -> list[EntityChange]: ...

    async def find_jobs(
        self,
        *,
        entity: str | None = None,
        where: dict[str, Any] | None = None,
        search: dict[str, Any] | None = None,
        status: str | None = None,
        workflow_name: str | None = None,
        limit: int = 100,
        order_by: str | None = None,
    ) -> list[Job]:
        """Jobs matching every given filter; ``where`` matches entity fields at dotted paths."""

    # -- entity queries, search fields, change feed (hotmesh_core.entity_query) --
    async def query_jobs(self, query: JobQuery) -> list[tuple[Job, list[Any]]]:
        """Jobs matching ``query`` in its order, after its ``after`` key, at most
        ``limit``; each with its keyset key (JSON-able, what a cursor carries)."""

    async def count_jobs(self, query: JobQuery) -> int:
        """How many jobs match ``query`` (its order, limit and ``after`` ignored)."""

    async def create_index(
        self, name: str, entity: str, path: tuple[str, ...] | None, kind: str, where: Node
    ) -> None:
        """Make index ``name`` (idempotent) serving queries on ``entity`` at ``path``
        (``kind``: btree, text or gin, see ``entity_query.INDEX_KINDS``), partial
        on ``where``, on every present and future partition; a backend without
        indexes does nothing."""

    async def set_search(self, job_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Set the job's search fields ``fields`` (others kept); return them all."""

    async def changes_after(self, job_id: str, version: int, limit: int) -> list[EntityChange]:
        """The job's entity changes with a version above ``version``, oldest first."""

    # -- entity operations applied outside the database (hotmesh_core.codec) --
    async def lock_entity(self, job_id: str) -> tuple[Any, int] | None:
        """The job's entity document and version, the job's row locked until the
        transaction ends; None if there is no such job."""

    async def write_entity(self, job_id: str, context: Any, change: EntityChange) -> None:
        """Store ``context`` as the (locked) job's document at ``change.version``
        and log ``change``: an operation applied outside the database."""

    async def expire_jobs(self) -> int:
        """Remove finished jobs whose ``expire`` has passed; return how many.

        Run by every worker about once a minute. A backend may keep an expired
        job a while longer to remove it in bulk (PostgreSQL drops a whole day's
        partition once that UTC day is over), never less than ``expire``.
        """

    # -- read-only views for people (hotmesh ui) ---------------------------------

    async def page_jobs(
        self,
        *,
        entity: str | None = None,
        status: str | None = None,
        workflow_name: str | None = None,
        parent_id: str | None = None,
        id_prefix: str | None = None,
        where: dict[str, Any] | None = None,
        created_from: float | None = None,
        created_to: float | None = None,
        before: RunCursor | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """One page of jobs, newest first (``created_at`` then ``id``, both
        descending), matching every given filter (``where``: entity fields
        equal at dotted paths, as ``find_jobs``; ``created_from`` inclusive,
        ``created_to`` exclusive). ``before`` is the cursor of the previous
        page's last job: the page starts right after it (keyset pagination,
        as fast on page 1000 as on page 1; never OFFSET)."""

    # -- worker presence ------------------------------------------------------------
    async def announce_worker(self, presence: WorkerPresence) -> None:
        """Record, or refresh, what a worker serves on its queue; ``last_seen``
        becomes now (the backend's clock)."""

    async def remove_worker(self, queue: str, worker_id: str) -> None:
        """Forget a worker that stopped."""

    async def workers(self, queue: str, *, seen_within: float) -> list[WorkerPresence]:
        """The workers of ``queue`` that announced themselves in the last
        ``seen_within`` seconds, by id."""


class Stream(Protocol):
    """Task queues with leases, delays, retries and a dead letter."""

    async def enqueue(
        self, task: Task, *, delay: float = 0.0, owner: str | None = None, lease: float = 0.0
    ) -> str | None:
        """Add a task visible after ``delay`` seconds; return its id.

        With ``owner``, the task is added already claimed by that worker under a
        lease (a worker dispatching work it will run itself); should the worker
        die, the lease runs out and anyone may claim it.  A ``run`` task is not
        added (None) when an unclaimed run of the same (job, dimension) is
        already queued: one run will see every answer.
        """

    async def claim(
        self,
        queue: str,
        *,
        owner: str,
        lease: float,
        workflow_names: Sequence[str],
        activity_names: Sequence[str],
        limit: int,
        sticky_wait: float = 0.0,
    ) -> list[Task]:
        """Lease up to ``limit`` visible tasks this worker can serve (or whose lease expired).

        A run task ``sticky`` for another worker (the part of ``owner`` before
        ``#`` names this one) is left to it until it has been visible for
        ``sticky_wait`` seconds."""

    async def extend_lease(self, task_id: str, *, owner: str, lease: float) -> bool: ...

    async def dead_letters(
        self, *, job_id: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Tasks set aside by ``dead_letter``, newest first (of one job if given)."""

    async def release_leases(self, queue: str, *, owner: str, attempted: bool = True) -> int:
        """End now every lease ``owner`` holds on ``queue``, and those of its
        claims (owners ``owner + "#" + anything``; no name holds ``#``): a
        worker restarted under the same id takes back its own work without
        waiting the leases out, and a claim whose answer was lost with its
        connection is handed back. ``attempted=False``: the work never reached
        its worker (a lost claim), so the claim's attempt is not counted.
        Returns how many tasks it released."""

    async def backlog(self, queue: str) -> list[Backlog]:
        """The ready, unleased tasks of ``queue`` by kind and name (timers left out:
        any worker fires them)."""

    async def remove_job_tasks(self, job_id: str, dimension: str | None = None) -> int:
        """Delete every task of ``job_id`` (of one ``dimension`` if given), queued or
        leased: an interrupted job (a finished generation) runs nothing more.
        Returns how many went."""

    async def queue_stats(self) -> list[QueueStats]:
        """Every queue holding tasks now, by name: ready, delayed and leased tasks
        and the workers holding the leases (read-only; for ``hotmesh ui``)."""

    async def worker_stopped(self, queue: str, worker: str) -> int:
        """``worker`` stops serving ``queue``: the run tasks sticky for it, queued now
        or woken later by steps it issued, are any worker's at once (it is
        remembered as stopped until :meth:`worker_started`). Returns how many
        queued tasks it freed."""

    async def worker_started(self, queue: str, worker: str) -> None:
        """``worker`` serves ``queue`` (again): its sticky tasks are its own first."""

    async def ack(self, task_id: str) -> bool:
        """Remove a finished task; False if it was gone already."""

    async def retry(self, task_id: str, *, delay: float, owner: str | None = None) -> None:
        """Release a task's lease and make it visible again after ``delay`` seconds;
        with ``owner``, only while ``owner`` holds it: a retry repeated after a lost
        commit then moves nothing (the task may be another worker's by now)."""

    async def dead_letter(self, task_id: str, error: ErrorInfo) -> None:
        """Move a task that can never succeed out of its queue, keeping it for inspection."""


class Signal(Protocol):
    """Signal waiters, buffered early signals, and commit-time wake-ups."""

    async def add_waiter(self, waiter: Waiter) -> None: ...

    async def take_waiter(self, signal_id: str) -> Waiter | None:
        """Remove and return the oldest waiter for ``signal_id``."""

    async def remove_waiter(self, job_id: str, dimension: str, index: int) -> None: ...

    async def remove_job_waiters(self, job_id: str) -> None: ...

    async def deliver(
        self, signal_id: str, data: Any, *, expire: float, handoff: Handoff | None = None
    ) -> bool:
        """Deliver a signal as :func:`hotmesh_core.advance.deliver_signal` does with
        this transaction's primitive calls (to the oldest live waiter, its run
        woken; else buffered); True if a waiter took it. One call (on
        PostgreSQL one statement) that serializes with waits on ``signal_id``.
        ``handoff``: its run leased to a worker of this process, if that worker
        caches it, and ``handoff`` filled in (:class:`advance.Handoff`)."""

    async def buffer(self, signal_id: str, data: Any, *, expire: float) -> None:
        """Keep a signal nobody waits for yet, for ``expire`` seconds."""

    async def take_buffered(self, signal_id: str) -> tuple[bool, Any]:
        """Remove and return the oldest unexpired buffered signal: (found, data)."""

    async def notify_queue(self, queue: str) -> None:
        """Wake idle workers of ``queue`` once this transaction commits."""

    async def notify_job(self, job_id: str) -> None:
        """Wake clients waiting on ``job_id`` once this transaction commits."""


class JobWatch(Protocol):
    async def wait(self, timeout: float) -> None:
        """Return when the watched job may have changed, or after ``timeout`` seconds."""


class Transaction(Protocol):
    @property
    def store(self) -> Store: ...

    @property
    def stream(self) -> Stream: ...

    @property
    def signal(self) -> Signal: ...


@runtime_checkable
class Backend(Protocol):
    """One configured backend instance, shared by the clients and workers of an app."""

    @property
    def name(self) -> str: ...

    @property
    def app_id(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[str]: ...

    async def open(self) -> None:
        """Connect and provision (idempotent)."""

    async def close(self) -> None: ...

    def transaction(
        self, *, readonly: bool = False, single: bool = False
    ) -> AbstractAsyncContextManager[Transaction]:
        """All-or-nothing work; ``readonly`` work only reads, so a backend may skip
        the transaction's bookkeeping (each read then sees the latest commit);
        ``single`` work is one Store/Stream/Signal call, atomic on its own (a
        claim, a lease extension), which a backend may run without a transaction."""

    def now(self) -> float:
        """The backend's current time in POSIX seconds (virtual in tests where supported)."""

    async def maintain(self) -> int:
        """One housekeeping pass, run by every worker about once a minute: remove
        finished jobs whose ``expire`` has passed (``Store.expire_jobs`` and any
        bulk removal the backend has); return how many jobs went."""

    async def wait_for_tasks(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a task may be ready on one of ``queues``, or after ``timeout``."""

    def watch_job(self, job_id: str) -> AbstractAsyncContextManager[JobWatch]:
        """Watch ``job_id``: a change committed after entering is never missed by ``wait``."""

    async def joined(self, connection: Any) -> Backend:
        """This backend, its transactions run in the caller's ``connection``
        (capability ``join_transaction``; see :mod:`hotmesh_core.transactions`)."""

    def watch_changes(self) -> AbstractAsyncContextManager[ChangeQueue]:
        """Notes of every entity change that commits after entering (see
        :mod:`hotmesh_core.changes`): the wake-ups of ``watch``."""
