"""Interceptors: your code around starts, workflow runs, durable calls and activities.

Subclass :class:`Interceptor`, override the hooks you need, and register it with
``MemFlow.init(..., interceptors=[...])`` (every worker of that ``MemFlow``, and
its client's ``start``) or ``mf.worker(..., interceptors=[...])`` (that worker
only, after the ``MemFlow``'s). The first interceptor of the list is the
outermost: it sees the call first and the result last. Each wrapping hook gets
the call's description and ``proceed``; it must await ``proceed()`` exactly once
and return (or transform, for inbound and activity hooks) what it returns.

* :meth:`Interceptor.start_workflow` -- around ``mf.workflow.start`` (client
  side): may add :attr:`StartInput.headers`, which are stored with the job.
* :meth:`Interceptor.execute_workflow` -- around one *run* of a workflow or
  hook function by a worker: the replay of its history plus the new part, up
  to the point where every branch waits (or the function returned). It runs in
  the worker's event loop, so it may do I/O.
* :meth:`Interceptor.workflow_call` -- around each durable call a workflow
  makes (activity, child, start_child, hook, exec_hook, signal, sleep, wait,
  entity operation). It runs *inside the workflow* (the replay loop): no I/O,
  no ``asyncio.sleep``, nothing non-deterministic may change what the workflow
  does. :attr:`OutboundCall.replaying` says whether the call's answer is in the
  history (a re-run of code that already ran) or the call is new; only a new
  call's :attr:`OutboundCall.headers` are used (for an activity: its task; a
  child: the child job). Arguments are not the hook's to change: what is
  recorded is what the workflow asked for.
* :meth:`Interceptor.execute_activity` -- around each attempt of an activity;
  :func:`hotmesh_core.activity.info` is set while it runs.
* :meth:`Interceptor.worker_event` -- plain notifications from a worker (no
  wrapping): ``claimed``, ``failed``, ``lease_lost``, ``dead_letter``,
  ``backlog``; what metrics are made of (:mod:`hotmesh_core.otel`).

**Headers** are a JSON dict of strings that travels with a job: given to (or
added at) ``start``, they reach every run of the job and of its hooks, every
activity it dispatches (``activity.info().headers``) and every child it
starts, which inherits them. They are stored in the job's search fields under
the reserved key ``"$hotmesh:headers"``, so they survive restarts and need no
schema change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from attrs import define, field

from .errors import SerializationError

__all__ = [
    "HEADERS_KEY",
    "ActivityInfo",
    "Interceptor",
    "OutboundCall",
    "StartInput",
    "WorkerEvent",
    "WorkflowInfo",
    "check_headers",
    "job_headers",
]

#: The search field holding a job's headers.
HEADERS_KEY = "$hotmesh:headers"

Proceed = Callable[[], Awaitable[Any]]


def check_headers(headers: Any, where: str) -> dict[str, str]:
    """``headers`` as a fresh dict, or ``SerializationError`` naming what is not a string."""
    if not isinstance(headers, dict):
        raise SerializationError(f"{where}: headers must be a dict, not {type(headers).__name__}")
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise SerializationError(
                f"{where}: headers map strings to strings; {key!r}: {value!r} is not"
            )
    return dict(headers)


def job_headers(search: dict[str, Any]) -> dict[str, str]:
    """The headers stored in a job's search fields (a copy; ``{}`` if none)."""
    headers = search.get(HEADERS_KEY)
    return dict(headers) if isinstance(headers, dict) else {}


@define
class StartInput:
    """A workflow being started (``mf.workflow.start``)."""

    workflow_id: str
    workflow_name: str
    entity: str
    task_queue: str
    headers: dict[str, str] = field(factory=dict)


@define
class WorkflowInfo:
    """The workflow (or hook) thread a worker runs.

    One object per in-memory run: a run that a worker keeps cached and resumes
    keeps its ``WorkflowInfo``, so ``state`` is where an interceptor keeps what
    it needs between :meth:`Interceptor.execute_workflow` and the
    :meth:`Interceptor.workflow_call` of the same run (tracing keeps the span).
    """

    workflow_id: str
    workflow_name: str
    dimension: str
    task_queue: str
    headers: dict[str, str]
    #: True when this execution starts by replaying recorded history.
    replaying: bool = False
    #: True while the worker resumes a cached run with new answers.
    resumed: bool = False
    state: dict[str, Any] = field(factory=dict)

    @property
    def is_hook(self) -> bool:
        return self.dimension != ""


@define
class OutboundCall:
    """One durable call a workflow makes."""

    kind: str
    name: str
    args: Any
    index: int
    #: The answer is recorded (or the call was already issued): code re-run by replay.
    replaying: bool
    workflow: WorkflowInfo
    #: What the call carries (for a new activity, child or start_child call).
    headers: dict[str, str] = field(factory=dict)
    options: dict[str, Any] = field(factory=dict)


@define
class ActivityInfo:
    """The activity attempt being run (``activity.info()``)."""

    workflow_id: str
    workflow_name: str
    dimension: str
    activity_name: str
    attempt: int
    task_queue: str
    headers: dict[str, str] = field(factory=dict)
    index: int | None = None
    task_id: str = ""


@define
class WorkerEvent:
    """Something a worker did: ``kind`` is ``claimed`` (``count`` tasks),
    ``failed`` (an activity attempt or an engine task failed), ``lease_lost``,
    ``dead_letter`` or ``backlog`` (``backlog``: the queue's ready tasks)."""

    kind: str
    queue: str
    worker_id: str
    count: int = 1
    name: str = ""
    task_kind: str = ""
    backlog: Sequence[Any] = ()
    now: float = 0.0


class Interceptor:
    """Override any of these; the defaults pass everything through."""

    async def start_workflow(self, start: StartInput, proceed: Proceed) -> Any:
        return await proceed()

    async def execute_workflow(self, info: WorkflowInfo, proceed: Proceed) -> Any:
        return await proceed()

    async def workflow_call(self, call: OutboundCall, proceed: Proceed) -> Any:
        return await proceed()

    async def execute_activity(self, info: ActivityInfo, proceed: Proceed) -> Any:
        return await proceed()

    def worker_event(self, event: WorkerEvent) -> None:
        return None


def chain(
    interceptors: Sequence[Interceptor], hook: str, subject: Any, innermost: Proceed
) -> Awaitable[Any]:
    """Call ``hook`` of each interceptor around ``innermost`` (the first outermost)."""
    proceed = innermost
    for interceptor in reversed(interceptors):
        method = getattr(interceptor, hook)

        def wrapped(method: Any = method, inner: Proceed = proceed) -> Awaitable[Any]:
            result: Awaitable[Any] = method(subject, inner)
            return result

        proceed = wrapped
    return proceed()


def notify(interceptors: Sequence[Interceptor], event: WorkerEvent) -> None:
    """Hand ``event`` to each interceptor; one that raises does not stop the worker."""
    for interceptor in interceptors:
        try:
            interceptor.worker_event(event)
        except Exception:  # an observer's bug must not break the work it observes
            import logging

            logging.getLogger("hotmesh.interceptors").exception(
                "interceptor %r failed on %s", interceptor, event.kind
            )
