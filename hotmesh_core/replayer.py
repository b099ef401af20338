"""Replay recorded histories against the current code, before deploying it.

A change to a workflow function is safe for the runs already under way only if
replaying their histories issues the same calls, with the same arguments, at
the same indexes. :func:`replay_runs` (from a backend) and :func:`replay_export`
(from ``export`` JSON files) re-run each history on the replay engine, with
nothing executed and nothing written, and report per run the first index where
code and history disagree, with both calls. ``hotmesh replay`` is the command
users run in CI; it exits non-zero when any run disagrees.

What counts as a disagreement, by the status of the run:

* a call at an index whose history holds another call, or other arguments
  (every status);
* a recorded answer the code never asked for by the time it was delivered, or
  a recorded step the code never reaches (every status);
* an inline call (entity operation, signal, start) beyond the history: the
  replay of delivered activations should find every one recorded;
* a completed or cancelled run whose code, replayed, does not end the same way
  (it suspends on a new call, or fails).

A run that failed with ``NonDeterminismError`` may run past its history: that
is what a fix for it does (``handle.resume()`` then carries it on).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import define
from cattrs.errors import BaseValidationError

from .errors import HotMeshError
from .models import MAIN_THREAD, ErrorInfo, Job, Step, Thread
from .protocols import Backend
from .replay import CANCEL_INDEX, Command, Run, RunAborted
from .serde import structure
from .worker import Functions, registry

__all__ = ["Divergence", "ReplayResult", "load_export", "replay_export", "replay_runs"]


@define(frozen=True)
class Divergence:
    """The first index where code and history disagree. ``recorded`` and
    ``issued`` are ``{"kind", "name", "args"}``, or None where there is nothing."""

    index: int
    dimension: str
    recorded: dict[str, Any] | None
    issued: dict[str, Any] | None
    message: str


@define(frozen=True)
class ReplayResult:
    """One run replayed: ``ok``, or the divergence (or why it could not replay)."""

    workflow_id: str
    workflow_name: str
    status: str
    ok: bool
    divergence: Divergence | None = None
    error: str | None = None

    def describe(self) -> str:
        if self.ok:
            return f"ok        {self.workflow_id} ({self.workflow_name}, {self.status})"
        if self.error is not None:
            return f"error     {self.workflow_id} ({self.workflow_name}): {self.error}"
        assert self.divergence is not None
        d = self.divergence
        where = f"index {d.index}" + (f" of hook {d.dimension}" if d.dimension else "")
        return (
            f"DIVERGED  {self.workflow_id} ({self.workflow_name}, {self.status}) at {where}\n"
            f"          history: {_call_text(d.recorded)}\n"
            f"          code:    {_call_text(d.issued)}\n"
            f"          {d.message}"
        )


def _call_text(call: dict[str, Any] | None) -> str:
    if call is None:
        return "(nothing)"
    return f"{call['kind']} {call['name']!r} args={json.dumps(call['args'], default=str)}"


def _call(kind: str, name: str, args: Any) -> dict[str, Any]:
    return {"kind": kind, "name": name, "args": args}


class _BeyondHistory(RunAborted):
    """The code issued an inline call the history does not hold."""

    def __init__(self, command: Command) -> None:
        super().__init__(f"{command.kind} {command.name!r} at index {command.index}")
        self.command = command


async def _refuse_inline(run: Run, command: Command) -> Any:
    raise _BeyondHistory(command)


async def replay_thread(
    fn: Callable[..., Any],
    job: Job,
    thread: Thread | None,
    history: Sequence[Step],
) -> Divergence | None:
    """Replay one thread's history (the main function's, or a hook's) under ``fn``;
    the first divergence, or None when code and history agree."""
    dimension = MAIN_THREAD if thread is None else thread.dimension
    run = Run(
        job=job,
        thread=thread,
        history=list(history),
        now=job.updated_at,
        execute_inline=_refuse_inline,
        clock=lambda: job.updated_at,
    )
    args = list(thread.args if thread is not None else job.args)
    status = job.status if thread is None else thread.status
    try:
        outcome = await run.execute(fn, args, live=False)
    except _BeyondHistory as beyond:
        command = beyond.command
        if status == "failed" and _failed_by_nondeterminism(job, thread):
            return None
        return Divergence(
            command.index,
            dimension,
            None,
            _call(command.kind, command.name, command.args),
            "the code issues a call the history does not hold where it had delivered"
            " every answer: the code changed",
        )
    if run.divergence is not None:
        index, recorded, issued = run.divergence
        return Divergence(
            index,
            dimension,
            None if recorded is None else _call(recorded.kind, recorded.name, recorded.args),
            None if issued is None else _call(*issued),
            str(run.nondeterminism),
        )
    if status == "failed" and _failed_by_nondeterminism(job, thread):
        return None  # a fix may go past the history: handle.resume() carries it on
    taken = run._next_index
    unreached = sorted(i for i, step in run.history.items() if i >= taken and step.kind != "patch")
    if unreached:
        step = run.history[unreached[0]]
        return Divergence(
            step.index,
            dimension,
            _call(step.kind, step.name, step.args),
            None,
            f"the history holds {step.kind} {step.name!r} at index {step.index}, but the"
            f" code {_ended(outcome.status)} before it: the code changed",
        )
    if status in ("completed", "cancelled") and outcome.status == "suspended":
        first = outcome.commands[0] if outcome.commands else None
        return Divergence(
            first.index if first is not None else taken,
            dimension,
            None,
            None if first is None else _call(first.kind, first.name, first.args),
            f"the run {status}, but the code, replayed, waits for more: the code changed",
        )
    if status == "completed" and outcome.status == "failed":
        error = outcome.error or ErrorInfo("HotMeshError", "")
        return Divergence(
            taken,
            dimension,
            None,
            None,
            f"the run completed, but the code, replayed, fails: {error.type_name}: {error.message}",
        )
    return None


def _ended(status: str) -> str:
    return {"suspended": "waits for other calls", "completed": "returns"}.get(status, "fails")


def _failed_by_nondeterminism(job: Job, thread: Thread | None) -> bool:
    error = job.error if thread is None else thread.error
    return error is not None and error.type_name == "NonDeterminismError"


def _not_given(job: Job, what: str, name: str) -> ReplayResult:
    error = f"{what} {name!r} is not among the workflows given"
    return ReplayResult(job.id, job.workflow_name, job.status, ok=False, error=error)


async def replay_job(
    workflows: Mapping[str, Callable[..., Any]],
    job: Job,
    steps: Sequence[Step],
    threads: Sequence[Thread] = (),
) -> ReplayResult:
    """Replay a job's main thread and hooks; the first divergence of any."""
    fn = workflows.get(job.workflow_name)
    if fn is None:
        return _not_given(job, "workflow", job.workflow_name)
    by_dimension: dict[str, list[Step]] = {}
    for step in steps:
        if step.index != CANCEL_INDEX or step.dimension == MAIN_THREAD:
            by_dimension.setdefault(step.dimension, []).append(step)
    divergence = await replay_thread(fn, job, None, by_dimension.get(MAIN_THREAD, []))
    for thread in threads:
        if divergence is not None:
            break
        hook = workflows.get(thread.workflow_name)
        if hook is None:
            return _not_given(job, "hook", thread.workflow_name)
        divergence = await replay_thread(hook, job, thread, by_dimension.get(thread.dimension, []))
    return ReplayResult(
        job.id, job.workflow_name, job.status, ok=divergence is None, divergence=divergence
    )


async def replay_runs(
    backend: Backend,
    workflows: Functions,
    *,
    ids: Iterable[str] = (),
    status: str | None = None,
    workflow_name: str | None = None,
    limit: int = 1000,
) -> list[ReplayResult]:
    """Replay runs stored in ``backend``: those with ``ids``, else those with
    ``status`` (and ``workflow_name``), up to ``limit``; read only."""
    named = registry(workflows, "workflow")
    async with backend.transaction(readonly=True) as tx:
        wanted = list(ids)
        if wanted:
            jobs = []
            for workflow_id in wanted:
                job = await tx.store.get_job(workflow_id)
                if job is None:
                    raise HotMeshError(f"no workflow with id {workflow_id!r}")
                jobs.append(job)
        else:
            jobs = await tx.store.find_jobs(
                status=status,
                workflow_name=workflow_name,
                limit=limit,
                order_by="created_at",
            )
        loaded = [
            (job, await tx.store.load_steps(job.id), await tx.store.threads(job.id)) for job in jobs
        ]
    return [await replay_job(named, job, steps, threads) for job, steps, threads in loaded]


def load_export(data: Mapping[str, Any]) -> tuple[Job, list[Step], list[Thread]]:
    """A job, its steps and hooks from ``WorkflowExport.to_dict()`` JSON
    (``hotmesh runs export ID``). A file that is not one (a field missing or of
    another type) is a ``HotMeshError`` naming the field, never a traceback."""
    try:
        job = Job(
            id=_text(data, "workflow_id"),
            entity=_text(data, "entity"),
            workflow_name=_text(data, "workflow_name"),
            task_queue=_text(data, "task_queue"),
            args=list(_of(data, "args", list)),
            status=_text(data, "status"),
            context=_of(data, "context", dict, optional=True) or {},
            result=data.get("result"),
            error=_error(data),
            generation=_number(data, "generation", optional=True) or 0,
        )
        steps = [
            Step(
                job_id=job.id,
                dimension=_text(entry, "dimension"),
                index=_number(entry, "index"),
                kind=_text(entry, "kind"),
                name=_text(entry, "name"),
                args=entry["args"],
                status=_text(entry, "status"),
                result=entry["result"],
                error=_error(entry),
                activation=_number(entry, "activation", optional=True),
            )
            for entry in _of(data, "timeline", list)
        ]
        threads = [
            structure(_of({"hook": hook}, "hook", dict), Thread)
            for hook in _of(data, "hooks", list, optional=True) or []
        ]
    except (KeyError, TypeError, ValueError, BaseValidationError) as exc:
        raise HotMeshError(f"not a HotMesh export: {type(exc).__name__}: {exc}") from exc
    return job, steps, threads


def _of(data: Any, key: str, kind: type, *, optional: bool = False) -> Any:
    if not isinstance(data, Mapping):
        raise TypeError(f"an entry is {type(data).__name__}, not an object")
    if optional and data.get(key) is None:
        return None
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{key!r} is {type(value).__name__}, not {kind.__name__}")
    return value


def _text(data: Any, key: str) -> str:
    text: str = _of(data, key, str)
    return text


def _number(data: Any, key: str, *, optional: bool = False) -> Any:
    return _of(data, key, int, optional=optional)


def _error(data: Any) -> ErrorInfo | None:
    error = _of(data, "error", dict, optional=True)
    return structure(error, ErrorInfo) if error else None


async def replay_export(workflows: Functions, path: str | Path) -> ReplayResult:
    """Replay one exported run (a JSON file of ``export``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        raise HotMeshError(f"cannot read the export {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise HotMeshError(f"{str(path)!r} is not a HotMesh export (a JSON object)")
    job, steps, threads = load_export(data)
    return await replay_job(registry(workflows, "workflow"), job, steps, threads)
