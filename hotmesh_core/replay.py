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
import contextlib
import contextvars
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from attrs import define, field

from .entity_ops import EntityPathError
from .errors import (
    ActivityFailed,
    DuplicateWorkflow,
    HotMeshError,
    InvalidIdentifier,
    NonDeterminismError,
    SerializationError,
    UnknownWorkflow,
    WaitTimeout,
    WorkflowCancelled,
    WorkflowClosed,
    WorkflowFailed,
    WorkflowInterrupted,
    WorkflowNotFound,
)
from .models import MAIN_THREAD, ErrorInfo, Job, Step, Thread
from .records import revise

__all__ = [
    "CANCEL_INDEX",
    "Command",
    "ContinueAsNew",
    "InlineFailed",
    "ReplayLoop",
    "Run",
    "RunOutcome",
    "current_run",
    "error_info",
    "exception_for",
    "storable_text",
]


class RunAborted(Exception):
    """Raised by an inline executor to abandon the run (it lost a race); never user-visible."""


INLINE_KINDS = frozenset({"entity", "signal", "start_child", "hook"})
SUSPENDING_KINDS = frozenset({"activity", "sleep", "wait", "child", "exec_hook"})
VALUE_KINDS = frozenset({"now", "random", "uuid4", "patch"})

#: Where a cancel request (``handle.cancel()``) is recorded in a job's main
#: thread: a step of kind ``cancel``, answered when requested and delivered in
#: an activation like any answer, so a replay raises the CancelledError at the
#: same point as the first run did.
CANCEL_INDEX = -1


class _RunSlot:
    """What the workflow code's context holds: its run, until the code has ended.

    Not the run itself: the run holds its root task, whose context would hold
    the run, a cycle that only the garbage collector frees (with the history
    it holds, 26 objects a workflow, a fifth of the memory backend's W1 CPU
    was collection). Emptied when the root task is done, a finished run is
    freed when the worker lets go of it.
    """

    __slots__ = ("run",)

    def __init__(self, run: Run) -> None:
        self.run: Run | None = run


_current_run: contextvars.ContextVar[_RunSlot] = contextvars.ContextVar("hotmesh_run")


def current_run() -> Run:
    """The run executing the calling workflow code; outside a workflow, a clear error."""
    slot = _current_run.get(None)
    if slot is None or slot.run is None:
        raise HotMeshError("this function can only be called inside a workflow or hook function")
    return slot.run


def error_info(exc: BaseException) -> ErrorInfo:
    """An error as it is stored: always storable, whatever the exception holds.

    A message with NUL or a lone surrogate (which no database text holds), or an
    exception whose ``__str__`` raises, must still leave a readable error, not
    make recording it fail over and over.
    """
    if isinstance(exc, (ActivityFailed, WorkflowFailed)):
        type_name, message = exc.type_name, exc.message
    else:
        type_name = type(exc).__name__
        try:
            message = str(exc)
        except Exception as broken:
            message = f"<the message could not be read: str() raised {type(broken).__name__}>"
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        text = ""
    return ErrorInfo(
        type_name=storable_text(type_name),
        message=storable_text(message),
        traceback=storable_text(text),
    )


def storable_text(text: str) -> str:
    """``text`` with what no JSON column can hold (NUL, lone surrogates) escaped."""
    if not isinstance(text, str):
        text = repr(text)
    text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


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
    if step.kind in INLINE_KINDS and error.type_name in _INLINE_ERRORS:
        # The engine raised it at the call the first time (a hook on a closed
        # job, say): a replay raises the same class, or an ``except`` that
        # caught it then would not catch it now.
        return _INLINE_ERRORS[error.type_name](error.message)
    return WorkflowFailed(error.message, type_name=error.type_name, traceback=error.traceback)


_INLINE_ERRORS: dict[str, type[HotMeshError]] = {
    cls.__name__: cls
    for cls in (
        WorkflowClosed,
        DuplicateWorkflow,
        InvalidIdentifier,
        SerializationError,
        WorkflowNotFound,
        UnknownWorkflow,
        HotMeshError,
    )
}


@define
class Command:
    """A durable call this run issued and the history does not answer yet."""

    index: int
    kind: str
    name: str
    args: Any = None
    options: dict[str, Any] = field(factory=dict)
    future: asyncio.Future[Any] | None = None
    recorded: Step | None = None  # an inline command's answer, from history

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
            wake_worker=run.worker_id,
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
                    # asyncio re-raises these out of a task's step after failing
                    # the task with them: that failure is the workflow's outcome,
                    # and must not end (or silence) the worker that runs it.
                    with contextlib.suppress(SystemExit, KeyboardInterrupt):
                        handle._run()
        finally:
            asyncio.events._set_running_loop(previous)


@define
class RunOutcome:
    """How a run ended: returned, raised, or suspended with new commands."""

    # "completed" | "failed" | "cancelled" | "suspended" | "continued" (result: the args)
    status: str
    result: Any = None
    error: ErrorInfo | None = None
    commands: list[Command] = field(factory=list)
    values: list[Step] = field(factory=list)
    # Waits (by index) whose branch was cancelled, or that the run ended without:
    # their waiters are removed, so that a later signal goes to a live waiter.
    abandoned: list[int] = field(factory=list)


class ContinueAsNew(BaseException):
    """Raised by ``workflow.continue_as_new``: ends this generation of the job.

    A BaseException, so that workflow code catching ``Exception`` around it
    does not swallow the end of its own generation."""

    def __init__(self, args: list[Any]) -> None:
        super().__init__("continue as new")
        self.next_args = args


class InlineFailed(Exception):
    """An inline command failed with an outcome to record (an entity path error,
    a hook on a closed job...): raised in the workflow at its call, like a
    recorded failure on replay. Anything else an inline executor raises (a lost
    connection, a lost race) aborts the run instead: it is not an outcome."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


InlineExecutor = Callable[["Run", Command], Awaitable[Any]]


class Run:
    """One execution of one thread (main function or hook) of a job, from the top.

    **Activations.** A thread advances in *activations*: the first execution
    is activation 0, and each later run that hands the workflow answers it had
    not seen is the next one. A step records the activation in which its answer
    reached the workflow. Replay re-creates every activation in turn: it runs
    the code until every branch is blocked, hands back the answers of the next
    recorded activation (in index order), and so on; only then does it hand the
    answers that are new (the *live* activation, whose number this run records
    with the first thing it commits). So the branches of an ``asyncio.gather``
    interleave, and take indexes, exactly as they did the first time, whatever
    order the answers came in across runs. Inline commands (entity operations,
    signals, starts) answer within their activation, once every branch is
    blocked, as they did when they ran.
    """

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
        self.execute_inline = execute_inline
        self._next_index = 0
        self.commands: list[Command] = []
        self.inline: list[Command] = []
        self.values: list[Step] = []
        self.recorded: dict[int, Step] = {}  # what this run learned or issued, by index
        self.nondeterminism: NonDeterminismError | None = None
        # Where code and history first disagreed: (index, the recorded step or
        # None, what the code issued there or None) -- what ``hotmesh replay``
        # reports.
        self.divergence: tuple[int, Step | None, tuple[str, str, Any] | None] | None = None
        self._awaiting: dict[int, asyncio.Future[Any]] = {}  # suspending calls, by index
        self._marks: tuple[int, list[int]] | None = None  # (live activation, indexes)
        self.root: asyncio.Task[Any] | None = None
        self._slot: _RunSlot | None = None  # the code's, from execute()
        self._patches: dict[str, bool] = {}  # patched() decisions, fixed for the run
        self._abandoned: set[int] = set()  # cancelled waits already given up
        self.activation = 0  # the last activation this run delivered
        # ``(signal id, data)`` the live activation delivered to waits whose branch
        # was cancelled: handed on (to the next waiter, or kept) by the transaction
        # that records the marks, so exactly once.
        self.handed_on: list[tuple[str, Any]] = []
        # Cooperative cancellation: the delivered cancel request, and whether it
        # waits for the end of a ``workflow.non_cancellable()`` scope.
        self.cancel_delivered = False
        # The worker that caches this run when it suspends (None: not cached);
        # the steps it issues ask for their answers to wake it (sticky runs).
        self.worker_id: str | None = None
        self._cancel_deferred = False
        self._shield_depth = 0
        # Set by a worker with interceptors: each durable call goes through it
        # (index, recorded step, kind, name, args, options), and its per-run info.
        self.outbound: Callable[..., Awaitable[Any]] | None = None
        self.info: Any = None

    # -- used by the workflow API -----------------------------------------
    def _take_index(self, kind: str, name: str, args: Any = None) -> tuple[int, Step | None]:
        index = self._next_index
        self._next_index += 1
        recorded = self.history.get(index)
        if recorded is None:
            return index, None
        if (recorded.kind, recorded.name) != (kind, name):
            self._diverged(index, recorded, (kind, name, args))
            self._nondeterministic(
                f"workflow {self.workflow_name!r} issued {kind} {name!r} at index {index}, "
                f"but its history holds {recorded.kind} {recorded.name!r} there: "
                "the code changed or is not deterministic"
            )
        if kind not in VALUE_KINDS and not same_json(recorded.args, args):
            self._diverged(index, recorded, (kind, name, args))
            self._nondeterministic(
                f"workflow {self.workflow_name!r} issued {kind} {name!r} at index {index} "
                f"with arguments {args!r}, but its history holds {recorded.args!r} there: "
                "the code changed or is not deterministic"
            )
        return index, recorded

    def _diverged(
        self, index: int, recorded: Step | None, issued: tuple[str, str, Any] | None
    ) -> None:
        if self.divergence is None:
            self.divergence = (index, recorded, issued)

    def _nondeterministic(self, message: str) -> None:
        error = NonDeterminismError(message)
        self.nondeterminism = self.nondeterminism or error
        raise error

    async def call(self, kind: str, name: str, args: Any = None, **options: Any) -> Any:
        """A durable call: a command, or its recorded answer when replay reaches the
        point where the workflow received it."""
        index, recorded = self._take_index(kind, name, args)
        if self.outbound is not None:  # interceptors (hotmesh_core.interceptors)
            return await self.outbound(self, index, recorded, kind, name, args, options)
        return await self.issue(index, recorded, kind, name, args, options)

    async def issue(
        self,
        index: int,
        recorded: Step | None,
        kind: str,
        name: str,
        args: Any,
        options: dict[str, Any],
    ) -> Any:
        """The durable call at ``index`` (taken by :meth:`call`) and its answer."""
        future = self.loop.create_future()
        command = Command(index, kind, name, args, options, future)
        if kind in INLINE_KINDS:
            if recorded is not None and recorded.status != "pending":
                command.recorded = recorded
            self.inline.append(command)
        else:
            if recorded is None:
                self.commands.append(command)
            self._awaiting[index] = future
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

    def patched(self, change_id: str, *, deprecated: bool = False) -> bool:
        """Whether this run takes the new code path of ``change_id``.

        A run that reaches the call where its history has nothing yet (a new
        run, or one that got here after the deploy) records a marker and takes
        the new path. A history recorded before the change holds another call
        at this index: the old path, and no index is taken, so the old calls
        keep theirs. ``deprecated`` (``workflow.deprecate_patch``): the new path
        always; a marker in the history is accepted, none is recorded.
        """
        known = self._patches.get(change_id)
        if known is not None:
            return known
        index = self._next_index
        recorded = self.history.get(index)
        if recorded is not None and (recorded.kind, recorded.name) == ("patch", change_id):
            self._next_index += 1
            decision = True
        elif deprecated:
            decision = True
        elif recorded is not None or index in self.recorded:
            decision = False
        else:
            self._next_index += 1
            step = Command(index, "patch", change_id).step(self, status="done", result=True)
            self.values.append(step)
            self.recorded[index] = step
            decision = True
        self._patches[change_id] = decision
        return decision

    def take_values(self) -> list[Step]:
        values, self.values = self.values, []
        return values

    def peek_marks(self) -> tuple[int, list[int]] | None:
        """The live activation's deliveries, left for :meth:`take_marks`."""
        return self._marks

    def take_marks(self) -> tuple[int, list[int]] | None:
        """The live activation's deliveries, once: the first transaction this run
        commits records them (``Store.mark_delivered``) with its other writes."""
        marks, self._marks = self._marks, None
        return marks

    # -- driving -----------------------------------------------------------
    async def execute(
        self, fn: Callable[..., Any], args: list[Any], *, live: bool = True
    ) -> RunOutcome:
        """Run the function from the top over the history, then deliver what is new
        (``live=False``: only what the history says was delivered, as a replay
        check does)."""
        context = contextvars.copy_context()
        self._slot = _RunSlot(self)
        context.run(_current_run.set, self._slot)
        # The task copies the current context at creation: create it inside ours.
        root = context.run(self.loop.create_task, _call(fn, args))
        self.root = root
        await self._settle()
        for activation, steps in self._recorded_activations():
            if self.nondeterminism is not None or root.done():
                break
            self._deliver(steps, activation)
            await self._settle()
            self.activation = activation
        return await self._live(deliver=live)

    async def resume(self, answers: list[Step], now: float) -> RunOutcome:
        """Continue this suspended run with answers it has not seen: the next
        activation, without replaying the ones before (a worker's cache of
        suspended runs keeps the cost of a step constant, however long the
        history). Only for a run whose last outcome was committed as it was."""
        assert self.root is not None, "resume() follows execute()"
        self.history.update(self.recorded)
        for step in answers:
            self.history[step.index] = step
        self.recorded = {}
        self.commands = []
        self.handed_on = []
        self.loop._now = now
        return await self._live()

    async def _live(self, *, deliver: bool = True) -> RunOutcome:
        root = self.root
        assert root is not None
        if deliver and self.nondeterminism is None and not root.done():
            live = self._new_answers()
            if live:
                activation = self._live_activation()
                self._marks = (activation, [step.index for step in live])
                for step in live:
                    self.recorded[step.index] = revise(step, activation=activation)
                self._deliver(live, activation, live=True)
                await self._settle()
                self.activation = activation
        if self.nondeterminism is not None:
            # What the code drew after it disagreed with its history is not
            # recorded: a fixed version resumes (``handle.resume()``) on the
            # history as it was.
            self.take_values()
            return RunOutcome(
                "failed",
                error=error_info(self.nondeterminism),
                abandoned=self.abandoned_waits(ended=True),
            )
        if root.done():
            if self._slot is not None:  # its code has ended: break the cycle (_RunSlot)
                self._slot.run = None
            raised = root.exception() if not root.cancelled() else asyncio.CancelledError()
            if isinstance(raised, ContinueAsNew):
                if self.thread is not None:
                    error = HotMeshError("continue_as_new is for a job's main function, not hooks")
                    return RunOutcome(
                        "failed",
                        error=error_info(error),
                        values=self.take_values(),
                        abandoned=self.abandoned_waits(ended=True),  # as for any end
                    )
                return RunOutcome("continued", result=raised.next_args, values=self.take_values())
            abandoned = self.abandoned_waits(ended=True)
            if isinstance(raised, asyncio.CancelledError) and self.cancel_delivered:
                reason = self.history[CANCEL_INDEX].result
                message = f"workflow {self.job.id!r} was cancelled" + (
                    f": {reason}" if reason else ""
                )
                return RunOutcome(
                    "cancelled",
                    error=ErrorInfo(WorkflowCancelled.__name__, storable_text(message)),
                    values=self.take_values(),
                    abandoned=abandoned,
                )
            if raised is not None:
                return RunOutcome(
                    "failed",
                    error=error_info(raised),
                    values=self.take_values(),
                    abandoned=abandoned,
                )
            return RunOutcome(
                "completed", result=root.result(), values=self.take_values(), abandoned=abandoned
            )
        for command in self.commands:
            self.recorded[command.index] = command.step(self)
        return RunOutcome(
            "suspended",
            commands=self.commands,
            values=self.take_values(),
            abandoned=self.abandoned_waits(ended=False),
        )

    def abandoned_waits(self, *, ended: bool) -> list[int]:
        """The waits nobody will receive: cancelled, or left when the thread ended."""
        kinds = {c.index: c.kind for c in self.commands}

        def kind(index: int) -> str | None:
            step = self.history.get(index)
            return kinds.get(index) if step is None else step.kind

        abandoned = sorted(
            index
            for index, future in self._awaiting.items()
            if (ended or (future.cancelled() and index not in self._abandoned))
            and kind(index) == "wait"
        )
        # Abandoned once, by the transaction this is for: a resumed run must not
        # abandon them again at every later step (its answer, should a signal
        # have got there first, is still delivered to the cancelled future and
        # handed on).
        self._abandoned.update(abandoned)
        return abandoned

    def step_at(self, index: int) -> Step:
        """The step this run knows at ``index`` (what it recorded, else its history)."""
        return self.recorded.get(index) or self.history[index]

    @property
    def undelivered(self) -> list[int]:
        """Indexes whose answer this run has not been handed yet, cancelled branches'
        included (a signal may have reached one: it is handed on when it comes),
        and the main thread's cancel request until it is delivered."""
        indexes = list(self._awaiting)
        if self.thread is None and not self.cancel_delivered:
            indexes.append(CANCEL_INDEX)
        return indexes

    # -- cooperative cancellation -----------------------------------------
    def _cancel(self) -> None:
        """Deliver the cancel request: CancelledError at the workflow's current
        await, or at the end of the ``non_cancellable`` scope it is in."""
        self.cancel_delivered = True
        if self._shield_depth > 0:
            self._cancel_deferred = True
        elif self.root is not None and not self.root.done():
            self.root.cancel()

    @property
    def cancel_held(self) -> bool:
        """A delivered cancel that a ``non_cancellable`` scope still holds: the
        workflow has not seen it (a ``continue_as_new`` in the scope carries it
        over to the next generation)."""
        return self._cancel_deferred

    def enter_shield(self) -> None:
        self._shield_depth += 1

    def exit_shield(self, *, discarded: bool = False) -> bool:
        """Leave a ``non_cancellable`` scope; True if a cancel waited for it (and
        is now raised). ``discarded``: the run is being thrown away."""
        self._shield_depth -= 1
        if self._shield_depth == 0 and self._cancel_deferred and not discarded:
            self._cancel_deferred = False
            if self.root is not None and not self.root.done():
                self.root.cancel()
                return True
        return False

    @property
    def awaiting(self) -> list[int]:
        """Indexes of the suspending calls the workflow still waits on."""
        return [index for index, future in self._awaiting.items() if not future.done()]

    async def _settle(self) -> None:
        """Run until every branch is blocked on a suspending call (or done): inline
        commands answer in batches, recorded ones from history, new ones executed."""
        while True:
            self.loop.run_ready()
            if self.nondeterminism is not None or not self.inline:
                return
            batch, self.inline = self.inline, []
            for command in batch:
                assert command.future is not None
                if command.future.done():
                    continue  # its branch was cancelled meanwhile
                if command.recorded is not None:
                    if command.recorded.status == "failed":
                        command.future.set_exception(exception_for(command.recorded))
                    else:
                        command.future.set_result(command.recorded.result)
                    continue
                try:
                    result = await self.execute_inline(self, command)
                except InlineFailed as failed:  # recorded as a failed step; raised in the workflow
                    self.recorded[command.index] = revise(
                        command.step(self), status="failed", error=error_info(failed.error)
                    )
                    command.future.set_exception(failed.error)
                else:
                    self.recorded[command.index] = command.step(self, status="done", result=result)
                    command.future.set_result(result)

    def _recorded_activations(self) -> list[tuple[int, list[Step]]]:
        by_activation: dict[int, list[Step]] = {}
        for step in self.history.values():
            if step.activation is not None and (
                step.kind in SUSPENDING_KINDS or step.index == CANCEL_INDEX
            ):
                by_activation.setdefault(step.activation, []).append(step)
        return sorted(by_activation.items())

    def _live_activation(self) -> int:
        # The thread's next activation (mark_delivered's compare-and-set): one
        # past the last this run delivered, which is the stored one, except
        # after ``handle.resume()``, which moves the stored one on by an
        # activation that delivers nothing (a gap that replay steps over).
        stored = (self.thread or self.job).activation
        return max(self.activation, stored) + 1

    def _new_answers(self) -> list[Step]:
        """Answered steps the workflow has not received yet, in index order."""
        answers = []
        request = self.history.get(CANCEL_INDEX)
        if (
            self.thread is None
            and request is not None
            and request.activation is None
            and not self.cancel_delivered
        ):
            answers.append(request)  # first: the cancel meets the awaits it finds
        for index in sorted(self._awaiting):
            step = self.history.get(index)
            if (
                step is not None
                and step.kind in SUSPENDING_KINDS
                and step.status != "pending"
                and step.activation is None
            ):
                answers.append(step)
        return answers

    def _deliver(self, steps: list[Step], activation: int, *, live: bool = False) -> None:
        for step in sorted(steps, key=lambda s: s.index):
            if step.index == CANCEL_INDEX:
                if self.thread is None and not self.cancel_delivered:
                    self._cancel()
                continue
            future = self._awaiting.pop(step.index, None)
            if future is None:
                self._diverged(step.index, step, None)
                self.nondeterminism = self.nondeterminism or NonDeterminismError(
                    f"the history of workflow {self.workflow_name!r} answers a"
                    f" {step.kind} {step.name!r} at index {step.index} in activation"
                    f" {activation}, but the code had not issued it by then: the code"
                    " changed or is not deterministic"
                )
                return
            if future.done():
                # Its branch was cancelled: the answer goes nowhere, as it did. A
                # signal that reached the wait before its waiter was removed is
                # not the workflow's to drop: hand it on (once: with the marks).
                if live and step.kind == "wait" and step.status == "done":
                    self.handed_on.append((step.name, step.result))
                continue
            if step.status == "failed":
                future.set_exception(exception_for(step))
            else:
                future.set_result(step.result)

    def known_history(self) -> list[Step]:
        """The history as this run left it: what it loaded plus what it recorded."""
        return list({**self.history, **self.recorded}.values())


def same_json(recorded: Any, issued: Any) -> bool:
    """Whether two JSON values are equal as stored values: numbers compare by value
    (a database may hand back 1e300 as an integer, or 2.0 as 2)."""
    if isinstance(recorded, bool) or isinstance(issued, bool):
        return recorded is issued or (type(recorded) is type(issued) and recorded == issued)
    if isinstance(recorded, (int, float)) and isinstance(issued, (int, float)):
        return recorded == issued or float(recorded) == float(issued)
    if isinstance(recorded, dict) and isinstance(issued, dict):
        return recorded.keys() == issued.keys() and all(
            same_json(recorded[key], issued[key]) for key in recorded
        )
    if isinstance(recorded, list) and isinstance(issued, list):
        return len(recorded) == len(issued) and all(
            same_json(a, b) for a, b in zip(recorded, issued, strict=True)
        )
    return bool(recorded == issued)


async def _call(fn: Callable[..., Any], args: list[Any]) -> Any:
    result = fn(*args)
    if asyncio.iscoroutine(result):
        result = await result
    return result
