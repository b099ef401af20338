"""One run's commit as one backend call: the hot path's state transition.

A run that finishes (or an inline activity chain that continues) commits a
handful of writes that depend on each other only through conditions a store
can check itself: answers are recorded *if pending*, the activation is moved
*if it is still the one the run read* (compare-and-set), a command's step is
inserted *if absent* and its task enqueued only then, the job ends *if it has
not ended*. The engine decides what to write (:class:`Advance`); a backend
applies it atomically with :meth:`hotmesh_core.protocols.Store.advance` —
PostgreSQL in one statement (``hm_advance``), which spares the client the
round trip of every write (on 2 cores that CPU, not the server, bounds a
workflow). :func:`apply_advance` is the reference semantics, written with the
primitive calls of the three roles; the memory backend runs it, and it is
what every other backend must match (conformance ``test_advance.py``).

Only plain outcomes take this path: new activities and sleeps, or the end of
a main thread that no parent waits for. Everything else (waits, children,
hooks, continue-as-new, abandoned waits, signals handed on) goes the general
way in ``engine.py``, whose order of effects those need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import Factory, define

from .models import MAIN_THREAD, ErrorInfo, Job, Step, Task, Thread, Waiter
from .replay import RunAborted

if TYPE_CHECKING:  # the protocols name this module's records
    from collections.abc import Sequence

    from .protocols import Signal, Store, Stream

__all__ = [
    "Advance",
    "Advanced",
    "Answer",
    "Dispatch",
    "Finish",
    "Handoff",
    "Superseded",
    "apply_advance",
    "apply_dispatch",
    "deliver_signal",
    "follow_dispatch",
    "read_thread",
    "wake_task",
]


class Superseded(RunAborted):
    """A run (or an inline continuation) lost a race: another run of its thread
    delivered first, or another worker answered one of its steps. Nothing it
    meant to commit was written; its task is run again on what the other left."""


@define
class Answer:
    """An activity's outcome the run used (or a timer's): its task is acked and
    its step answered, only if the task was still there and the step pending
    (else the whole advance is :class:`Superseded`). An answer whose task is
    gone belongs to work that was called off — its job interrupted, or its
    generation ended by ``continue_as_new``, whose new steps reuse the indexes —
    and must answer nothing."""

    task_id: str
    index: int
    result: Any = None
    error: ErrorInfo | None = None
    attempts: int | None = None


@define
class Dispatch:
    """A new command's step, inserted if absent (and the job not interrupted);
    only then is ``task`` enqueued: visible after ``delay``, or leased at once
    to ``owner`` for ``lease`` seconds (an activity its own worker runs).

    ``signal_id``: the step waits for that signal. A buffered one answers it
    at once (its run woken, ``task`` — the timeout's timer — not enqueued);
    else a waiter is added, then the timer if any. Serialized with deliveries
    of the id (PostgreSQL: the same advisory lock)."""

    step: Step
    task: Task | None = None
    delay: float = 0.0
    owner: str | None = None
    lease: float = 0.0
    signal_id: str | None = None


@define
class Finish:
    """The main thread's end: the job moves to ``status`` unless it has ended,
    and the clients waiting on it are woken."""

    status: str
    result: Any = None
    error: ErrorInfo | None = None
    # Nobody but this process waits, and it hears the end from the commit (a
    # job started here eagerly, completed here: in_process.LocalResults): the
    # backend may skip the wake-up unless a handle elsewhere asked for it
    # (Store.get_awaited_job).
    quiet: bool = False


@define
class Handoff:
    """A signal's wake-up handed to a worker of the sending process
    (:mod:`hotmesh_core.in_process`): if the waiter that takes the signal is a
    step whose run ``worker`` keeps cached, its run task is leased to
    ``owner`` for ``lease`` seconds instead of queued (nobody else woken), and
    the backend fills in the rest, for that worker to resume the run at once."""

    worker: str
    owner: str
    lease: float
    job_id: str | None = None  # set when handed: the answered step and its run task
    dimension: str = ""
    index: int = 0
    queue: str = ""
    name: str = ""
    run_id: str | None = None


@define
class Advance:
    """Everything one run commits, in the order it is applied."""

    job_id: str
    dimension: str
    # Steps inserted as they are (done or failed), before the CAS that marks
    # them: a run's first inline activity, run before its dispatch committed.
    recorded: list[Step] = Factory(list)
    answers: list[Answer] = Factory(list)
    delivered: tuple[int, list[int]] | None = None  # (activation, indexes): the CAS
    values: list[Step] = Factory(list)  # recorded now/random/uuid4 values
    running: bool = False  # a pending job becomes running
    dispatches: list[Dispatch] = Factory(list)
    finish: Finish | None = None
    wake: Task | None = None  # a run of the thread, queued (at most one unclaimed)
    acks: list[str] = Factory(list)


@define
class Advanced:
    """What an advance did: each dispatch's task id (None where the step was
    recorded already, by a racing run of the thread), and whether it ended the job."""

    task_ids: list[str | None]
    finished: bool


async def apply_advance(store: Store, stream: Stream, signal: Signal, plan: Advance) -> Advanced:
    """The reference semantics of :meth:`Store.advance`, in one transaction's calls."""
    job_id, dimension = plan.job_id, plan.dimension
    for recorded in plan.recorded:
        if not await store.insert_step(recorded):
            raise Superseded(f"step {recorded.index} of {job_id!r} was recorded elsewhere")
    for answer in plan.answers:
        # The task, then its step: the order of every transition that answers
        # (on PostgreSQL racing ones then wait for each other, never deadlock).
        if not await stream.ack(answer.task_id):
            raise Superseded(f"the task of step {answer.index} of {job_id!r} is gone")
        step = await store.resolve_step(
            job_id,
            dimension,
            answer.index,
            result=answer.result,
            error=answer.error,
            attempts=answer.attempts,
        )
        if step is None:
            raise Superseded(f"step {answer.index} of {job_id!r} was answered elsewhere")
    if plan.delivered is not None:
        activation, indexes = plan.delivered
        if not await store.mark_delivered(job_id, dimension, indexes, activation):
            raise Superseded(
                f"another run of {job_id!r} ({dimension or 'main'}) delivered"
                f" answers of activation {activation} first"
            )
    for value in plan.values:
        await store.insert_step(value)
    if plan.running:
        await store.set_job_status(job_id, "running")
    task_ids: list[str | None] = []
    for dispatch in plan.dispatches:
        task_ids.append(await apply_dispatch(store, stream, signal, dispatch))
    finished = False
    if plan.finish is not None:
        finish = plan.finish
        ended = await store.set_job_status(
            job_id, finish.status, result=finish.result, error=finish.error
        )
        if ended is not None:
            finished = True
            await signal.notify_job(job_id)
    if plan.wake is not None:
        await stream.enqueue(plan.wake)
    for task_id in plan.acks:
        await stream.ack(task_id)
    return Advanced(task_ids, finished)


async def apply_dispatch(
    store: Store, stream: Stream, signal: Signal, dispatch: Dispatch
) -> str | None:
    """One dispatch (reference semantics): its step if absent, then what answers
    it (:func:`follow_dispatch`); the enqueued task's id."""
    if not await store.insert_step(dispatch.step):
        return None
    return await follow_dispatch(store, stream, signal, dispatch)


async def follow_dispatch(
    store: Store, stream: Stream, signal: Signal, dispatch: Dispatch
) -> str | None:
    """What answers a recorded step: a buffered signal or a waiter (with
    ``signal_id``), then ``task``. The general path calls it too (``exec_hook``
    waits after starting its hook)."""
    step = dispatch.step
    if dispatch.signal_id is not None:
        found, data = await signal.take_buffered(dispatch.signal_id)
        if found:
            answered = await store.resolve_step(
                step.job_id, step.dimension, step.index, result=data
            )
            if answered is not None:
                await stream.enqueue(wake_task(answered))
            return None
        await signal.add_waiter(
            Waiter(
                signal_id=dispatch.signal_id,
                job_id=step.job_id,
                dimension=step.dimension,
                index=step.index,
            )
        )
    if dispatch.task is None:
        return None
    return await stream.enqueue(
        dispatch.task, delay=dispatch.delay, owner=dispatch.owner, lease=dispatch.lease
    )


def wake_task(step: Step) -> Task:
    """The run an answered step wakes: of its thread, sticky to the worker that
    caches it."""
    return Task(
        queue=step.wake_queue,
        kind="run",
        job_id=step.job_id,
        dimension=step.dimension,
        name=step.wake_name,
        sticky=step.wake_worker,
    )


async def deliver_signal(
    store: Store,
    stream: Stream,
    signal: Signal,
    signal_id: str,
    data: Any,
    expire: float,
    handoff: Handoff | None = None,
) -> bool:
    """The reference semantics of :meth:`Signal.deliver`: to the oldest waiter whose
    step is still pending, exactly once, waking its thread's run (on the worker
    that caches it; with ``handoff``, leased to it when it is that worker);
    else kept ``expire`` seconds for the first wait to come."""
    while (waiter := await signal.take_waiter(signal_id)) is not None:
        step = await store.resolve_step(waiter.job_id, waiter.dimension, waiter.index, result=data)
        if step is not None:
            run = wake_task(step)
            if handoff is None or step.wake_worker != handoff.worker:
                await stream.enqueue(run)
                return True
            run_id = await stream.enqueue(run, owner=handoff.owner, lease=handoff.lease)
            handoff.job_id, handoff.dimension, handoff.index = (
                step.job_id,
                step.dimension,
                step.index,
            )
            handoff.queue, handoff.name, handoff.run_id = run.queue, run.name, run_id
            return True
    await signal.buffer(signal_id, data, expire=expire)
    return False


async def read_thread(
    store: Store, job_id: str, dimension: str, indexes: Sequence[int] | None
) -> tuple[Job | None, Thread | None, list[Step]]:
    """The reference semantics of :meth:`Store.load_thread`: what a run reads."""
    job = await store.get_job(job_id)
    if job is None:
        return None, None, []
    thread = None
    if dimension != MAIN_THREAD:
        thread = await store.get_thread(job_id, dimension)
        if thread is None:
            return job, None, []
    return job, thread, await store.load_steps(job_id, dimension, indexes)
