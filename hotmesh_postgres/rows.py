"""Columns selected for each record, and rows turned back into models.

Times are stored as ``timestamptz`` and read as POSIX seconds, the unit of the
models; JSON columns are bound as ``Jsonb`` and come back as Python values.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from hotmesh_core.advance import Advance
from hotmesh_core.models import (
    DeadLetter,
    EntityChange,
    ErrorInfo,
    Job,
    Step,
    Task,
    Thread,
    Waiter,
)
from hotmesh_core.serde import exact_json, structure, unstructure


def epoch(column: str, table: str = "") -> str:
    qualified = f"{table}.{column}" if table else column
    return f"extract(epoch FROM {qualified})::float8 AS {column}"


def task_columns(table: str) -> str:
    names = [
        "id",
        "queue",
        "kind",
        "job_id",
        "dimension",
        "name",
        "idx",
        "payload",
        "attempts",
        "lease_owner",
        "sticky",
    ]
    return ", ".join(
        [*(f"{table}.{n}" for n in names), epoch("visible_at", table), epoch("created_at", table)]
    )


def waiter_columns(table: str) -> str:
    names = ["signal_id", "job_id", "dimension", "idx"]
    return ", ".join([*(f"{table}.{n}" for n in names), epoch("created_at", table)])


JOB_COLUMNS = ", ".join(
    [
        "id",
        "entity",
        "workflow_name",
        "task_queue",
        "args",
        "status",
        "context",
        "version",
        "result",
        "error",
        "parent_id",
        "parent_dimension",
        "parent_index",
        "persistent",
        "search",
        "expire",
        epoch("created_at"),
        epoch("updated_at"),
        epoch("finished_at"),
        "activation",
        "generation",
    ]
)
THREAD_COLUMNS = ", ".join(
    [
        "job_id",
        "dimension",
        "workflow_name",
        "task_queue",
        "args",
        "status",
        "signal_id",
        "error",
        epoch("created_at"),
        epoch("finished_at"),
        "activation",
    ]
)
STEP_COLUMNS = ", ".join(
    [
        "job_id",
        "dimension",
        "idx",
        "kind",
        "name",
        "args",
        "status",
        "result",
        "error",
        "attempts",
        "wake_queue",
        "wake_name",
        epoch("started_at"),
        epoch("finished_at"),
        "activation",
        "wake_worker",
    ]
)
CHANGE_COLUMNS = ", ".join(
    ["job_id", "version", "op", "path", "value", "dimension", "idx", epoch("at")]
)


def jsonb(value: Any) -> Jsonb:
    # exact_json: a whole float in exponent form would come back as an int.
    return Jsonb(value, dumps=exact_json)


def error_param(error: ErrorInfo | None) -> Jsonb | None:
    return None if error is None else Jsonb(unstructure(error))


def _error(value: Any) -> ErrorInfo | None:
    return None if value is None else structure(value, ErrorInfo)


def job(row: dict[str, Any]) -> Job:
    return Job(**{**row, "error": _error(row["error"])})


def thread(row: dict[str, Any]) -> Thread:
    return Thread(**{**row, "error": _error(row["error"])})


def step(row: dict[str, Any]) -> Step:
    values = {**row, "error": _error(row["error"])}
    values["index"] = values.pop("idx")
    return Step(**values)


def task(row: dict[str, Any]) -> Task:
    values = dict(row)
    values["index"] = values.pop("idx")
    values["id"] = str(values["id"])
    values["lease_until"] = values["visible_at"] if values["lease_owner"] else None
    return Task(**values)


def change(row: dict[str, Any]) -> EntityChange:
    values = dict(row)
    values["index"] = values.pop("idx")
    return EntityChange(**values)


def waiter(row: dict[str, Any]) -> Waiter:
    values = dict(row)
    values["index"] = values.pop("idx")
    return Waiter(**values)


def dead_letter(row: dict[str, Any]) -> DeadLetter:
    """A dead letter keeps its task as the JSON of its row (``to_jsonb``)."""
    stored = row["task"]
    task = Task(
        queue=stored["queue"],
        kind=stored["kind"],
        job_id=stored["job_id"],
        dimension=stored["dimension"],
        name=stored["name"],
        index=stored["idx"],
        payload=stored["payload"],
        id=str(stored["id"]),
        attempts=stored["attempts"],
        lease_owner=stored["lease_owner"],
    )
    error = _error(row["error"])
    assert error is not None
    return DeadLetter(task, error, row["created_at"])


def _step_document(step: Step) -> dict[str, Any]:
    return {
        "dimension": step.dimension,
        "index": step.index,
        "kind": step.kind,
        "name": step.name,
        "args": step.args,
        "status": step.status,
        "result": step.result,
        "error": None if step.error is None else unstructure(step.error),
        "attempts": step.attempts,
        "wake_queue": step.wake_queue,
        "wake_name": step.wake_name,
        "wake_worker": step.wake_worker,
    }


def _task_document(task: Task | None) -> dict[str, Any] | None:
    if task is None:
        return None
    return {
        "queue": task.queue,
        "kind": task.kind,
        "job_id": task.job_id,
        "dimension": task.dimension,
        "name": task.name,
        "index": task.index,
        "payload": task.payload,
        "sticky": task.sticky,
    }


def advance_document(plan: Advance) -> dict[str, Any]:
    """An :class:`Advance` as the JSON document ``hm_advance`` reads."""
    return {
        "job_id": plan.job_id,
        "dimension": plan.dimension,
        "answers": [
            {
                "task_id": int(answer.task_id),
                "index": answer.index,
                "result": answer.result,
                "error": None if answer.error is None else unstructure(answer.error),
                "attempts": answer.attempts,
            }
            for answer in plan.answers
        ],
        "recorded": [_step_document(step) for step in plan.recorded],
        "delivered": None if plan.delivered is None else list(plan.delivered),
        "values": [_step_document(step) for step in plan.values],
        "running": plan.running,
        "dispatches": [
            {
                "step": _step_document(d.step),
                "task": _task_document(d.task),
                "delay": d.delay,
                "owner": d.owner,
                "lease": d.lease,
                "signal_id": d.signal_id,
            }
            for d in plan.dispatches
        ],
        "finish": None
        if plan.finish is None
        else {
            "status": plan.finish.status,
            "result": plan.finish.result,
            "error": None if plan.finish.error is None else unstructure(plan.finish.error),
            "quiet": plan.finish.quiet,
        },
        "wake": _task_document(plan.wake),
        "acks": [int(task_id) for task_id in plan.acks],
    }
