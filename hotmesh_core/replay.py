"""The replay engine: execution indexes, recorded results, suspension.

A workflow function is re-run from the top on every resumption.  It runs on a
private event loop (:class:`ReplayLoop`) that the engine steps by hand, so it
knows *exactly* when every branch of the workflow is blocked: the ready queue
is empty.  Each durable call takes the next execution index; a call whose
result is recorded returns it at once, a call that is not recorded becomes a
command and blocks on a future that this run never resolves.

Two kinds of command exist:

* *inline* commands (entity operations, sending a signal, starting a child or
  a hook without waiting) are executed by the engine while the run is live,
  each in a transaction with its step record, and their result is fed back;
* *suspending* commands (activities, sleeps, waits, awaited children and hooks)
  are collected and persisted together, in one transaction, once the workflow
  is quiescent.  Their answer arrives later and triggers a new run.

``now()``, ``random()`` and ``uuid4()`` are recorded too; their records ride
along with the next transaction of the run, so a value is durable before any
effect that could have observed it.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import contextvars
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from attrs import define, evolve, field

from .entity_ops import EntityPathError
from .errors import (
    ActivityFailed,
    HotMeshError,
    NonDeterminismError,
    WaitTimeout,
    WorkflowFailed,
    WorkflowInterrupted,
)
from .models import MAIN_THREAD, ErrorInfo, Job, Step, Thread

__all__ = [
    "Command",
    "ReplayLoop",
    "Run",
    "RunOutcome",
    "current_run",
    "error_info",
    "exception_for",
]


class RunAborted(Exception):
    """Raised by an inline executor to abandon the run (it lost a race); never user-visible."""


INLINE_KINDS = frozenset({"entity", "signal", "start_child", "hook"})
SUSPENDING_KINDS = frozenset({"activity", "sleep", "wait", "child", "exec_hook"})
VALUE_KINDS = frozenset({"now", "random", "uuid4"})

_current_run: contextvars.ContextVar[Run] = contextvars.ContextVar("hotmesh_run")


def current_run() -> Run:
    """The run executing the calling workflow code; outside a workflow, a clear error."""
    try:
        return _current_run.get()
    except LookupError:
        raise HotMeshError(
            "this function can only be called inside a workflow or hook function"
        ) from None


def error_info(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, (ActivityFailed, WorkflowFailed)):
        type_name, message = exc.type_name, exc.message
    else:
        type_name, message = type(exc).__name__, str(exc)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorInfo(type_name=type_name, message=message, traceback=text)


def exception_for(step: Step) -> BaseException:
    """Rebuild, inside the workflow, the error a failed step recorded."""
    error = step.error or ErrorInfo("HotMeshError", "unknown failure")
    if step.kind == "activity":
        return ActivityFailed(error.message, type_name=error.type_name, traceback=error.traceback)
    if error.type_name == "WaitTimeout":
        return WaitTimeout(error.message)
    if error.type_name == "WorkflowInterrupted":
        return WorkflowInterrupted(error.message, traceback=error.traceback)
    if step.kind == "entity":
        return EntityPathError(error.message)
    return WorkflowFailed(error.message, type_name=error.type_name, traceback=error.traceback)


@define
class Command:
    """A durable call this run issued and the history does not answer yet."""

    index: int
    kind: str
    name: str
    args: Any = None
    options: dict[str, Any] = field(factory=dict)
    future: asyncio.Future[Any] | None = None

    def step(self, run: Run, *, status: str = "pending", result: Any = None) -> Step:
        return Step(
            job_id=run.job.id,
            dimension=run.dimension,
            index=self.index,
            kind=self.kind,
            name=self.name,
            args=self.args,
            status=status,
            result=result,
            wake_queue=run.task_queue,
            wake_name=run.workflow_name,
        )


class ReplayLoop(asyncio.AbstractEventLoop):
    """A minimal event loop that runs only what is ready, then stops.

    Timers are refused on purpose: a workflow that calls ``asyncio.sleep(1)``
    would not be replay-stable; ``workflow.sleep_for`` is the durable way.
    """

    def __init__(self, now: float) -> None:
        self._ready: deque[asyncio.Handle] = deque()
        self._now = now
        self.errors: list[dict[str, Any]] = []

    # -- what asyncio's futures, tasks and gather need ---------------------
    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        raise HotMeshError(
            "asyncio timers are not replay-stable inside a workflow: "
            "use workflow.sleep_for(...) or workflow.wait_for(..., timeout=...)"
        )

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_later(0, callback, *args, context=context)

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(  # type: ignore[override]
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        if context is None:
            return asyncio.Task(coro, loop=self, name=name)
        return asyncio.Task(coro, loop=self, name=name, context=context)  # type: ignore[call-arg]

    def time(self) -> float:
        return self._now

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return False

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # "Task was destroyed but it is pending" is the normal end of a suspended run.
        self.errors.append(context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    # -- stepping ----------------------------------------------------------
    def run_ready(self) -> None:
        """Run callbacks until none is ready: every branch is blocked or finished."""
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        try:
            while self._ready:
                handle = self._ready.popleft()
                if not handle._cancelled:
                    handle._run()
        finally:
            asyncio.events._set_running_loop(previous)


@define
class RunOutcome:
    """How a run ended: returned, raised, or suspended with new commands."""

    status: str  # "completed" | "failed" | "suspended"
    result: Any = None
    error: ErrorInfo | None = None
    commands: list[Command] = field(factory=list)
    values: list[Step] = field(factory=list)


InlineExecutor = Callable[["Run", Command], Awaitable[Any]]


class Run:
    """One execution of one thread (main function or hook) of a job, from the top."""

    def __init__(
        self,
        *,
        job: Job,
        thread: Thread | None,
        history: list[Step],
        now: float,
        execute_inline: InlineExecutor,
        clock: Callable[[], float],
    ) -> None:
        self.job = job
        self.thread = thread
        self.dimension = thread.dimension if thread is not None else MAIN_THREAD
        self.workflow_name = thread.workflow_name if thread is not None else job.workflow_name
        self.task_queue = thread.task_queue if thread is not None else job.task_queue
        self.history = {step.index: step for step in history}
        self.loop = ReplayLoop(now)  # type: ignore[abstract]  # only what asyncio needs
        self.clock = clock
        self._execute_inline = execute_inline
        self._next_index = 0
        self.commands: list[Command] = []
        self.inline: list[Command] = []
        self.values: list[Step] = []
        self.recorded: dict[int, Step] = {}  # what this run learned or issued, by index
        self.nondeterminism: NonDeterminismError | None = None

    # -- used by the workflow API -----------------------------------------
    def _take_index(self, kind: str, name: str) -> tuple[int, Step | None]:
        index = self._next_index
        self._next_index += 1
        recorded = self.history.get(index)
        if recorded is not None and (recorded.kind, recorded.name) != (kind, name):
            error = NonDeterminismError(
                f"workflow {self.workflow_name!r} issued {kind} {name!r} at index {index}, "
                f"but its history holds {recorded.kind} {recorded.name!r} there: "
                "the code changed or is not deterministic"
            )
            self.nondeterminism = self.nondeterminism or error
            raise error
        return index, recorded

    async def call(self, kind: str, name: str, args: Any = None, **options: Any) -> Any:
        """A durable call: the recorded answer, or a command and a wait."""
        index, recorded = self._take_index(kind, name)
        if recorded is not None and recorded.status != "pending":
            if recorded.status == "failed":
                raise exception_for(recorded)
            return recorded.result
        future = self.loop.create_future()
        if recorded is None:
            command = Command(index, kind, name, args, options, future)
            (self.inline if kind in INLINE_KINDS else self.commands).append(command)
        # A pending step (issued by an earlier run) is answered by a later run.
        return await future

    def value(self, kind: str, generate: Callable[[], Any]) -> Any:
        """A recorded non-deterministic value (now, random, uuid4)."""
        index, recorded = self._take_index(kind, kind)
        if recorded is not None:
            return recorded.result
        generated = generate()
        step = Command(index, kind, kind).step(self, status="done", result=generated)
        self.values.append(step)
        self.recorded[index] = step
        return generated

    def take_values(self) -> list[Step]:
        values, self.values = self.values, []
        return values

    # -- driving -----------------------------------------------------------
    async def execute(self, fn: Callable[..., Any], args: list[Any]) -> RunOutcome:
        context = contextvars.copy_context()
        context.run(_current_run.set, self)
        # The task copies the current context at creation: create it inside ours.
        root = context.run(self.loop.create_task, _call(fn, args))
        while True:
            self.loop.run_ready()
            if self.nondeterminism is not None:
                return RunOutcome(
                    "failed", error=error_info(self.nondeterminism), values=self.take_values()
                )
            if not self.inline:
                break
            batch, self.inline = self.inline, []
            for command in batch:
                assert command.future is not None
                try:
                    result = await self._execute_inline(self, command)
                except RunAborted:
                    raise
                except Exception as exc:  # recorded as a failed step; raised in the workflow
                    self.recorded[command.index] = evolve(
                        command.step(self), status="failed", error=error_info(exc)
                    )
                    command.future.set_exception(exc)
                else:
                    self.recorded[command.index] = command.step(self, status="done", result=result)
                    command.future.set_result(result)
        if root.done():
            raised = root.exception() if not root.cancelled() else asyncio.CancelledError()
            if raised is not None:
                return RunOutcome("failed", error=error_info(raised), values=self.take_values())
            return RunOutcome("completed", result=root.result(), values=self.take_values())
        for command in self.commands:
            self.recorded[command.index] = command.step(self)
        return RunOutcome("suspended", commands=self.commands, values=self.take_values())

    def known_history(self) -> list[Step]:
        """The history as this run left it: what it loaded plus what it recorded."""
        return list({**self.history, **self.recorded}.values())


async def _call(fn: Callable[..., Any], args: list[Any]) -> Any:
    result = fn(*args)
    if asyncio.iscoroutine(result):
        result = await result
    return result
