"""Client operations: start jobs, get handles, signal, hook from outside, search.

``mf.workflow`` is a :class:`WorkflowClient`; a :class:`WorkflowHandle` talks
about one job.  Every value is checked for JSON *before* anything is stored.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import AsyncGenerator, Awaitable, Iterable
from typing import Any

from attrs import define, field

from .config import validate_name, validate_signal_id, validate_workflow_id
from .durations import Duration, parse_duration
from .engine import DEFAULT_SIGNAL_EXPIRE, Engine
from .entity import Change, watch_job
from .entity_query import JobQuery, check_limit, parse_where
from .errors import (
    DuplicateWorkflow,
    PermissionDenied,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowInterrupted,
    WorkflowNotFound,
)
from .in_process import LocalResults, local_results
from .interceptors import HEADERS_KEY, Interceptor, StartInput, chain, check_headers
from .models import TERMINAL_STATUSES, DeadLetter, ErrorInfo, Job
from .protocols import Backend
from .result_waiters import SAFETY_POLL, poller_for
from .serde import ensure_json, unstructure
from .transactions import joined

__all__ = ["RunSummary", "TimelineEntry", "WorkflowClient", "WorkflowExport", "WorkflowHandle"]

# The longest wait for a job's wake-up once the poll of result_waiters is the
# safety net: a waiting handle wakes every 30 s, not every second. On a virtual clock
# it stays SAFETY_POLL: waiting results drive its time skipping, and a wait
# whose wake-up was dropped (fault injection) must not hold time still.
WAKE_WAIT = 30.0

# A wait for the job's wake-up that returned before this share of its timeout
# was woken (or ended by a backend's own shorter wait): the handle looks at its
# job. One that ran out does not: the batched poll of result_waiters does.
EARLY = 0.95


@define(frozen=True)
class TimelineEntry:
    """One durable call in a job's audit timeline."""

    dimension: str
    index: int
    kind: str
    name: str
    args: Any
    status: str
    result: Any
    error: ErrorInfo | None
    attempts: int
    started_at: float
    finished_at: float | None
    # The activation that delivered the answer (None: not delivered yet): what
    # replaying an exported history (``hotmesh replay --file``) needs.
    activation: int | None = None


@define(frozen=True)
class RunSummary:
    """One job in a listing."""

    workflow_id: str
    entity: str
    workflow_name: str
    status: str
    version: int
    created_at: float
    updated_at: float


@define(frozen=True)
class WorkflowExport:
    """The full audit of a job: its steps, hooks, and every entity change with its version."""

    workflow_id: str
    entity: str
    workflow_name: str
    task_queue: str
    status: str
    args: list[Any]
    result: Any
    error: ErrorInfo | None
    context: dict[str, Any]
    version: int
    parent_id: str | None
    created_at: float
    finished_at: float | None
    timeline: list[TimelineEntry] = field(factory=list)
    entity_changes: list[dict[str, Any]] = field(factory=list)
    hooks: list[dict[str, Any]] = field(factory=list)
    # The generation shown (continue_as_new): how many came before it. Its
    # timeline is this generation's; the entity and its changes span them all.
    generation: int = 0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = unstructure(self)
        return data


class WorkflowHandle:
    """One job, by workflow id."""

    def __init__(
        self,
        backend: Backend,
        workflow_id: str,
        *,
        expect: bool = False,
        created_at: float | None = None,
        created: bool = False,
    ) -> None:
        self._backend = backend
        self._engine = Engine(backend)
        self.workflow_id = workflow_id
        # Which job of the id this handle knows (its creation time, from its
        # start or its last read): a local outcome counts only if it is that
        # job's, not an earlier job's of the id (expired, started again).
        self._created_at = created_at
        # A handle that did not create its job asks, when it first waits, for
        # the job's end to be announced (Store.get_awaited_job): the process
        # that started it may otherwise finish it quietly (in_process.py).
        self._ask_for_end = not created
        if expect:
            # Just started here: should it complete in this process before
            # result() is called, its outcome is kept for it (in_process.py),
            # for as long as this handle lives.
            results = local_results(backend)
            if results is not None:
                results.expect(workflow_id)
                weakref.finalize(self, results.release, workflow_id)

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"

    async def _job(self, *, awaiting: bool = False) -> Job:
        job = await (self._asking() if awaiting and self._ask_for_end else self._read())
        if job is None:
            raise WorkflowNotFound(f"no workflow with id {self.workflow_id!r}")
        self._created_at = job.created_at
        return job

    async def _read(self) -> Job | None:
        async with self._backend.transaction(readonly=True) as tx:
            return await tx.store.get_job(self.workflow_id)

    async def _asking(self) -> Job | None:
        """The job, read by a result() that starts to wait on a job it did not
        create, asking for its end to be announced (Store.get_awaited_job)."""
        try:
            async with self._backend.transaction(single=True) as tx:
                job = await tx.store.get_awaited_job(self.workflow_id)
        except PermissionDenied:
            # A read-only role cannot ask: it reads, and a quiet end reaches
            # it by the safety poll of result_waiters.
            self._ask_for_end = False
            return await self._read()
        self._ask_for_end = job is None
        return job

    async def status(self) -> str:
        return (await self._job()).status

    async def state(self) -> dict[str, Any]:
        """The entity document now."""
        return (await self._job()).context

    entity = state

    async def result(self, timeout: Duration | None = None) -> Any:
        """Wait for the job to finish; its return value, or the error it ended with.

        Raises ``WorkflowFailed`` or ``WorkflowInterrupted``; ``TimeoutError``
        when ``timeout`` passes first.
        """
        results = local_results(self._backend)
        if results is None:
            return await self._result(timeout, None)
        results.expect(self.workflow_id)
        try:
            return await self._result(timeout, results)
        finally:
            results.release(self.workflow_id)

    async def _result(self, timeout: Duration | None, results: LocalResults | None) -> Any:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + parse_duration(timeout)
        job_id = self.workflow_id
        if results is not None:
            # Completed in this process (in_process.py): its outcome, no read.
            here, value = results.take(job_id, self._created_at)
            if here:
                return value
        async with self._backend.watch_job(job_id) as watch:
            job = await self._job(awaiting=True)
            if job.status in TERMINAL_STATUSES:
                return _outcome(job)
            ended = None if results is None else results.ended(job_id)
            # Woken by the backend when the job changes. Most results come
            # within a poll interval: that first wait costs nothing more.
            remaining = SAFETY_POLL if deadline is None else deadline - loop.time()
            if remaining > 0:
                await _first(watch.wait(min(remaining, SAFETY_POLL)), ended)
                if results is not None:
                    here, value = results.take(job_id, self._created_at)
                    if here:
                        return value
                job = await self._job()
                if job.status in TERMINAL_STATUSES:
                    return _outcome(job)
            # A longer wait: the safety net for a lost wake-up is the backend's
            # one batched poll of every waiting handle (result_waiters), not a
            # re-read of this job every second.
            longest = SAFETY_POLL if _virtual_time(self._backend) else WAKE_WAIT
            with poller_for(self._backend).waiting(job_id) as waiter:
                while True:
                    remaining = longest if deadline is None else deadline - loop.time()
                    if remaining <= 0:
                        job = await self._job()  # a last look before giving up
                        if job.status in TERMINAL_STATUSES:
                            return _outcome(job)
                        raise TimeoutError(f"workflow {job_id!r} did not finish within {timeout}")
                    # One that runs out reads nothing: the poll looks instead.
                    wait = min(remaining, longest)
                    began = loop.time()
                    watching = asyncio.ensure_future(watch.wait(wait))
                    waits: set[asyncio.Future[Any]] = {watching, waiter.polled}
                    if results is not None:
                        ended = results.ended(job_id)
                        if ended is not None:
                            waits.add(ended)
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        watching.cancel()  # not awaited: a cancel of result() must stay one
                    if watching.done() and not watching.cancelled():
                        watching.result()  # a failed wait raises, as it did unbatched
                    if results is not None:
                        here, value = results.take(job_id, self._created_at)
                        if here:
                            return value
                    polled = waiter.polled
                    if polled.done() and not polled.cancelled():
                        job = polled.result() or await self._job()  # None: gone, raises
                    elif loop.time() - began < wait * EARLY:
                        job = await self._job()  # returned early: woken, so look
                    else:
                        continue  # ran out: the poll looks for this handle
                    if job.status in TERMINAL_STATUSES:
                        return _outcome(job)

    def watch(self, since_version: int | None = None) -> AsyncGenerator[Change, None]:
        """``async for change in handle.watch()``: the entity's changes as they
        commit, each once, in version order; after ``since_version`` (resume
        from the last version you saw), or from now when None."""
        return watch_job(self._backend, self.workflow_id, since_version)

    async def cancel(self, reason: str | None = None) -> bool:
        """Ask the job to stop, cooperatively: ``asyncio.CancelledError`` is raised
        at the workflow's current await (or when its ``workflow.non_cancellable()``
        scope ends), so it can clean up and finish. Its running children are
        asked too. ``result()`` raises ``WorkflowCancelled`` if the workflow lets
        the error end it; a workflow that catches it may still complete. Returns
        False if the job had already finished. ``interrupt()`` is the hard stop."""
        return await self._engine.request_cancel(self.workflow_id, reason)

    async def resume(self) -> None:
        """Carry on a failed job with the code deployed now: after a fix for a
        ``NonDeterminismError``, an activity that failed for good, or a task that
        was dead-lettered. The job goes back to running; its last activation is
        redone by a replay of its history under the current code: the activity
        that failed is run again (with the retry policy the code gives now),
        activities still out are dispatched again, waits wait again (with their
        timeouts from now), sleeps keep their due time. The entity keeps every
        change made. ``NotResumable`` unless the job is failed."""
        await self._engine.resume(self.workflow_id)

    async def interrupt(self, reason: str | None = None) -> bool:
        """Cancel the job and its children; return False if it had already finished."""
        return await self._engine.interrupt(self.workflow_id, reason)

    async def export(self) -> WorkflowExport:
        async with self._backend.transaction(readonly=True) as tx:
            job = await tx.store.get_job(self.workflow_id)
            if job is None:
                raise WorkflowNotFound(f"no workflow with id {self.workflow_id!r}")
            steps = await tx.store.load_steps(self.workflow_id)
            changes = await tx.store.entity_changes(self.workflow_id)
            threads = await tx.store.threads(self.workflow_id)
        timeline = [
            TimelineEntry(
                s.dimension,
                s.index,
                s.kind,
                s.name,
                s.args,
                s.status,
                s.result,
                s.error,
                s.attempts,
                s.started_at,
                s.finished_at,
                s.activation,
            )
            for s in sorted(steps, key=lambda s: (s.started_at, s.dimension, s.index))
        ]
        return WorkflowExport(
            workflow_id=job.id,
            entity=job.entity,
            workflow_name=job.workflow_name,
            task_queue=job.task_queue,
            status=job.status,
            args=job.args,
            result=job.result,
            error=job.error,
            context=job.context,
            version=job.version,
            parent_id=job.parent_id,
            created_at=job.created_at,
            finished_at=job.finished_at,
            timeline=timeline,
            entity_changes=[unstructure(c) for c in changes],
            hooks=[unstructure(t) for t in threads],
            generation=job.generation,
        )


async def _first(wait: Awaitable[None], ended: asyncio.Future[Any] | None) -> None:
    """``wait``, or less if ``ended`` (a local outcome) comes first."""
    if ended is None:
        await wait
        return
    waiting = asyncio.ensure_future(wait)
    try:
        await asyncio.wait((waiting, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    if waiting.done() and not waiting.cancelled():
        waiting.result()


def _virtual_time(backend: Backend) -> bool:
    clock = getattr(backend, "clock", None)  # the memory backend's (wrappers pass it on)
    return bool(getattr(clock, "virtual", False))


def _outcome(job: Job) -> Any:
    if job.status == "completed":
        return job.result
    error = job.error or ErrorInfo("HotMeshError", f"workflow {job.id!r} {job.status}")
    if job.status == "interrupted":
        raise WorkflowInterrupted(error.message, traceback=error.traceback)
    if job.status == "cancelled":
        raise WorkflowCancelled(error.message, traceback=error.traceback)
    raise WorkflowFailed(error.message, type_name=error.type_name, traceback=error.traceback)


class WorkflowClient:
    """``mf.workflow``: start, find and talk to jobs."""

    def __init__(self, backend: Backend, interceptors: Iterable[Interceptor] = ()) -> None:
        self._backend = backend
        self._engine = Engine(backend)
        self.interceptors = list(interceptors)  # their start_workflow hooks (interceptors.py)

    async def start(
        self,
        entity: str,
        workflow_name: str,
        workflow_id: str | None = None,
        args: Iterable[Any] | None = None,
        task_queue: str = "default",
        search: dict[str, Any] | None = None,
        expire: Duration | None = None,
        *,
        persistent: bool = False,
        strict: bool = False,
        connection: Any = None,
        headers: dict[str, str] | None = None,
    ) -> WorkflowHandle:
        """Create the job and its entity and enqueue its first run.

        Starting an id that exists returns a handle to that job (idempotent);
        with ``strict=True`` it raises ``DuplicateWorkflow`` instead.
        ``connection``: your SQLAlchemy session/connection or psycopg connection,
        in a transaction: the job is created in it and exists only if you commit
        (:mod:`hotmesh_core.transactions`).
        ``headers``: strings that travel with the job to its runs, hooks,
        activities (``activity.info().headers``) and children
        (:mod:`hotmesh_core.interceptors`).
        """
        if workflow_id is None:  # only None means "pick one": "" is refused, not replaced
            workflow_id = f"{entity}-{uuid.uuid4().hex}"
        job = Job(
            id=validate_workflow_id(workflow_id),
            entity=validate_name(entity, "entity"),
            workflow_name=validate_name(workflow_name, "workflow_name"),
            task_queue=validate_name(task_queue, "task_queue"),
            args=ensure_json(list(args or []), what="workflow arguments"),
            search=ensure_json(dict(search or {}), what="search"),
            expire=None if expire is None else parse_duration(expire),
            persistent=persistent,
        )
        starting = StartInput(
            job.id, job.workflow_name, job.entity, job.task_queue, dict(headers or {})
        )

        stored: list[Job] = []

        async def proceed() -> bool:
            if starting.headers:
                job.search[HEADERS_KEY] = check_headers(starting.headers, f"starting {job.id!r}")
            if connection is not None:  # it may never commit: no eager start
                _stored, created = await Engine(await joined(self._backend, connection)).start_job(
                    job
                )
            else:
                _stored, created = await self._engine.start_job(job, eager=True)
            stored[:] = [_stored]
            return created

        created = await chain(self.interceptors, "start_workflow", starting, proceed)
        if strict and not created:
            raise DuplicateWorkflow(f"a workflow with id {job.id!r} already exists")
        return WorkflowHandle(
            self._backend,
            job.id,
            expect=connection is None,
            created_at=stored[0].created_at if stored and connection is None else None,
            created=created,
        )

    async def get_handle(self, workflow_id: str) -> WorkflowHandle:
        """A handle to an existing job; ``WorkflowNotFound`` if there is none."""
        handle = WorkflowHandle(self._backend, validate_workflow_id(workflow_id))
        await handle.status()
        return handle

    async def signal(
        self,
        signal_id: str,
        data: Any = None,
        *,
        expire: Duration | None = None,
        connection: Any = None,
    ) -> bool:
        """Deliver a signal; True if a waiter took it, False if it was kept for later.
        With ``connection``, in your transaction (delivered only if you commit)."""
        validate_signal_id(signal_id)
        payload = ensure_json(data, what="signal data")
        keep = DEFAULT_SIGNAL_EXPIRE if expire is None else parse_duration(expire)
        if connection is not None:  # it may never commit: nothing handed over
            engine = Engine(await joined(self._backend, connection))
            return await engine.send_signal(signal_id, payload, keep)
        return await self._engine.send_signal(signal_id, payload, keep, hand_over=True)

    async def hook(
        self,
        workflow_id: str,
        task_queue: str,
        workflow_name: str,
        args: Iterable[Any] | None = None,
    ) -> str:
        """Run hook ``workflow_name`` against the job's entity; return the hook id."""
        return await self._engine.start_outside_hook(
            validate_workflow_id(workflow_id),
            validate_name(task_queue, "task_queue"),
            validate_name(workflow_name, "workflow_name"),
            ensure_json(list(args or []), what="hook arguments"),
        )

    async def list_runs(
        self,
        *,
        entity: str | None = None,
        status: str | None = None,
        workflow_name: str | None = None,
        limit: int = 50,
    ) -> list[RunSummary]:
        """Jobs, newest first, filtered by entity type, status and workflow name."""
        jobs = await self._find(
            entity=entity,
            status=status,
            workflow_name=workflow_name,
            limit=limit,
            order_by="-created_at",
        )
        return [
            RunSummary(
                j.id, j.entity, j.workflow_name, j.status, j.version, j.created_at, j.updated_at
            )
            for j in jobs
        ]

    async def search(
        self,
        where: dict[str, Any] | None = None,
        *,
        entity: str | None = None,
        status: str | None = None,
        workflow_name: str | None = None,
        limit: int = 100,
    ) -> list[str]:
        """Ids of jobs whose ``search`` fields (given at start, or set by the run
        with ``workflow.search().set``) match ``where``, in the query language of
        ``mf.entity.find`` (:mod:`hotmesh_core.entity_query`), oldest first."""
        query = JobQuery(
            where=parse_where(where),
            entity=entity,
            target="search",
            limit=check_limit(limit),
            status=status,
            workflow_name=workflow_name,
        )
        async with self._backend.transaction(readonly=True) as tx:
            found = await tx.store.query_jobs(query)
        return [job.id for job, _key in found]

    async def dead_letters(
        self, workflow_id: str | None = None, *, limit: int = 100
    ) -> list[DeadLetter]:
        """Tasks set aside after the engine failed on them too often (their jobs
        failed with ``TaskDeadLettered``), newest first; kept 30 days."""
        if workflow_id is not None:
            validate_workflow_id(workflow_id)
        async with self._backend.transaction(readonly=True) as tx:
            return await tx.stream.dead_letters(job_id=workflow_id, limit=limit)

    async def _find(self, **filters: Any) -> list[Job]:
        async with self._backend.transaction(readonly=True) as tx:
            return await tx.store.find_jobs(**filters)
