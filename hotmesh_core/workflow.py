"""Functions used inside workflows and hooks (``from hotmesh_core import workflow``).

Each durable call takes the next execution index of the run (see
:mod:`hotmesh_core.replay`).  Rules users must follow, as with any replaying
engine: a workflow talks to the world only through these functions; it uses
``workflow.now()/random()/uuid4()`` instead of the stdlib; it does not use
asyncio timers (``workflow.sleep_for`` is the durable one).
"""

from __future__ import annotations

import asyncio
import random as _random
import uuid as _uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, NoReturn

from attrs import define

from .config import validate_name, validate_signal_id, validate_workflow_id
from .durations import Duration, parse_duration
from .engine import DEFAULT_SIGNAL_EXPIRE
from .entity import WorkflowEntity, WorkflowSearch
from .errors import HookDepthExceeded
from .replay import ContinueAsNew, current_run
from .retry import RetryPolicy
from .serde import ensure_json

__all__ = [
    "MAX_HOOK_DEPTH",
    "ActivityProxy",
    "WorkflowInfo",
    "continue_as_new",
    "deprecate_patch",
    "entity",
    "exec_child",
    "exec_hook",
    "hook",
    "info",
    "non_cancellable",
    "now",
    "patched",
    "proxy_activities",
    "random",
    "search",
    "signal",
    "sleep_for",
    "start_child",
    "uuid4",
    "wait_for",
]


@define(frozen=True)
class WorkflowInfo:
    workflow_id: str
    workflow_name: str
    entity: str
    task_queue: str
    dimension: str
    is_hook: bool


def info() -> WorkflowInfo:
    run = current_run()
    return WorkflowInfo(
        run.job.id,
        run.workflow_name,
        run.job.entity,
        run.task_queue,
        run.dimension,
        run.thread is not None,
    )


async def entity() -> WorkflowEntity:
    """The job's entity (a hook gets the entity of the job it runs against)."""
    return WorkflowEntity(current_run())


def search() -> WorkflowSearch:
    """The job's search fields: ``await workflow.search().set({...})``."""
    return WorkflowSearch(current_run())


def _args(args: Iterable[Any] | None, what: str) -> list[Any]:
    return list(ensure_json(list(args or []), what=what))


class ActivityProxy:
    """``acts.name(*args)`` schedules activity ``name`` and returns its recorded result."""

    def __init__(self, names: dict[str, str], options: dict[str, Any]) -> None:
        self._names = names
        self._options = options

    def __getattr__(self, attribute: str) -> Callable[..., Any]:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        try:
            name = self._names[attribute]
        except KeyError:
            known = ", ".join(sorted(self._names)) or "none"
            raise AttributeError(
                f"no activity {attribute!r} in this proxy (known: {known})"
            ) from None

        async def call(*args: Any) -> Any:
            return await current_run().call(
                "activity",
                name,
                _args(args, f"the arguments of activity {name!r}"),
                **self._options,
            )

        call.__name__ = attribute
        return call


def proxy_activities(
    activities: Iterable[Callable[..., Any] | str] | Mapping[str, Callable[..., Any]] | None = None,
    *,
    task_queue: str | None = None,
    retry_policy: RetryPolicy | None = None,
    start_to_close: Duration = "5 minutes",
) -> ActivityProxy:
    """Activities by function (registered under ``__name__``), by name, or a ``{name: fn}`` map."""
    names: dict[str, str] = {}
    if isinstance(activities, Mapping):
        for key in activities:
            names[key] = validate_name(key, "activity name")
    else:
        for item in activities or []:
            name = validate_name(
                item if isinstance(item, str) else getattr(item, "__name__", None),
                "activity name",
            )
            names[name] = name
    if task_queue is not None:
        validate_name(task_queue, "task_queue")
    options = {
        "task_queue": task_queue,
        "retry": (retry_policy or RetryPolicy()).to_record(),
        "start_to_close": parse_duration(start_to_close),
    }
    return ActivityProxy(names, options)


async def sleep_for(duration: Duration) -> None:
    """Sleep durably: no worker is busy meanwhile; survives restarts."""
    seconds = parse_duration(duration)
    await current_run().call("sleep", "sleep", seconds, seconds=seconds)


async def wait_for(signal_id: str, timeout: Duration | None = None) -> Any:
    """Suspend until a signal with ``signal_id`` arrives; return its data.

    Raises :class:`~hotmesh_core.errors.WaitTimeout` after ``timeout``; a signal
    arriving later is kept for the next waiter.
    """
    seconds = None if timeout is None else parse_duration(timeout)
    return await current_run().call(
        "wait",
        _signal_name(signal_id),
        {"timeout": seconds},
        signal_id=signal_id,
        timeout=seconds,
    )


def _signal_name(signal_id: str) -> str:
    return validate_signal_id(signal_id)


async def signal(signal_id: str, data: Any = None, *, expire: Duration | None = None) -> None:
    """Deliver a signal: to its one waiter, or kept for the first one (``expire``, 1 day)."""
    payload = ensure_json(data, what="signal data")
    keep = DEFAULT_SIGNAL_EXPIRE if expire is None else parse_duration(expire)
    await current_run().call(
        "signal",
        _signal_name(signal_id),
        {"data": payload},
        signal_id=signal_id,
        data=payload,
        expire=keep,
    )


def _child_options(
    entity: str,
    workflow_id: str | None,
    task_queue: str | None,
    kind: str,
    expire: Duration | None,
    persistent: bool,
) -> dict[str, Any]:
    run = current_run()
    child_id = workflow_id
    if child_id is None:
        # Deterministic: derived from the parent id and the index this call will take.
        child_id = f"{run.job.id}-{kind}{run.dimension and '-' + run.dimension}-{run._next_index}"
    return {
        "entity": validate_name(entity, "entity"),
        "workflow_id": validate_workflow_id(child_id),
        "task_queue": validate_name(
            run.task_queue if task_queue is None else task_queue, "task_queue"
        ),
        "expire": None if expire is None else parse_duration(expire),
        "persistent": persistent,
    }


async def exec_child(
    entity: str,
    workflow_name: str,
    workflow_id: str | None = None,
    args: Iterable[Any] | None = None,
    task_queue: str | None = None,
    *,
    expire: Duration | None = None,
    persistent: bool = False,
) -> Any:
    """Start a child job with its own entity and wait for its result."""
    options = _child_options(entity, workflow_id, task_queue, "c", expire, persistent)
    return await current_run().call(
        "child",
        validate_name(workflow_name, "workflow_name"),
        _args(args, "child arguments"),
        **options,
    )


async def start_child(
    entity: str,
    workflow_name: str,
    workflow_id: str | None = None,
    args: Iterable[Any] | None = None,
    task_queue: str | None = None,
    *,
    expire: Duration | None = None,
    persistent: bool = False,
) -> str:
    """Start a child job without waiting; return its workflow id."""
    options = _child_options(entity, workflow_id, task_queue, "s", expire, persistent)
    child_id: str = await current_run().call(
        "start_child",
        validate_name(workflow_name, "workflow_name"),
        _args(args, "child arguments"),
        **options,
    )
    return child_id


# How deeply hooks may nest: a hook started by a hook started by ... the job.  A
# hook that starts itself would otherwise spawn threads without end.  Each level
# adds a segment to the dotted dimension (the job is "", its hook "g3", that
# hook's hook "gg3.5"), and the dimension is part of every exec_hook signal id
# (at most 255 characters), so the limit also keeps those ids short.
MAX_HOOK_DEPTH = 32


def _hook_depth(dimension: str) -> int:
    """How many hooks deep a dimension is: 0 for the job, 1 for its hooks, ..."""
    return dimension.count(".") + 1 if dimension else 0


def _hook_options(task_queue: str | None, prefix: str) -> dict[str, Any]:
    run = current_run()
    depth = _hook_depth(run.dimension) + 1
    if depth > MAX_HOOK_DEPTH:
        # Raised before anything is recorded, and raised again at the same call on
        # every replay (the depth depends only on the dimension): deterministic.
        raise HookDepthExceeded(
            f"hooks may nest at most {MAX_HOOK_DEPTH} deep: this hook ({run.dimension!r} "
            f"of {run.job.id!r}) is {depth - 1} deep and cannot start another"
        )
    dimension = f"{prefix}{run.dimension and run.dimension + '.'}{run._next_index}"
    return {
        "dimension": dimension,
        "task_queue": validate_name(
            run.task_queue if task_queue is None else task_queue, "task_queue"
        ),
    }


async def exec_hook(
    task_queue: str | None,
    workflow_name: str,
    args: Iterable[Any] | None = None,
    timeout: Duration | None = None,
) -> Any:
    """Run hook ``workflow_name`` against this job's entity and wait for its signal.

    The hook receives ``args`` plus a last argument ``{"signal": id}`` and
    finishes with ``await workflow.signal(config["signal"], data)``; this
    returns ``data``.  A hook that returns without signalling yields None; one
    that fails raises :class:`~hotmesh_core.errors.WorkflowFailed` here.
    """
    run = current_run()
    options = _hook_options(task_queue, "h")
    signal_id = f"hook:{run.job.id}:{options['dimension']}"
    hook_args = [*_args(args, "hook arguments"), {"signal": signal_id}]
    seconds = None if timeout is None else parse_duration(timeout)
    return await run.call(
        "exec_hook",
        validate_name(workflow_name, "workflow_name"),
        hook_args,
        signal_id=signal_id,
        timeout=seconds,
        **options,
    )


async def hook(
    task_queue: str | None, workflow_name: str, args: Iterable[Any] | None = None
) -> str:
    """Start hook ``workflow_name`` against this job's entity without waiting."""
    options = _hook_options(task_queue, "g")
    hook_id: str = await current_run().call(
        "hook",
        validate_name(workflow_name, "workflow_name"),
        _args(args, "hook arguments"),
        **options,
    )
    return hook_id


async def continue_as_new(*args: Any) -> NoReturn:
    """End this generation and start the workflow again, same id, with ``args``.

    The main thread's history is deleted (it stays bounded however long the
    workflow lives); the entity, its change log, hooks and children stay, and
    buffered signals wait for the next generation. ``handle.result()`` waits
    for the last generation; ``export()`` says which one it shows. Never
    returns; steps still pending in other branches are abandoned.
    """
    current_run()  # only inside a workflow
    raise ContinueAsNew(_args(args, "the arguments of continue_as_new"))


class _NonCancellable:
    """``async with workflow.non_cancellable():`` see :func:`non_cancellable`."""

    def __init__(self) -> None:
        self._run = current_run()

    async def __aenter__(self) -> None:
        self._run.enter_shield()

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is GeneratorExit or exc_type is ContinueAsNew:
            # A suspended run being discarded (evicted, superseded): nothing
            # more runs, and a coroutine that is closing must not await. Or the
            # generation ends here: a cancel held stays held, for the next one.
            self._run.exit_shield(discarded=True)
        elif self._run.exit_shield() and exc_type is None:
            # The cancel that waited for the scope: raised here, now. An error
            # leaving the scope goes on as it is, and the cancel stays requested
            # (asyncio's rule): it is raised at the next await, and a workflow
            # that catches the error and returns without one ends cancelled.
            await asyncio.sleep(0)


def non_cancellable() -> _NonCancellable:
    """A scope that a cancel request (``handle.cancel()``) does not interrupt::

        async with workflow.non_cancellable():
            await acts.refund(order)      # runs to the end, cancel or not
            await entity.set({"refunded": True})

    A cancel that arrives while the workflow is inside it is held, and raised as
    ``asyncio.CancelledError`` when the scope ends. Scopes nest. ``interrupt()``
    is the hard stop and is not held.
    """
    return _NonCancellable()


def patched(change_id: str) -> bool:
    """Guard a code change so running workflows keep replaying: ``True`` for runs
    that reach this point with the new code (new runs, and older runs that get
    here after the deploy), ``False`` when replaying a history recorded before
    the change. Keep both paths until no run from before the change remains::

        if workflow.patched("v2-score"):
            score = await acts.score_v2(text)
        else:
            score = await acts.score(text)
    """
    return current_run().patched(validate_name(change_id, "change_id"))


def deprecate_patch(change_id: str) -> None:
    """The second step of removing a patch: once no run from before the change
    remains, keep only the new path and call this where ``patched`` was; runs
    that recorded the marker still replay. Remove it once those are gone too."""
    current_run().patched(validate_name(change_id, "change_id"), deprecated=True)


def now() -> datetime:
    """The current time, recorded: a replay sees the same instant."""
    run = current_run()
    stamp: float = run.value("now", run.clock)
    return datetime.fromtimestamp(stamp, tz=timezone.utc)


def random() -> float:
    """A random float in [0, 1), recorded."""
    value: float = current_run().value("random", _random.random)
    return value


def uuid4() -> str:
    """A random UUID (as text), recorded."""
    value: str = current_run().value("uuid4", lambda: str(_uuid.uuid4()))
    return value
