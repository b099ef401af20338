"""Every state transition of a job, each one transaction against the backend.

The engine is the only place that decides *what* happens when a command is
issued or answered; a backend only stores.  Each public coroutine here opens
exactly one transaction, so a completion and the enqueue it causes, a signal
and the wake-up of its waiter, an entity change and its step record commit
together or not at all.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from attrs import define, field

from .advance import (
    Advance,
    Answer,
    Dispatch,
    Finish,
    Handoff,
    Superseded,
    apply_dispatch,
    follow_dispatch,
    wake_task,
)
from .entity_query import SEARCH_SET
from .errors import (
    BackendUnavailable,
    DuplicateWorkflow,
    HotMeshError,
    NotResumable,
    SerializationError,
    WorkflowClosed,
    WorkflowNotFound,
)
from .group_commit import GroupCommit, commit_alone
from .in_process import eager_taker, local_results, signal_taker
from .interceptors import HEADERS_KEY, job_headers
from .models import (
    MAIN_THREAD,
    TERMINAL_STATUSES,
    EntityOp,
    ErrorInfo,
    Job,
    Step,
    Task,
    Thread,
)
from .protocols import Backend, Transaction
from .records import revise
from .replay import (
    CANCEL_INDEX,
    Command,
    InlineFailed,
    Run,
    RunAborted,
    RunOutcome,
    error_info,
    exception_for,
    storable_text,
)

log = logging.getLogger("hotmesh.engine")

__all__ = ["Engine", "RunContext", "Superseded"]

#: A sleep's timer payload key: its worker armed it in process, and its row came
#: due a grace later (Engine.armed_grace).
ARMED = "armed"
PLAIN_COMMANDS = frozenset({"activity", "sleep", "wait"})  # what Store.advance dispatches

DEFAULT_SIGNAL_EXPIRE = 86400.0  # a kept signal lives one day by default


@define(frozen=True)
class LocalWorker:
    """A worker that runs the activities it can serve itself, right after dispatching them."""

    owner: str
    lease: float
    task_queue: str
    activity_names: frozenset[str]
    # Its commits, grouped when they overlap (group_commit.py): its own only.
    commits: GroupCommit = field(factory=GroupCommit, eq=False, repr=False, kw_only=True)

    def serves(self, task: Task) -> bool:
        return task.queue == self.task_queue and task.name in self.activity_names


def _run_task(
    queue: str, job_id: str, dimension: str, name: str, sticky: str | None = None
) -> Task:
    return Task(
        queue=queue, kind="run", job_id=job_id, dimension=dimension, name=name, sticky=sticky
    )


class RunContext:
    """What a run needs, read in one transaction: the job, its hook thread, its history."""

    def __init__(self, job: Job, thread: Thread | None, history: list[Step]) -> None:
        self.job = job
        self.thread = thread
        self.history = history


class Engine:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Told of every sleep's timer this engine dispatched (the worker arms
        # it in-process: see Worker._arm_timer); None: the stored row only.
        self.timer_armed: Callable[[Task, float], None] | None = None
        # How much later than its due time the row of a sleep armed in-process
        # becomes visible: the armed timer answers it at the due time, and the
        # row, the way forward after a crash, is nobody's to claim before then
        # (claims racing the armed timer made W4's late tail).
        self.armed_grace = 0.0

    # -- jobs ----------------------------------------------------------------
    async def start_job(self, job: Job, eager: bool = False) -> tuple[Job, bool]:
        """Create ``job`` with its first run: one call (create_job with its run), a
        single statement, no BEGIN/COMMIT. ``eager``: a worker of this process
        that serves it and has a slot free gets the run leased and handed over
        (:mod:`hotmesh_core.in_process`)."""
        taking = eager_taker(self.backend, job.task_queue, job.workflow_name) if eager else None
        if taking is None:
            async with self.backend.transaction(single=True) as tx:
                stored, created = await self._create_job(tx, job)
            return stored, created
        taker, owner = taking
        run = _run_task(job.task_queue, job.id, MAIN_THREAD, job.workflow_name)
        started: Job | None = None
        try:
            async with self.backend.transaction(single=True) as tx:
                stored, created = await tx.store.create_job(
                    job, run=run, owner=owner, lease=taker.lease
                )
            if created:
                started = stored
                results = local_results(self.backend)
                if results is not None:  # its end is heard here (in_process.py)
                    results.started_eagerly(stored.id, stored.created_at)
            return stored, created
        finally:
            # Handed over, or (not created, or the commit's answer lost) the
            # owner's leases handed back, should a lost commit have made one.
            taker.take_started(owner, started, run)

    async def interrupt(self, job_id: str, reason: str | None) -> bool:
        message = reason or f"workflow {job_id!r} was interrupted"
        async with self.backend.transaction() as tx:
            if await tx.store.get_job(job_id) is None:
                raise WorkflowNotFound(f"no workflow with id {job_id!r}")
            return await self._interrupt(tx, job_id, ErrorInfo("WorkflowInterrupted", message))

    async def request_cancel(self, job_id: str, reason: str | None) -> bool:
        """Ask a job to stop (cooperatively), and its running children with it."""
        if reason is not None:
            if not isinstance(reason, str):
                raise SerializationError(
                    f"a cancel reason is text (or None), not {type(reason).__name__}"
                )
            reason = storable_text(reason)  # NUL and lone surrogates, escaped
        async with self.backend.transaction() as tx:
            # The job's row first, as every transition of the job: a
            # continue_as_new committing meanwhile carries the request over.
            await tx.store.lock_job(job_id)
            job = await tx.store.get_job(job_id)
            if job is None:
                raise WorkflowNotFound(f"no workflow with id {job_id!r}")
            return await self._request_cancel(tx, job, reason)

    async def _request_cancel(self, tx: Transaction, job: Job, reason: str | None) -> bool:
        """Record the request as the main thread's cancel step (answered, so the next
        run delivers it in an activation) and wake the job. False if the job had
        finished; a second request changes nothing."""
        if job.status in TERMINAL_STATUSES:
            return False
        request = Step(
            job_id=job.id,
            dimension=MAIN_THREAD,
            index=CANCEL_INDEX,
            kind="cancel",
            name="cancel",
            args={"reason": reason},
            status="done",
            result=reason,
            wake_queue=job.task_queue,
            wake_name=job.workflow_name,
        )
        if await tx.store.insert_step(request):
            await self._wake(tx, request)
            # Children are asked too, each to clean up on its own terms; a
            # parent awaiting one gets its CancelledError there at once.
            for child_id in await tx.store.active_children(job.id):
                await tx.store.lock_job(child_id)  # parent, then child: as interrupt
                child = await tx.store.get_job(child_id)
                if child is not None:
                    await self._request_cancel(
                        tx, child, f"parent workflow {job.id!r} was cancelled"
                    )
        return True

    async def resume(self, job_id: str) -> Job:
        """Reopen a failed job so that the current code carries it on (see
        ``WorkflowHandle.resume``); one transaction."""
        async with self.backend.transaction() as tx:
            job = await tx.store.get_job(job_id)
            if job is None:
                raise WorkflowNotFound(f"no workflow with id {job_id!r}")
            if job.status != "failed":
                raise NotResumable(
                    f"workflow {job_id!r} is {job.status}: only a failed workflow resumes"
                )
            steps = await tx.store.load_steps(job_id, MAIN_THREAD)
            last = job.activation
            # An activity failure delivered in the last activation ended the
            # job, unless replay disagreed first or a task of the engine's was
            # set aside (an activity failure then was caught, and is kept).
            activity_ended_it = job.error is None or job.error.type_name not in (
                "NonDeterminismError",
                "TaskDeadLettered",
            )
            # Issued again by the replay, with the current code's options: the
            # activity whose failure ended the job, activities that were still
            # out (their tasks go; at least once, as after a lost lease), and
            # waits (their waiters went when the job failed).
            again = [
                step.index
                for step in steps
                if (step.kind == "activity" and step.status == "pending")
                or (
                    step.kind == "activity"
                    and step.status == "failed"
                    and activity_ended_it
                    and last > 0
                    and step.activation == last
                )
                or (step.kind == "wait" and step.status == "pending")
                or (
                    step.kind == "wait"
                    and step.status == "failed"
                    and step.activation is None
                    and step.error is not None
                    and step.error.type_name == "CancelledError"
                )
            ]
            reopened = await tx.store.reopen_job(job_id, activation=last, delete=again)
            if reopened is None:
                raise NotResumable(f"workflow {job_id!r} changed while it was being resumed")
            await tx.stream.remove_job_tasks(job_id, MAIN_THREAD)
            now = self.backend.now()
            for step in steps:
                if step.kind == "sleep" and step.status == "pending":
                    # A sleep keeps its due time.
                    due = step.started_at + _sleep_seconds(step)
                    await tx.stream.enqueue(
                        Task(
                            queue=job.task_queue,
                            kind="timer",
                            job_id=job_id,
                            dimension=MAIN_THREAD,
                            name=job.workflow_name,
                            index=step.index,
                        ),
                        delay=max(due - now, 0.0),
                    )
            await tx.stream.enqueue(
                _run_task(job.task_queue, job_id, MAIN_THREAD, job.workflow_name)
            )
            await tx.signal.notify_job(job_id)
        return reopened

    async def _interrupt(self, tx: Transaction, job_id: str, error: ErrorInfo) -> bool:
        job = await tx.store.set_job_status(job_id, "interrupted", error=error)
        if job is None:
            return False
        # Nothing of an interrupted job runs any more: not its queued activities,
        # timers and runs, nor an activity whose lease runs out mid-interrupt.
        await tx.stream.remove_job_tasks(job_id)
        await tx.signal.remove_job_waiters(job_id)
        await tx.signal.notify_job(job_id)
        for child_id in await tx.store.active_children(job_id):
            await self._interrupt(
                tx,
                child_id,
                ErrorInfo("WorkflowInterrupted", f"parent workflow {job_id!r} was interrupted"),
            )
        await self._answer_parent(tx, job, error=error)
        return True

    async def _answer_parent(
        self, tx: Transaction, job: Job, *, result: Any = None, error: ErrorInfo | None = None
    ) -> None:
        if job.parent_id is None or job.parent_index is None:
            return
        step = await tx.store.resolve_step(
            job.parent_id,
            job.parent_dimension or MAIN_THREAD,
            job.parent_index,
            result=result,
            error=error,
        )
        if step is not None:
            await self._wake(tx, step)

    async def _wake(self, tx: Transaction, step: Step) -> None:
        await tx.stream.enqueue(wake_task(step))

    # -- signals and hooks ---------------------------------------------------
    async def send_signal(
        self, signal_id: str, data: Any, expire: float, hand_over: bool = False
    ) -> bool:
        """Deliver a signal in one call. ``hand_over``: should the run it wakes be
        cached by a worker of this process, that worker gets its run task leased
        and resumes it at once (:mod:`hotmesh_core.in_process`)."""
        taking = signal_taker(self.backend) if hand_over else None
        if taking is None:
            async with self.backend.transaction(single=True) as tx:
                return await self._deliver(tx, signal_id, data, expire)
        taker, owner = taking
        handoff = Handoff(taker.id, owner, taker.lease)
        handed: Handoff | None = None
        lost = True
        try:
            async with self.backend.transaction(single=True) as tx:
                taken = await tx.signal.deliver(signal_id, data, expire=expire, handoff=handoff)
            lost = False
            if handoff.run_id is not None:
                handed = handoff
            return taken
        finally:
            taker.take_signalled(owner, handed, data, lost=lost)

    async def _deliver(self, tx: Transaction, signal_id: str, data: Any, expire: float) -> bool:
        """To the oldest live waiter, exactly once; else kept for the first one to come."""
        return await tx.signal.deliver(signal_id, data, expire=expire)

    async def start_outside_hook(
        self, workflow_id: str, task_queue: str, workflow_name: str, args: list[Any]
    ) -> str:
        dimension = f"hook-{uuid.uuid4().hex}"
        async with self.backend.transaction() as tx:
            job = await tx.store.get_job(workflow_id)
            if job is None:
                raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
            await self._start_hook(tx, job, dimension, workflow_name, task_queue, args, None)
        return dimension

    async def _start_hook(
        self,
        tx: Transaction,
        job: Job,
        dimension: str,
        workflow_name: str,
        task_queue: str,
        args: list[Any],
        signal_id: str | None,
    ) -> None:
        if job.status in TERMINAL_STATUSES and not job.persistent:
            raise WorkflowClosed(
                f"workflow {job.id!r} is {job.status}; hooks need a running job "
                "(or one started with persistent=True)"
            )
        thread = Thread(
            job_id=job.id,
            dimension=dimension,
            workflow_name=workflow_name,
            task_queue=task_queue,
            args=args,
            signal_id=signal_id,
        )
        if await tx.store.create_thread(thread):
            await tx.stream.enqueue(_run_task(task_queue, job.id, dimension, workflow_name))

    async def _start_command_hook(
        self, tx: Transaction, run: Run, command: Command, signal_id: str | None
    ) -> None:
        """Start the hook a workflow's ``hook``/``exec_hook`` command asks for."""
        job = await tx.store.get_job(run.job.id)
        assert job is not None
        options = command.options
        await self._start_hook(
            tx,
            job,
            options["dimension"],
            command.name,
            options["task_queue"],
            command.args,
            signal_id,
        )

    async def _create_job(self, tx: Transaction, job: Job) -> tuple[Job, bool]:
        """Create a job unless its id exists; a new job's first run is enqueued with it."""
        run = _run_task(job.task_queue, job.id, MAIN_THREAD, job.workflow_name)
        return await tx.store.create_job(job, run=run)

    # -- runs ------------------------------------------------------------------
    async def load_run(self, task: Task, indexes: list[int] | None = None) -> RunContext | None:
        """The job, its hook thread and the thread's history; with ``indexes``, only
        those steps (what a cached run waits for)."""
        async with self.backend.transaction(readonly=True) as tx:
            job, thread, history = await tx.store.load_thread(task.job_id, task.dimension, indexes)
        if job is None or (task.dimension != MAIN_THREAD and thread is None):
            return None
        return RunContext(job, thread, history)

    async def execute_inline(self, run: Run, command: Command) -> Any:
        """Execute an inline command in one transaction with its step record (and
        the run's pending values and deliveries).

        An error that is the command's *outcome* (an entity path that does not
        hold, a hook on a closed job) is recorded as the step's failure, so a
        replay raises the very same error there, and raised as
        :class:`InlineFailed`. A lost connection is not an outcome: it is raised
        as it is, the run is abandoned, and its task is run again once the
        database is back; nothing of it was recorded.
        """
        values = run.take_values()
        marks = run.take_marks()
        try:
            async with self.backend.transaction() as tx:
                await tx.store.lock_job(run.job.id)
                await self._record_progress(tx, run, values, marks)
                if not await tx.store.insert_step(command.step(run)):
                    return await self._recorded(tx, run, command.index)
                result = await self._apply_inline(tx, run, command)
                await tx.store.resolve_step(run.job.id, run.dimension, command.index, result=result)
                return result
        except (BackendUnavailable, RunAborted):
            raise
        except HotMeshError as exc:
            failed = revise(command.step(run), status="failed", error=error_info(exc))
            async with self.backend.transaction() as tx:
                await tx.store.lock_job(run.job.id)
                await self._record_progress(tx, run, values, marks)
                await tx.store.insert_step(failed)
            raise InlineFailed(exc) from exc

    async def _record_progress(
        self,
        tx: Transaction,
        run: Run,
        values: list[Step],
        marks: tuple[int, list[int]] | None,
    ) -> None:
        """What a run learnt before its first durable effect rides with it: the
        values it drew and the answers its live activation delivered."""
        for value in values:
            await tx.store.insert_step(value)
        if marks is not None:
            activation, indexes = marks
            if not await tx.store.mark_delivered(run.job.id, run.dimension, indexes, activation):
                raise Superseded(
                    f"another run of {run.job.id!r} ({run.dimension or 'main'}) delivered"
                    f" answers of activation {activation} first"
                )
            if run.handed_on:
                # Not to another wait of this run that was cancelled too.
                for index in run.abandoned_waits(ended=False):
                    await self._abandon_wait(tx, run, index)
                handed_on, run.handed_on = run.handed_on, []
                for signal_id, data in handed_on:
                    await self._deliver(tx, signal_id, data, DEFAULT_SIGNAL_EXPIRE)

    async def _recorded(self, tx: Transaction, run: Run, index: int) -> Any:
        for step in await tx.store.load_steps(run.job.id, run.dimension, [index]):
            if step.status == "failed":
                raise InlineFailed(exception_for(step))
            return step.result
        return None

    async def _apply_inline(self, tx: Transaction, run: Run, command: Command) -> Any:
        options = command.options
        if command.kind == "entity" and command.name == SEARCH_SET:  # workflow.search().set
            return await tx.store.set_search(run.job.id, options["value"])
        if command.kind == "entity":
            op = EntityOp(op=command.name, path=options.get("path"), value=options.get("value"))
            result, _version = await tx.store.apply_entity(
                run.job.id, op, dimension=run.dimension, index=command.index
            )
            return result
        if command.kind == "signal":
            await self._deliver(tx, options["signal_id"], options["data"], options["expire"])
            return None
        if command.kind == "start_child":
            child = self._child_job(run, command, awaited=False)
            stored, _created = await self._create_job(tx, child)
            return stored.id
        if command.kind == "hook":
            await self._start_command_hook(tx, run, command, None)
            return options["dimension"]
        raise HotMeshError(f"unknown inline command {command.kind!r}")

    def _child_job(self, run: Run, command: Command, *, awaited: bool) -> Job:
        options = command.options
        return Job(
            id=options["workflow_id"],
            entity=options["entity"],
            workflow_name=command.name,
            task_queue=options["task_queue"],
            args=command.args,
            parent_id=run.job.id,
            parent_dimension=run.dimension if awaited else None,
            parent_index=command.index if awaited else None,
            expire=options.get("expire"),
            persistent=options.get("persistent", False),
            search=_child_search(run, command),
        )

    async def finish_run(
        self, task: Task, run: Run, outcome: RunOutcome, local: LocalWorker | None = None
    ) -> list[Task]:
        """Commit a run's outcome and ack its task; return the activity tasks leased to
        ``local`` (activities the finishing worker will run itself)."""
        marks = run.take_marks()
        plan = self._plan(run, outcome, marks, local)
        if plan is not None:
            plan.acks.append(task.id)
            return await self._advance(run, plan, outcome, local)
        async with self.backend.transaction() as tx:
            await tx.store.lock_job(run.job.id)
            await self._record_progress(tx, run, [], marks)
            leased = await self._apply_outcome(tx, run, outcome, local)
            await tx.stream.ack(task.id)
        return leased

    async def continue_inline(
        self,
        run: Run,
        answers: list[tuple[Task, Any, ErrorInfo | None]],
        outcome: RunOutcome,
        local: LocalWorker,
        run_task: Task | None = None,
    ) -> list[Task]:
        """Record inline-run activities and the run they led to, in one transaction.

        ``run`` replayed the workflow with the ``answers`` of activities its
        worker ran itself.  Their results, the acks of their tasks and what the
        run did next (new commands, or the job's end) commit together: one
        commit per step.  If any answer was recorded by someone else meanwhile
        (a lease ran out), nothing is written and :class:`Superseded` is raised.
        ``run_task`` is the run task :meth:`record_answers` leased, acked here.
        """
        marks = run.take_marks()
        # Other steps were pending: one may have been answered while this
        # worker ran its activities, by a run that could not see them.
        # A fresh run sees both (the queue holds at most one such run).
        waiting = {c.index for c in outcome.commands}
        wake = outcome.status == "suspended" and any(index not in waiting for index in run.awaiting)
        plan = self._plan(run, outcome, marks, local)
        if plan is not None:
            plan.answers = [
                Answer(task.id, _index(task), result, error, _attempts(task))
                for task, result, error in answers
            ]
            if wake:
                plan.wake = wake_task(Command(0, "", "").step(run))
            if run_task is not None:
                plan.acks.append(run_task.id)
            return await self._advance(run, plan, outcome, local)
        async with self.backend.transaction() as tx:
            await tx.store.lock_job(run.job.id)
            await self._record_answers(tx, answers)
            await self._record_progress(tx, run, [], marks)
            # An interrupted job takes no new step, so nothing more is dispatched.
            leased = await self._apply_outcome(tx, run, outcome, local)
            if wake:
                await self._wake(tx, Command(0, "", "").step(run))
            if run_task is not None:
                await tx.stream.ack(run_task.id)
        return leased

    def deferrable(self, run: Run, outcome: RunOutcome, local: LocalWorker) -> Advance | None:
        """The run's commit, when its worker may run the inline activities it
        dispatches *before* committing anything, and commit the run, their
        steps and what the resumed run did next together (Worker._run_deferred):
        a plain plan that delivered nothing (a job's first run), whose every
        dispatch is an activity leased to ``local``. Until then the run task's
        lease is the job's way forward: a crash runs the run (and, at least
        once, the activities) again."""
        if outcome.status != "suspended" or run.peek_marks() is not None:
            return None
        plan = self._plan(run, outcome, None, local)
        if plan is None or not _all_inline_activities(plan, local):
            return None
        return plan

    async def hold_deferred(
        self,
        run: Run,
        first: Advance,
        steps: list[Step],
        outcome: RunOutcome,
        local: LocalWorker,
    ) -> Advance | None:
        """Commit a deferred step (``first``'s own writes and the ``steps`` its
        activities took) and its delivery to the resumed run, *keeping* the run
        task leased, when what the run did next (``outcome``) may be deferred
        as well: every new command an inline activity for ``local``, and
        nothing else awaited. Returns that next step's plan (not committed:
        its activities run under the run task's lease, as the first step's
        did, and no task row is written for them); None, committing nothing,
        when the run must go on the ordinary way (:meth:`continue_deferred`).

        One commit per step, as the ordinary chain takes, without the task
        each inline activity inserted and deleted there; should this worker
        die, the run task's lease runs out and the run is replayed from the
        steps committed so far (the activity then running again, at least
        once, as a lapsed activity task's does)."""
        if outcome.status != "suspended":
            return None
        waiting = {c.index for c in outcome.commands}
        if any(index not in waiting for index in run.awaiting):
            return None  # another step is pending: its answer would need a wake-up
        plan = self._plan(run, outcome, run.peek_marks(), local)
        if plan is None or not _all_inline_activities(plan, local):
            return None
        run.take_marks()
        following = revise(plan, delivered=None, values=[], running=False)
        plan.recorded = [*first.values, *steps]
        plan.running = plan.running or first.running
        plan.dispatches = []
        await local.commits.commit(self.backend, plan)
        if plan.running:
            run.job.status = "running"
        outcome.values = []  # committed: an ordinary commit of the outcome must not repeat them
        return following

    async def record_deferred(
        self, run: Run, first: Advance, steps: list[Step], local: LocalWorker
    ) -> None:
        """Commit a deferred run's own writes and its activities' steps (before a
        durable side effect of the run resumed with them); its run task stays
        leased, the way forward until the continuation commits and acks it."""
        # The run's values before its activities' steps: the order it took them in.
        plan = revise(first, dispatches=[], recorded=[*first.values, *steps], values=[], acks=[])
        await local.commits.commit(self.backend, plan)
        if plan.running:
            run.job.status = "running"

    async def continue_deferred(
        self,
        task: Task,
        run: Run,
        first: Advance,
        steps: list[Step],
        outcome: RunOutcome,
        local: LocalWorker,
    ) -> list[Task]:
        """Commit a deferred run (``first``), the steps of the activities it ran
        before committing, their delivery to the resumed run and what that did
        next: one call, where the ordinary way takes two."""
        if self._plan(run, outcome, run.peek_marks(), local) is None:
            await self.record_deferred(run, first, steps, local)
            return await self.continue_inline(run, [], outcome, local, task)
        waiting = {c.index for c in outcome.commands}
        wake = outcome.status == "suspended" and any(index not in waiting for index in run.awaiting)
        plan = self._plan(run, outcome, run.take_marks(), local)
        assert plan is not None
        # The first run's values, its activities' steps, then the resumed run's
        # values: the timeline in the order the workflow took them.
        plan.recorded = [*first.values, *steps]
        plan.running = plan.running or first.running
        if wake:
            plan.wake = wake_task(Command(0, "", "").step(run))
        plan.acks.append(task.id)
        return await self._advance(run, plan, outcome, local)

    def _plan(
        self,
        run: Run,
        outcome: RunOutcome,
        marks: tuple[int, list[int]] | None,
        local: LocalWorker | None,
    ) -> Advance | None:
        """The run's commit as one :class:`Advance`, when it is plain (see
        :mod:`hotmesh_core.advance`); None when it needs the general path."""
        if (marks is not None and run.handed_on) or outcome.abandoned:
            return None
        plan = Advance(run.job.id, run.dimension, delivered=marks, values=list(outcome.values))
        if outcome.status == "suspended":
            if any(command.kind not in PLAIN_COMMANDS for command in outcome.commands):
                return None
            plan.running = run.dimension == MAIN_THREAD and run.job.status == "pending"
            for command in outcome.commands:
                plan.dispatches.append(self._dispatch(run, command, local, armed=True))
            return plan
        answered_parent = run.job.parent_id is not None and run.job.parent_index is not None
        if outcome.status == "continued" or run.dimension != MAIN_THREAD or answered_parent:
            return None
        status = _end_status(outcome)
        results = local_results(self.backend) if status == "completed" else None
        quiet = results is not None and results.hears(run.job.id, run.job.created_at)
        plan.finish = Finish(status, outcome.result, outcome.error, quiet=quiet)
        return plan

    def _dispatch(
        self, run: Run, command: Command, local: LocalWorker | None, *, armed: bool = False
    ) -> Dispatch:
        """``armed``: the dispatch commits through :meth:`_advance`, which arms a
        sleep's in-process timer (when the worker arms them); only then does its
        row come due ``armed_grace`` late. The general path (``_persist``) arms
        nothing: its sleep's row is the only way it fires, at the due time."""
        if command.kind == "wait":
            signal_id, timeout = command.options["signal_id"], command.options.get("timeout")
            if timeout is None:
                return Dispatch(command.step(run), signal_id=signal_id)
            timer = _timer_task(run, command, {"signal": signal_id, "timeout": timeout})
            return Dispatch(command.step(run), timer, delay=timeout, signal_id=signal_id)
        if command.kind == "sleep":
            seconds = command.options["seconds"]
            grace = self.armed_grace if armed and self.timer_armed is not None else 0.0
            payload = _sleep_payload(run)
            if grace > 0:
                payload[ARMED] = True  # see Worker._handle_engine_task
            timer = _timer_task(run, command, payload)
            return Dispatch(command.step(run), timer, delay=seconds + grace)
        task = _activity_task(run, command)
        if local is not None and local.serves(task):
            return Dispatch(command.step(run), task, owner=local.owner, lease=local.lease)
        return Dispatch(command.step(run), task)

    async def _advance(
        self, run: Run, plan: Advance, outcome: RunOutcome, local: LocalWorker | None
    ) -> list[Task]:
        """Apply a plain run's commit (one backend call, grouped with others of
        ``local``'s when they overlap); the tasks leased to this worker."""
        # A sleep's in-process timer counts from now, when the workflow asked
        # for it, not from the end of the commit (which waits for a connection
        # on a busy pool): the code after the sleep runs when it asked.
        planned_at = self.backend.now()
        if local is None:
            done = await commit_alone(self.backend, plan)
        else:
            done = await local.commits.commit(self.backend, plan)
        if plan.running:
            run.job.status = "running"
        if done.finished and outcome.error is not None:
            error = outcome.error
            log.warning("job %r failed: %s: %s", run.job.id, error.type_name, error.message)
        elif done.finished and plan.finish is not None and plan.finish.status == "completed":
            results = local_results(self.backend)
            if results is not None:  # a result() of this process needs no read
                results.completed(run.job.id, run.job.created_at, plan.finish.result)
        leased: list[Task] = []
        for dispatch, task_id in zip(plan.dispatches, done.task_ids, strict=True):
            if dispatch.task is None or task_id is None:
                continue
            if dispatch.owner is not None:
                task = revise(dispatch.task, id=task_id, attempts=1, lease_owner=dispatch.owner)
                leased.append(task)
            elif (
                dispatch.task.kind == "timer"
                and dispatch.signal_id is None  # a sleep's (a wait's timeout fires from its row)
                and self.timer_armed is not None
            ):
                # Armed at the due time (the row comes due armed_grace later,
                # if it was planned while the worker armed timers: counted
                # from the sleep itself, whatever the grace is now).
                remaining = _sleep_seconds(dispatch.step) - (self.backend.now() - planned_at)
                self.timer_armed(revise(dispatch.task, id=task_id), max(remaining, 0.0))
        return leased

    async def record_answers(
        self, run: Run, answers: list[tuple[Task, Any, ErrorInfo | None]], local: LocalWorker
    ) -> Task:
        """Record inline-run activity results on their own (before a durable side effect
        of the replay that used them); :class:`Superseded` if one was answered elsewhere.

        The activity tasks are acked here, so a run task leased to ``local`` is
        added in the same transaction and returned: until the continuation
        commits, that lease is the job's way forward. Should the worker die, it
        runs out and any worker runs the thread.
        """
        async with self.backend.transaction() as tx:
            await tx.store.lock_job(run.job.id)
            await self._record_answers(tx, answers)
            await self._record_progress(tx, run, run.take_values(), run.take_marks())
            task = _run_task(run.task_queue, run.job.id, run.dimension, run.workflow_name)
            task.id = await tx.stream.enqueue(task, owner=local.owner, lease=local.lease) or ""
            task.attempts, task.lease_owner = 1, local.owner
        return task

    async def _record_answers(
        self, tx: Transaction, answers: list[tuple[Task, Any, ErrorInfo | None]]
    ) -> None:
        for task, result, error in answers:
            assert task.index is not None
            if not await tx.stream.ack(task.id):  # see advance.Answer
                raise Superseded(f"the task of step {task.index} of {task.job_id!r} is gone")
            step = await tx.store.resolve_step(
                task.job_id,
                task.dimension,
                task.index,
                result=result,
                error=error,
                attempts=_attempts(task),
            )
            if step is None:
                raise Superseded(f"step {task.index} of {task.job_id!r} was answered elsewhere")

    async def _apply_outcome(
        self, tx: Transaction, run: Run, outcome: RunOutcome, local: LocalWorker | None
    ) -> list[Task]:
        leased: list[Task] = []
        ended = False  # this transaction ends the thread
        for value in outcome.values:
            await tx.store.insert_step(value)
        if outcome.status == "suspended":
            if run.dimension == MAIN_THREAD and run.job.status == "pending":
                await tx.store.set_job_status(run.job.id, "running")
                run.job.status = "running"
            for command in outcome.commands:
                task = await self._persist(tx, run, command, local)
                if task is not None:
                    leased.append(task)
        elif outcome.status == "continued":
            await self._continue_job(tx, run, outcome.result)
        elif run.dimension == MAIN_THREAD:
            ended = await self._finish_job(tx, run.job.id, outcome)
        else:
            ended = await self._finish_hook(tx, run, outcome)
        for index in outcome.abandoned:
            if not await self._abandon_wait(tx, run, index) and ended:
                # A signal took its waiter after this run read the history: no
                # later run of the ended thread will hand it on, so do it here
                # (once: only the transaction that ends the thread gets here).
                await self._hand_on(tx, run, index)
        return leased

    async def _continue_job(self, tx: Transaction, run: Run, args: list[Any]) -> None:
        """The next generation: a fresh history and a run of it, in this transaction.
        What the old one still waited on goes: its tasks (activities, timers), its
        waiters (a signal for them is kept for the new generation). A cancel
        request the workflow has not seen (it came after this run read the
        history, or a ``non_cancellable`` scope held it) is not the generation's
        to drop: it carries over, and the new generation gets it at its first
        await."""
        # Every wait of the ended generation goes first, its branch cancelled or
        # not (a waiter left behind would take a signal meant for the next
        # generation's wait at its index). Before the steps are read: a signal
        # delivered meanwhile either took its waiter first (this waits for its
        # commit, and the read below sees the answer, carried over) or finds it
        # gone and is buffered for the next generation. Never lost between the
        # read and the generation's end. A cancel request queues behind this
        # transaction on the job's row (Engine.request_cancel).
        for index in run.undelivered:
            await tx.signal.remove_waiter(run.job.id, MAIN_THREAD, index)
        request = None
        signals = []  # signals that reached a wait of this generation unseen: kept
        indexes = {CANCEL_INDEX, *run.undelivered}
        for step in await tx.store.load_steps(run.job.id, MAIN_THREAD, sorted(indexes)):
            if step.index == CANCEL_INDEX:
                if step.activation is None or run.cancel_held:
                    request = revise(step, activation=None)
            elif step.kind == "wait" and step.status == "done" and step.activation is None:
                signals.append(step)
        job = await tx.store.continue_job(run.job.id, args)
        if job is None:
            return  # interrupted meanwhile
        if request is not None:
            await tx.store.insert_step(request)
        await tx.stream.remove_job_tasks(job.id, MAIN_THREAD)
        for step in signals:
            await self._deliver(tx, step.name, step.result, DEFAULT_SIGNAL_EXPIRE)
        await tx.stream.enqueue(_run_task(job.task_queue, job.id, MAIN_THREAD, job.workflow_name))
        await tx.signal.notify_job(job.id)

    async def _abandon_wait(self, tx: Transaction, run: Run, index: int) -> bool:
        """A wait whose branch was cancelled (it lost an ``asyncio.wait`` race, say),
        or that its thread ended without: no signal may go to it any more. Its step
        is closed too, so that later runs do not abandon it again. False if it was
        answered already (a signal got there first)."""
        await tx.signal.remove_waiter(run.job.id, run.dimension, index)
        closed = await tx.store.resolve_step(
            run.job.id,
            run.dimension,
            index,
            error=ErrorInfo(
                "CancelledError",
                "the wait was abandoned (its branch was cancelled, or its thread ended);"
                " a signal goes to the next waiter",
            ),
        )
        return closed is not None

    async def _hand_on(self, tx: Transaction, run: Run, index: int) -> None:
        """Deliver again the signal an abandoned wait received and nobody saw."""
        for step in await tx.store.load_steps(run.job.id, run.dimension, [index]):
            if step.kind == "wait" and step.status == "done" and step.activation is None:
                await self._deliver(tx, step.name, step.result, DEFAULT_SIGNAL_EXPIRE)

    async def _finish_job(self, tx: Transaction, job_id: str, outcome: RunOutcome) -> bool:
        """End the job; False if it had ended already."""
        job = await tx.store.set_job_status(
            job_id, _end_status(outcome), result=outcome.result, error=outcome.error
        )
        if job is None:
            return False
        if outcome.error is not None:
            error = outcome.error
            log.warning("job %r failed: %s: %s", job_id, error.type_name, error.message)
        await tx.signal.notify_job(job_id)
        await self._answer_parent(tx, job, result=outcome.result, error=outcome.error)
        return True

    async def _finish_hook(self, tx: Transaction, run: Run, outcome: RunOutcome) -> bool:
        """End the hook thread; False if it had ended already."""
        status = "completed" if outcome.status == "completed" else "failed"
        thread = await tx.store.finish_thread(run.job.id, run.dimension, status, outcome.error)
        if thread is None:
            return False
        if thread.signal_id is None:
            return True
        # A hook that ends without signalling releases its exec_hook caller
        # (with None, or with its error) instead of leaving it blocked forever.
        waiter = await tx.signal.take_waiter(thread.signal_id)
        if waiter is not None:
            step = await tx.store.resolve_step(
                waiter.job_id, waiter.dimension, waiter.index, error=outcome.error
            )
            if step is not None:
                await self._wake(tx, step)
        return True

    async def _persist(
        self, tx: Transaction, run: Run, command: Command, local: LocalWorker | None = None
    ) -> Task | None:
        """Record a suspending command and set in motion what will answer it.

        Returns the activity task when it was leased to ``local`` at once.
        """
        if command.kind in PLAIN_COMMANDS:  # as Store.advance would
            dispatch = self._dispatch(run, command, local)
            task_id = await apply_dispatch(tx.store, tx.stream, tx.signal, dispatch)
            if task_id is None or dispatch.owner is None or dispatch.task is None:
                return None
            return revise(dispatch.task, id=task_id, attempts=1, lease_owner=dispatch.owner)
        step = command.step(run)
        if not await tx.store.insert_step(step):
            return None  # a concurrent run of the same thread recorded it already
        options = command.options
        if command.kind == "child":
            await self._start_awaited_child(tx, run, command, step)
        elif command.kind == "exec_hook":
            await self._start_command_hook(tx, run, command, options["signal_id"])
            wait = self._dispatch(run, revise(command, kind="wait"), None)
            await follow_dispatch(tx.store, tx.stream, tx.signal, wait)
        else:
            raise HotMeshError(f"unknown command {command.kind!r}")
        return None

    async def _start_awaited_child(
        self, tx: Transaction, run: Run, command: Command, step: Step
    ) -> None:
        child = self._child_job(run, command, awaited=True)
        stored, created = await self._create_job(tx, child)
        if created:
            return
        error: ErrorInfo | None = None
        awaited_here = (
            stored.parent_index == step.index
            and (stored.parent_dimension or MAIN_THREAD) == run.dimension
        )
        if stored.parent_id != run.job.id:
            error = error_info(
                DuplicateWorkflow(
                    f"a workflow with id {stored.id!r} exists and is not a child of {run.job.id!r}"
                )
            )
        elif stored.status not in TERMINAL_STATUSES:
            if awaited_here:
                return  # our child from an earlier attempt: it will answer
            # A running child that answers another call (start_child, or an
            # exec_child at another index) would never answer this one.
            error = error_info(
                DuplicateWorkflow(
                    f"workflow {stored.id!r} is already a running child of {run.job.id!r},"
                    " started by another call (start_child, or exec_child at index"
                    f" {stored.parent_index}); it cannot answer exec_child at index {step.index}"
                )
            )
        else:
            error = stored.error
        answered = await tx.store.resolve_step(
            run.job.id, run.dimension, step.index, result=stored.result, error=error
        )
        if answered is not None:
            await self._wake(tx, answered)

    # -- activities and timers -------------------------------------------------
    async def complete_activity(self, task: Task, result: Any) -> None:
        async with self.backend.transaction() as tx:
            assert task.index is not None
            await tx.store.lock_job(task.job_id)
            if not await tx.stream.ack(task.id):
                return  # called off (see advance.Answer): it answers nothing
            step = await tx.store.resolve_step(
                task.job_id, task.dimension, task.index, result=result, attempts=task.attempts
            )
            if step is not None:
                await self._wake(tx, step)

    async def fail_activity(self, task: Task, error: ErrorInfo, retry_in: float | None) -> None:
        assert task.index is not None
        async with self.backend.transaction() as tx:
            await tx.store.lock_job(task.job_id)
            if retry_in is not None:
                await tx.store.note_attempt(
                    task.job_id, task.dimension, task.index, task.attempts, error
                )
                # Only while this attempt holds the task: repeated after a lost
                # commit, it must not push back (or take from another worker)
                # a retry that is already under way.
                await tx.stream.retry(task.id, delay=retry_in, owner=task.lease_owner)
                return
            if not await tx.stream.ack(task.id):
                return  # called off (see advance.Answer): it answers nothing
            step = await tx.store.resolve_step(
                task.job_id, task.dimension, task.index, error=error, attempts=task.attempts
            )
            if step is not None:
                await self._wake(tx, step)

    async def fire_armed_timer(self, task: Task) -> bool:
        """Fire a sleep's timer that this worker armed in-process at its due time,
        without claiming its row: answer, wake and ack in one call, only while
        the row is there and the step pending. False when it was not (fired by
        whoever claimed the row, or its job was interrupted): nothing changed."""
        assert task.index is not None
        plan = Advance(
            task.job_id,
            task.dimension,
            answers=[Answer(task.id, task.index)],
            wake=_sleep_wake(task),
        )
        try:
            async with self.backend.transaction(single=True) as tx:
                await tx.store.advance(plan)
        except Superseded:
            return False
        return True

    async def fire_timer(self, task: Task) -> None:
        assert task.index is not None
        if task.payload.get("signal") is None:
            # A sleep: its answer, its wake-up and the ack in one call. If the
            # step was answered already (interrupted, say), the general path acks.
            plan = Advance(task.job_id, task.dimension, answers=[Answer(task.id, task.index)])
            plan.wake = _sleep_wake(task)
            try:
                async with self.backend.transaction(single=True) as tx:
                    await tx.store.advance(plan)
                return
            except Superseded:
                pass
        async with self.backend.transaction() as tx:
            # The job, the task, then the waiter, then the step: the order of
            # every transition on them (hm_advance: the job first; hm_deliver:
            # waiter, step), so a signal and its wait's timeout, or an advance
            # of the job, wait for each other instead of deadlocking.
            await tx.store.lock_job(task.job_id)
            if not await tx.stream.ack(task.id):
                return  # called off, or fired already: it answers nothing
            signal_id = task.payload.get("signal")
            if signal_id is None:
                step = await tx.store.resolve_step(task.job_id, task.dimension, task.index)
            else:
                await tx.signal.remove_waiter(task.job_id, task.dimension, task.index)
                step = await tx.store.resolve_step(
                    task.job_id,
                    task.dimension,
                    task.index,
                    error=ErrorInfo(
                        "WaitTimeout",
                        f"no signal {signal_id!r} within {task.payload.get('timeout')} seconds",
                    ),
                )
            if step is not None:
                await self._wake(tx, step)

    async def dead_letter(self, task: Task, error: ErrorInfo) -> None:
        """Set a poison task aside, and fail its job so that nobody waits on it
        in silence: its callers see ``TaskDeadLettered`` with the last error."""
        failure = ErrorInfo(
            "TaskDeadLettered",
            f"the engine failed {task.attempts} times on the {task.kind} task"
            f" {task.name!r} of {task.job_id!r}; last: {error.type_name}: {error.message}",
            error.traceback,
        )
        log.error("dead letter: %s", failure.message)
        async with self.backend.transaction() as tx:
            await tx.store.lock_job(task.job_id)
            await tx.stream.dead_letter(task.id, error)
            await self._finish_job(tx, task.job_id, RunOutcome("failed", error=failure))

    async def drop_task(self, task: Task) -> None:
        async with self.backend.transaction() as tx:
            await tx.stream.ack(task.id)


def _end_status(outcome: RunOutcome) -> str:
    return outcome.status if outcome.status in ("completed", "cancelled") else "failed"


def _attempts(task: Task) -> int | None:
    """What an answer records as its step's attempts: an activity's (a timer's
    step keeps its own, as when its row fires)."""
    return task.attempts if task.kind == "activity" else None


def _index(task: Task) -> int:
    assert task.index is not None
    return task.index


def _activity_task(run: Run, command: Command) -> Task:
    options = command.options
    return Task(
        queue=options["task_queue"] or run.task_queue,
        kind="activity",
        job_id=run.job.id,
        dimension=run.dimension,
        name=command.name,
        index=command.index,
        payload={
            "args": command.args,
            "retry": options["retry"],
            "start_to_close": options["start_to_close"],
            **_traveling(run, command),
        },
    )


def _sleep_seconds(step: Step) -> float:
    """How long a sleep's step sleeps (its args): its due time is its start plus this."""
    return float(step.args or 0.0)


def _sleep_payload(run: Run) -> dict[str, Any]:
    """A sleep's timer names the worker that caches the run it wakes (Task.sticky)."""
    return {} if run.worker_id is None else {"wake_worker": run.worker_id}


def _sleep_wake(timer: Task) -> Task:
    """The run a sleep's timer wakes (its task carries the thread's queue and name)."""
    sticky = timer.payload.get("wake_worker")
    return _run_task(timer.queue, timer.job_id, timer.dimension, timer.name, sticky)


def _timer_task(run: Run, command: Command, payload: dict[str, Any]) -> Task:
    return Task(
        queue=run.task_queue,
        kind="timer",
        job_id=run.job.id,
        dimension=run.dimension,
        name=run.workflow_name,
        index=command.index,
        payload=payload,
    )


# -- headers (hotmesh_core.interceptors): from the job to its activities and children --


def _headers(run: Run, command: Command) -> dict[str, str]:
    headers = command.options.get("headers")
    return dict(headers) if isinstance(headers, dict) else job_headers(run.job.search)


def _traveling(run: Run, command: Command) -> dict[str, Any]:
    """What an activity task carries for ``activity.info()``."""
    headers = _headers(run, command)
    extra: dict[str, Any] = {"workflow_name": run.workflow_name}
    if headers:
        extra["headers"] = headers
    return extra


def _child_search(run: Run, command: Command) -> dict[str, Any]:
    headers = _headers(run, command)
    return {HEADERS_KEY: headers} if headers else {}


def _all_inline_activities(plan: Advance, local: LocalWorker) -> bool:
    """Whether ``plan`` dispatches something, and only activities leased to
    ``local``: the steps its worker may run before committing their dispatch."""
    return bool(plan.dispatches) and all(
        d.task is not None and d.task.kind == "activity" and d.owner == local.owner
        for d in plan.dispatches
    )
