"""Records that cross the boundary between the engine and a backend.

Every field is plain data (JSON-able once unstructured by :mod:`hotmesh_core.serde`)
so a backend can store a record however it likes and give back an equal one.
Times are POSIX seconds (floats) on the backend's clock.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field

__all__ = [
    "MAIN_THREAD",
    "TERMINAL_STATUSES",
    "Backlog",
    "DeadLetter",
    "EntityChange",
    "EntityOp",
    "ErrorInfo",
    "Job",
    "Step",
    "Task",
    "Thread",
    "Waiter",
]

# Job status: pending, running, completed, failed, cancelled, interrupted.
# Step status: pending, done, failed. Task kind: run, activity, timer.
# Hook thread status: running, completed, failed.
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "interrupted"})

#: How long a dead letter is kept for inspection (seconds).
DEAD_LETTER_KEEP = 30 * 86400.0

#: The dimension of a job's main function; hooks run in dimensions of their own.
MAIN_THREAD = ""


@define(frozen=True)
class ErrorInfo:
    """An exception reduced to what survives a trip through JSON."""

    type_name: str
    message: str
    traceback: str = ""


@define
class Job:
    """A workflow execution and its entity (``context``), versioned."""

    id: str
    entity: str
    workflow_name: str
    task_queue: str
    args: list[Any] = field(factory=list)
    status: str = "pending"
    context: dict[str, Any] = field(factory=dict)
    version: int = 0
    result: Any = None
    error: ErrorInfo | None = None
    parent_id: str | None = None
    parent_dimension: str | None = None
    parent_index: int | None = None
    persistent: bool = False
    search: dict[str, Any] = field(factory=dict)
    expire: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    # The last activation of the main thread (hotmesh_core.replay): a worker's
    # cached run of it is current only while this is the activation it made.
    activation: int = 0
    # How many generations came before this one (workflow.continue_as_new).
    generation: int = 0


@define
class Thread:
    """A hook: a workflow function running against an existing job's entity.

    ``signal_id`` is set when a caller waits for it with ``exec_hook``: if the hook
    ends without signalling, the waiter is released instead of hanging forever.
    """

    job_id: str
    dimension: str
    workflow_name: str
    task_queue: str
    args: list[Any] = field(factory=list)
    status: str = "running"
    signal_id: str | None = None
    error: ErrorInfo | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    activation: int = 0  # the hook's last activation, as Job.activation


@define
class Step:
    """One durable call of one run, recorded under (job, dimension, index).

    A ``pending`` step is a command issued and not yet answered; resolving it
    (``done`` or ``failed``) wakes the run of its dimension, which the backend
    enqueues on ``wake_queue`` under ``wake_name``.
    """

    job_id: str
    dimension: str
    index: int
    kind: str
    name: str
    args: Any = None
    status: str = "pending"
    result: Any = None
    error: ErrorInfo | None = None
    attempts: int = 0
    wake_queue: str = ""
    wake_name: str = ""
    started_at: float = 0.0
    finished_at: float | None = None
    # The activation (the run of its thread) in which the workflow received this
    # step's answer; None until it has (see hotmesh_core.replay). Replay hands
    # answers back activation by activation, so branches interleave as they did.
    activation: int | None = None
    # The worker that issued the call and keeps the suspended run in its cache:
    # the run task its answer wakes prefers that worker (``Task.sticky``).
    wake_worker: str | None = None


@define
class Task:
    """A message on a task queue: run a workflow thread, run an activity, or fire a timer."""

    queue: str
    kind: str
    job_id: str
    dimension: str
    name: str
    index: int | None = None
    payload: dict[str, Any] = field(factory=dict)
    id: str = ""
    attempts: int = 0
    visible_at: float = 0.0
    lease_owner: str | None = None
    lease_until: float | None = None
    created_at: float = 0.0
    # A run task for a worker that holds the thread's run in its cache: that
    # worker claims it at once, others only once it has waited ``sticky_wait``
    # (the worker is gone, or busy), or at once after that worker stopped.
    sticky: str | None = None


@define(frozen=True)
class EntityOp:
    """An atomic change (or read) of an entity document, applied by the backend."""

    op: str
    path: str | None = None
    value: Any = None


@define
class EntityChange:
    """One entry of an entity's change log: which operation produced which version."""

    job_id: str
    version: int
    op: str
    path: str | None
    value: Any
    dimension: str | None = None
    index: int | None = None
    at: float = 0.0


@define
class Waiter:
    """A pending ``wait_for`` (or ``exec_hook``) step waiting for a signal id."""

    signal_id: str
    job_id: str
    dimension: str
    index: int
    created_at: float = 0.0


@define
class DeadLetter:
    """A task set aside after the engine failed on it too often (its job failed
    with ``TaskDeadLettered``), with the last error; kept 30 days."""

    task: Task
    error: ErrorInfo
    created_at: float


@define(frozen=True)
class Backlog:
    """Ready, unclaimed tasks of one kind and name on a queue: how many, and since
    when the oldest has been ready (POSIX seconds). What a worker reports when
    work waits for a name that no worker seems to serve."""

    kind: str
    name: str
    count: int
    oldest: float


# -- worker presence -----------------------------------------------------------------


@define(frozen=True)
class WorkerPresence:
    """What a worker serves on a queue, as it announced it, and when it last did
    (POSIX seconds). Read by ``hotmesh runs show`` to say why a job waits."""

    worker_id: str
    queue: str
    workflows: list[str]
    activities: list[str]
    last_seen: float = 0.0
