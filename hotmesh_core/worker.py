"""Workers: claim tasks under a lease, run workflows and activities, answer.

A worker is a few background tasks in the current process.  It coordinates
with other workers (in this process or any other) only through the backend: a
task is leased by one worker at a time, the lease is extended while the work
runs, and a task whose lease runs out (its worker died) is claimed again by
someone else — no control plane, no manual recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from attrs import define, evolve

from .config import validate_name
from .engine import Engine, LocalWorker, Superseded
from .errors import BackendUnavailable, SerializationError, UnknownWorkflow
from .models import MAIN_THREAD, TERMINAL_STATUSES, ErrorInfo, Job, Step, Task, Thread
from .protocols import Backend
from .replay import Command, Run, RunOutcome, error_info
from .retry import retry_delay
from .serde import ensure_json

__all__ = ["Worker", "registry"]

log = logging.getLogger("hotmesh.worker")

Functions = Iterable[Callable[..., Any]] | Mapping[str, Callable[..., Any]]


def registry(functions: Functions | None, what: str) -> dict[str, Callable[..., Any]]:
    """Functions by name: their ``__name__``, or the key of a ``{name: fn}`` mapping."""
    if functions is None:
        return {}
    if isinstance(functions, Mapping):
        items = list(functions.items())
    else:
        items = [(getattr(fn, "__name__", ""), fn) for fn in functions]
    named: dict[str, Callable[..., Any]] = {}
    for name, fn in items:
        if not callable(fn):
            raise TypeError(f"{what} {name!r} is not callable")
        named[validate_name(name, f"{what} name")] = fn
    return named


class Worker:
    """Serves one task queue: the workflows (and hooks) and activities registered on it."""

    def __init__(
        self,
        backend: Backend,
        task_queue: str,
        *,
        workflows: Functions | None = None,
        activities: Functions | None = None,
        concurrency: int = 10,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        expire_interval: float = 60.0,
        max_task_attempts: int = 10,
        worker_id: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.backend = backend
        self.engine = Engine(backend)
        self.task_queue = task_queue
        self.workflows = registry(workflows, "workflow")
        self.activities = registry(activities, "activity")
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self.expire_interval = expire_interval
        self.max_task_attempts = max_task_attempts
        self.id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self._stable_id = worker_id is not None
        self._inflight: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._stopping = False
        # Activities this worker serves are run by the worker that dispatches them.
        self._local = LocalWorker(self.id, lease, task_queue, frozenset(self.activities))

    async def start(self) -> Worker:
        if self._stable_id:
            # The same id as before a crash or restart: what this worker held
            # then is its own, and nobody else holds it; take it back now.
            async with self.backend.transaction(single=True) as tx:
                released = await tx.stream.release_leases(self.task_queue, owner=self.id)
            if released:
                log.info("worker %s took back %d leased tasks", self.id, released)
        self._loop_task = asyncio.create_task(self._claim_loop(), name=f"hotmesh:{self.id}")
        self._expiry_task = asyncio.create_task(self._expire_loop(), name=f"hotmesh:{self.id}:x")
        return self

    async def stop(self, *, drain: bool = True) -> None:
        """Stop claiming; with ``drain``, let the tasks in hand finish (else abandon them)."""
        self._stopping = True
        for background in (self._loop_task, self._expiry_task):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        if drain:
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
        else:
            # Like a process dying: nothing is acked; leases will expire.
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _claim_loop(self) -> None:
        workflow_names = sorted(self.workflows)
        activity_names = sorted(self.activities)
        while not self._stopping:
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                async with self.backend.transaction(single=True) as tx:
                    tasks = await tx.stream.claim(
                        self.task_queue,
                        owner=self.id,
                        lease=self.lease,
                        workflow_names=workflow_names,
                        activity_names=activity_names,
                        limit=free,
                    )
            except BackendUnavailable as error:
                log.warning("claim on queue %r: %s; retrying", self.task_queue, error)
                await asyncio.sleep(self.poll_interval)
                continue
            except Exception:
                log.exception("claim failed on queue %r; retrying", self.task_queue)
                await asyncio.sleep(self.poll_interval)
                continue
            if not tasks:
                await self.backend.wait_for_tasks([self.task_queue], self.poll_interval)
                continue
            for task in tasks:
                handler = asyncio.create_task(self._handle(task))
                self._inflight.add(handler)
                handler.add_done_callback(self._inflight.discard)

    async def _expire_loop(self) -> None:
        """Remove finished jobs past their ``expire`` (every worker helps; idempotent)."""
        while not self._stopping:
            await asyncio.sleep(self.expire_interval)
            try:
                await self.backend.maintain()
            except Exception:
                log.exception("expiring finished jobs failed")

    async def _handle(self, task: Task) -> None:
        # Activities keep their own lease alive while they run (_activity_outcome).
        heartbeat = None if task.kind == "activity" else asyncio.create_task(self._heartbeat(task))
        try:
            if task.kind == "activity":
                await self._run_activity(task)
            else:
                await self._while_backend_returns(lambda: self._handle_engine_task(task))
        except asyncio.CancelledError:
            raise
        except BackendUnavailable as exc:
            log.warning("task %s is left to its lease: %s", task.id, exc)
        except Exception as exc:
            log.exception("task %s (%s %s) failed in the engine", task.id, task.kind, task.name)
            if task.attempts >= self.max_task_attempts:
                # A poison task: keep it for inspection instead of retrying forever.
                try:
                    await self.engine.dead_letter(task, error_info(exc))
                except Exception:
                    log.exception("could not dead-letter task %s", task.id)
            # Otherwise its lease will expire and another attempt will be made.
        finally:
            if heartbeat is not None:
                heartbeat.cancel()

    async def _handle_engine_task(self, task: Task) -> None:
        if task.kind == "run":
            await self._run_workflow(task)
        elif task.kind == "timer":
            await self.engine.fire_timer(task)
        else:
            log.error("unknown task kind %r; dropping task %s", task.kind, task.id)
            await self.engine.drop_task(task)

    async def _while_backend_returns(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """Run ``attempt``; if the database went away (a restart?), run it again
        once it is back. This worker still holds the task's lease, so nobody
        else will, and every engine transition is safe to repeat."""
        for pause in (0.1, 0.3, 1.0, 3.0, None):
            try:
                await attempt()
                return
            except BackendUnavailable as error:
                if pause is None or self._stopping:
                    raise
                log.info("%s; trying again in %.1f s", error, pause)
                await asyncio.sleep(pause)

    async def _heartbeat(self, task: Task) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                async with self.backend.transaction(single=True) as tx:
                    kept = await tx.stream.extend_lease(task.id, owner=self.id, lease=self.lease)
            except Exception:
                log.exception("could not extend the lease of task %s", task.id)
                continue
            if not kept:
                return

    async def _run_workflow(self, task: Task) -> None:
        context = await self.engine.load_run(task)
        if context is None:
            await self.engine.drop_task(task)
            return
        job, thread = context.job, context.thread
        finished = job.status in TERMINAL_STATUSES
        if (
            (task.dimension == MAIN_THREAD and finished)
            or job.status == "interrupted"
            or (thread is not None and thread.status != "running")
        ):
            await self.engine.drop_task(task)
            return
        name = thread.workflow_name if thread is not None else job.workflow_name
        fn = self.workflows.get(name)
        if fn is None:
            # Claim filters by name, so this is a race with a re-registration:
            # hand the task back for a worker that has the function.
            log.warning("%s", UnknownWorkflow(f"workflow {name!r} is not registered here"))
            async with self.backend.transaction() as tx:
                await tx.stream.retry(task.id, delay=self.poll_interval)
            return
        args = list(thread.args if thread is not None else job.args)
        run = self._new_run(job, thread, context.history, self.engine.execute_inline)
        outcome = await self._execute(run, fn, args, name)
        leased = await self.engine.finish_run(task, run, outcome, self._local)
        while leased:
            run, leased = await self._continue_inline(run, fn, args, name, leased)

    def _new_run(
        self,
        job: Job,
        thread: Thread | None,
        history: list[Step],
        execute_inline: Callable[[Run, Command], Awaitable[Any]],
    ) -> Run:
        return Run(
            job=job,
            thread=thread,
            history=history,
            now=self.backend.now(),
            execute_inline=execute_inline,
            clock=self.backend.now,
        )

    async def _execute(
        self, run: Run, fn: Callable[..., Any], args: list[Any], name: str
    ) -> RunOutcome:
        outcome = await run.execute(fn, args)
        if outcome.status == "completed":
            try:
                outcome.result = ensure_json(outcome.result, what=f"the result of {name!r}")
            except SerializationError as exc:
                outcome.status, outcome.result, outcome.error = "failed", None, error_info(exc)
        return outcome

    async def _continue_inline(
        self, run: Run, fn: Callable[..., Any], args: list[Any], name: str, leased: list[Task]
    ) -> tuple[Run, list[Task]]:
        """Run the activities this worker leased to itself, then replay the workflow with
        their results and commit both together: one commit per step on the hot path."""
        outcomes = await asyncio.gather(*(self._activity_outcome(task) for task in leased))
        if any(outcome.retry_in is not None for outcome in outcomes):
            await self._answer_normally(outcomes)  # a retry waits in the queue as usual
            return run, []
        answers = [(o.task, o.result, o.error) for o in outcomes]
        history = {step.index: step for step in run.known_history()}
        for task, result, error in answers:
            assert task.index is not None
            history[task.index] = evolve(
                history[task.index],
                status="done" if error is None else "failed",
                result=result,
                error=error,
                attempts=task.attempts,
            )
        recorded = False

        async def record_then_execute(replaying: Run, command: Command) -> Any:
            # A durable side effect may depend on the answers: record them first.
            nonlocal recorded
            if not recorded:
                await self.engine.record_answers(answers)
                recorded = True
            return await self.engine.execute_inline(replaying, command)

        replay = self._new_run(run.job, run.thread, list(history.values()), record_then_execute)
        try:
            outcome = await self._execute(replay, fn, args, name)
            return replay, await self.engine.continue_inline(
                replay, [] if recorded else answers, outcome, self._local
            )
        except Superseded:
            if not recorded:
                await self._answer_normally(outcomes)
            return replay, []

    async def _answer_normally(self, outcomes: list[ActivityOutcome]) -> None:
        for outcome in outcomes:
            if outcome.error is None:
                await self.engine.complete_activity(outcome.task, outcome.result)
            else:
                await self.engine.fail_activity(outcome.task, outcome.error, outcome.retry_in)

    async def _run_activity(self, task: Task) -> None:
        if task.name not in self.activities:
            async with self.backend.transaction() as tx:
                await tx.stream.retry(task.id, delay=self.poll_interval)
            return
        outcome = await self._activity_outcome(task)
        # Only the recording is repeated: the activity ran, its outcome is kept.
        await self._while_backend_returns(lambda: self._answer_normally([outcome]))

    async def _activity_outcome(self, task: Task) -> ActivityOutcome:
        """Execute an activity (keeping its lease alive); what happened, not yet recorded."""
        fn = self.activities[task.name]
        payload = task.payload
        heartbeat = asyncio.create_task(self._heartbeat(task))
        try:
            result = await asyncio.wait_for(
                _invoke(fn, payload.get("args", [])), payload.get("start_to_close") or None
            )
            return ActivityOutcome(
                task, ensure_json(result, what=f"the result of activity {task.name!r}")
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = error_info(exc)
            if isinstance(exc, asyncio.TimeoutError):
                error = ErrorInfo(
                    "TimeoutError",
                    f"activity {task.name!r} exceeded "
                    f"start_to_close of {payload.get('start_to_close')} s",
                    error.traceback,
                )
            delay = (
                None
                if isinstance(exc, SerializationError)
                else retry_delay(payload["retry"], task.attempts, error.type_name)
            )
            return ActivityOutcome(task, None, error, delay)
        finally:
            heartbeat.cancel()


@define
class ActivityOutcome:
    task: Task
    result: Any = None
    error: ErrorInfo | None = None
    retry_in: float | None = None  # set when the activity will be tried again later


async def _invoke(fn: Callable[..., Any], args: list[Any]) -> Any:
    if asyncio.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if asyncio.iscoroutine(result):
        result = await result
    return result
