"""``hotmesh runs fork ID --from-step N``: a new run with a run's history up to a step.

For trying a fix on a real history, or taking a run down another path from a
known point, without touching the original. The new job copies the original's
workflow, arguments, queue and search fields; its main thread's history is the
original's steps before index ``N`` that had been answered and delivered by
the time the step at ``N`` (or any later one) was delivered; its entity is the
document as it stood after the last entity operation kept. Replay then carries
the new run on from there under the code deployed now: calls past the kept
history are issued afresh (activities run again). Hooks are not copied.
"""

from __future__ import annotations

import uuid

from attrs import evolve

from .client import WorkflowHandle
from .config import validate_workflow_id
from .engine import Engine
from .errors import DuplicateWorkflow, InvalidIdentifier, WorkflowNotFound
from .models import MAIN_THREAD, Job, Step
from .observe import entity_at
from .protocols import Backend
from .replay import CANCEL_INDEX, SUSPENDING_KINDS

__all__ = ["fork_run", "history_before"]


def history_before(steps: list[Step], from_step: int) -> list[Step]:
    """The main-thread steps a fork at ``from_step`` keeps (see the module)."""
    later = [s.activation for s in steps if s.index >= from_step and s.activation is not None]
    cut = min(later) if later else None
    kept = []
    for step in steps:
        if step.dimension != MAIN_THREAD or not CANCEL_INDEX <= step.index < from_step:
            continue
        if step.kind in SUSPENDING_KINDS or step.index == CANCEL_INDEX:
            # A cancel request is delivered like an answer: a fork past it keeps
            # it, or the cleanup that followed it would be a history the code
            # never reaches.
            if step.activation is None or (cut is not None and step.activation >= cut):
                continue  # not delivered by then: issued again
        elif step.status == "pending":
            continue
        kept.append(step)
    return kept


async def fork_run(
    backend: Backend, workflow_id: str, from_step: int, new_id: str | None = None
) -> WorkflowHandle:
    """Start a new run from ``workflow_id``'s history before index ``from_step``."""
    if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 0:
        # As ``hotmesh runs fork --from-step`` takes it: a step index, 0 or more.
        raise InvalidIdentifier(f"from_step must be a step index (0 or more), got {from_step!r}")
    fork_id = validate_workflow_id(new_id or f"{workflow_id}-fork-{uuid.uuid4().hex[:8]}")
    engine = Engine(backend)
    async with backend.transaction() as tx:
        job = await tx.store.get_job(workflow_id)
        if job is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
        kept = history_before(await tx.store.load_steps(workflow_id, MAIN_THREAD), from_step)
        changes = await tx.store.entity_changes(workflow_id)
        entity_steps = {s.index for s in kept if s.kind == "entity"}
        versions = [
            c.version
            for c in changes
            if (c.dimension or MAIN_THREAD) == MAIN_THREAD and c.index in entity_steps
        ]
        fork = Job(
            id=fork_id,
            entity=job.entity,
            workflow_name=job.workflow_name,
            task_queue=job.task_queue,
            args=job.args,
            context=entity_at(changes, max(versions)) if versions else {},
            search=job.search,
            expire=job.expire,
            persistent=job.persistent,
        )
        _stored, created = await engine._create_job(tx, fork)
        if not created:
            raise DuplicateWorkflow(f"a workflow with id {fork_id!r} exists")
        copies = {s.index: evolve(s, job_id=fork_id, activation=None) for s in kept}
        for step in copies.values():
            if step.index != CANCEL_INDEX:
                await tx.store.insert_step(step)
        # The kept deliveries, renumbered 1, 2, ... in their order (a cut may
        # leave gaps): replay hands them back activation by activation. A
        # cancel request goes in with the activation that delivered it: an
        # undelivered one refuses every other delivery (Store.mark_delivered).
        activations = sorted({s.activation for s in kept if s.activation is not None})
        for number, activation in enumerate(activations, start=1):
            indexes = [s.index for s in kept if s.activation == activation]
            if CANCEL_INDEX in indexes:
                await tx.store.insert_step(copies[CANCEL_INDEX])
            await tx.store.mark_delivered(fork_id, MAIN_THREAD, indexes, number)
    return WorkflowHandle(backend, fork_id)
