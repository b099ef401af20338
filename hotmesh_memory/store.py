"""The Store role over the in-memory tables."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from hotmesh_core.advance import Advance, Advanced, apply_advance, read_thread
from hotmesh_core.entity_ops import READ_ONLY_OPS, apply_op, split_path
from hotmesh_core.entity_query import InvalidQuery, JobQuery, Node, parse_where
from hotmesh_core.errors import WorkflowNotFound
from hotmesh_core.models import (
    DEAD_LETTER_KEEP,
    MAIN_THREAD,
    TERMINAL_STATUSES,
    EntityChange,
    EntityOp,
    ErrorInfo,
    Job,
    Step,
    Task,
    Thread,
    WorkerPresence,
)
from hotmesh_core.observe import RunCursor
from hotmesh_core.records import revise
from hotmesh_core.replay import CANCEL_INDEX

from .entity_query import after as comes_after
from .entity_query import job_matches, json_equal, sort_key
from .entity_query import matches as query_matches
from .signal import MemorySignal
from .state import MemoryTx, clone
from .stream import MemoryStream

_MISSING: Any = object()


def _path_value(doc: Any, path: str) -> Any:
    node = doc
    for part in split_path(path):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _sort_key(job: Job, field: str) -> tuple[int, Any]:
    if field in ("created_at", "updated_at", "id"):
        return (0, getattr(job, field))
    value = _path_value(job.context, field)
    if value is _MISSING or value is None:
        return (1, 0)  # missing values sort last, as NULLS LAST does
    return (0, value)


class MemoryStore:
    def __init__(self, tx: MemoryTx) -> None:
        self.tx = tx
        self.state = tx.state

    async def create_job(
        self, job: Job, *, run: Task | None = None, owner: str | None = None, lease: float = 0.0
    ) -> tuple[Job, bool]:
        existing = self.state.jobs.get(job.id)
        if existing is not None:
            return clone(existing), False
        now = self.tx.now()
        stored = revise(clone(job), created_at=now, updated_at=now)
        self.tx.put(self.state.jobs, job.id, stored)
        if job.parent_id is not None:
            siblings = dict(self.state.children.get(job.parent_id, {}))
            siblings[job.id] = None
            self.tx.put(self.state.children, job.parent_id, siblings)
        if run is not None:
            task_id = await MemoryStream(self.tx).enqueue(run, owner=owner, lease=lease)
            if owner is not None and task_id is not None:
                run.id, run.attempts, run.lease_owner = task_id, 1, owner
        return clone(stored), True

    async def load_thread(
        self, job_id: str, dimension: str, indexes: Sequence[int] | None = None
    ) -> tuple[Job | None, Thread | None, list[Step]]:
        return await read_thread(self, job_id, dimension, indexes)

    async def advance(self, plan: Advance) -> Advanced:
        # The reference semantics, in this transaction (undone as a whole on Superseded).
        return await apply_advance(self, MemoryStream(self.tx), MemorySignal(self.tx), plan)

    async def advance_many(self, plans: Sequence[Advance]) -> list[Advanced | None]:
        # In job order, each undone on its own should it fail (PostgreSQL's
        # subtransaction per advance in hm_advance_many).
        done: list[Advanced | None] = [None] * len(plans)
        for position in sorted(range(len(plans)), key=lambda i: (plans[i].job_id, i)):
            mark = self.tx.savepoint()
            try:
                done[position] = await self.advance(plans[position])
            except Exception:
                self.tx.rollback_to(mark)
        return done

    async def get_job(self, job_id: str) -> Job | None:
        job = self.state.jobs.get(job_id)
        return clone(job) if job is not None else None

    async def lock_job(self, job_id: str) -> None:
        return None  # one transaction at a time: nothing to queue behind

    async def get_awaited_job(self, job_id: str) -> Job | None:
        return await self.get_job(job_id)  # every end wakes this process's watchers

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        jobs = self.state.jobs
        return [
            clone(job) for job_id in dict.fromkeys(job_ids) if (job := jobs.get(job_id)) is not None
        ]

    async def set_job_status(
        self, job_id: str, status: str, *, result: Any = None, error: ErrorInfo | None = None
    ) -> Job | None:
        job = self.state.jobs.get(job_id)
        if job is None or job.status in TERMINAL_STATUSES:
            return None
        now = self.tx.now()
        finished = now if status in TERMINAL_STATUSES else None
        updated = revise(
            job,
            status=status,
            result=clone(result),
            error=error,
            updated_at=now,
            finished_at=finished,
        )
        self.tx.put(self.state.jobs, job_id, updated)
        return clone(updated)

    async def continue_job(self, job_id: str, args: list[Any]) -> Job | None:
        job = self.state.jobs.get(job_id)
        if job is None or job.status in TERMINAL_STATUSES:
            return None
        updated = revise(
            job,
            args=clone(args),
            status="running",
            activation=0,
            generation=job.generation + 1,
            updated_at=self.tx.now(),
        )
        self.tx.put(self.state.jobs, job_id, updated)
        if (job_id, MAIN_THREAD) in self.state.steps:
            self.tx.pop(self.state.steps, (job_id, MAIN_THREAD))
        return clone(updated)

    async def reopen_job(
        self, job_id: str, *, activation: int, delete: Sequence[int]
    ) -> Job | None:
        job = self.state.jobs.get(job_id)
        if job is None or job.status != "failed" or job.activation != activation:
            return None
        updated = revise(
            job,
            status="running",
            result=None,
            error=None,
            finished_at=None,
            activation=activation + 1,
            updated_at=self.tx.now(),
        )
        self.tx.put(self.state.jobs, job_id, updated)
        steps = self.state.steps.get((job_id, MAIN_THREAD), {})
        for index in delete:
            if index in steps:
                self.tx.pop(steps, index)
        return clone(updated)

    async def active_children(self, job_id: str) -> list[str]:
        return [
            child
            for child in self.state.children.get(job_id, {})
            if (job := self.state.jobs.get(child)) is not None
            and job.status not in TERMINAL_STATUSES
        ]

    async def create_thread(self, thread: Thread) -> bool:
        key = (thread.job_id, thread.dimension)
        if key in self.state.threads:
            return False
        self.tx.put(self.state.threads, key, revise(clone(thread), created_at=self.tx.now()))
        return True

    async def get_thread(self, job_id: str, dimension: str) -> Thread | None:
        thread = self.state.threads.get((job_id, dimension))
        return clone(thread) if thread is not None else None

    async def finish_thread(
        self, job_id: str, dimension: str, status: str, error: ErrorInfo | None = None
    ) -> Thread | None:
        thread = self.state.threads.get((job_id, dimension))
        if thread is None or thread.status != "running":
            return None
        updated = revise(thread, status=status, error=error, finished_at=self.tx.now())
        self.tx.put(self.state.threads, (job_id, dimension), updated)
        return clone(updated)

    async def threads(self, job_id: str) -> list[Thread]:
        found = [t for (job, _), t in self.state.threads.items() if job == job_id]
        return clone(sorted(found, key=lambda t: (t.created_at, t.dimension)))

    async def load_steps(
        self, job_id: str, dimension: str | None = None, indexes: Sequence[int] | None = None
    ) -> list[Step]:
        if dimension is not None:
            steps = self.state.steps.get((job_id, dimension), {})
            if indexes is not None:
                return clone([steps[i] for i in sorted(set(indexes)) if i in steps])
            return clone(sorted(steps.values(), key=lambda s: s.index))
        found = [
            step
            for (job, _), steps in self.state.steps.items()
            if job == job_id
            for step in steps.values()
        ]
        return clone(sorted(found, key=lambda s: (s.dimension, s.index)))

    async def insert_step(self, step: Step) -> bool:
        key = (step.job_id, step.dimension)
        steps = self.state.steps.get(key, {})
        job = self.state.jobs.get(step.job_id)
        if step.index in steps or (job is not None and job.status == "interrupted"):
            return False
        now = self.tx.now()
        stored = revise(
            clone(step),
            started_at=now,
            finished_at=None if step.status == "pending" else now,
        )
        if key not in self.state.steps:
            self.tx.put(self.state.steps, key, steps)
        self.tx.put(steps, step.index, stored)
        return True

    def _replace_step(self, step: Step) -> None:
        self.tx.put(self.state.steps[(step.job_id, step.dimension)], step.index, step)

    async def resolve_step(
        self,
        job_id: str,
        dimension: str,
        index: int,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
        attempts: int | None = None,
    ) -> Step | None:
        step = self.state.steps.get((job_id, dimension), {}).get(index)
        if step is None or step.status != "pending":
            return None
        resolved = revise(
            step,
            status="failed" if error is not None else "done",
            result=clone(result),
            error=error,
            attempts=step.attempts if attempts is None else attempts,
            finished_at=self.tx.now(),
        )
        self._replace_step(resolved)
        return clone(resolved)

    async def mark_delivered(
        self, job_id: str, dimension: str, indexes: Sequence[int], activation: int
    ) -> bool:
        key = (job_id, dimension)
        owner: Job | Thread | None = (
            self.state.jobs.get(job_id) if dimension == MAIN_THREAD else self.state.threads.get(key)
        )
        if owner is None or owner.activation != activation - 1:
            return False  # another run of the thread delivered this activation first
        steps = self.state.steps.get(key, {})
        request = steps.get(CANCEL_INDEX) if isinstance(owner, Job) else None
        if request is not None and request.activation is None and CANCEL_INDEX not in indexes:
            # A cancel request this run has not seen (it came after the run
            # read): the next activation is the one that delivers it.
            return False
        if isinstance(owner, Job):
            self.tx.put(self.state.jobs, job_id, revise(owner, activation=activation))
        else:
            self.tx.put(self.state.threads, key, revise(owner, activation=activation))
        marked = 0
        for index in indexes:
            step = steps.get(index)
            if step is not None and step.status != "pending" and step.activation is None:
                self._replace_step(revise(step, activation=activation))
                marked += 1
        return marked == len(indexes)

    async def note_attempt(
        self, job_id: str, dimension: str, index: int, attempts: int, error: ErrorInfo
    ) -> None:
        step = self.state.steps.get((job_id, dimension), {}).get(index)
        if step is not None and step.status == "pending":
            self._replace_step(revise(step, attempts=attempts, error=error))

    async def apply_entity(
        self, job_id: str, op: EntityOp, *, dimension: str | None, index: int | None
    ) -> tuple[Any, int]:
        job = self.state.jobs[job_id]
        new_doc, result, changed = apply_op(job.context, op.op, op.path, clone(op.value))
        if not changed or op.op in READ_ONLY_OPS:
            return result, job.version
        now = self.tx.now()
        version = job.version + 1
        self.tx.put(
            self.state.jobs,
            job_id,
            revise(job, context=new_doc, version=version, updated_at=now),
        )
        change = EntityChange(
            job_id=job_id,
            version=version,
            op=op.op,
            path=op.path,
            value=clone(op.value),
            dimension=dimension,
            index=index,
            at=now,
        )
        log = self.state.changes.get(job_id)
        if log is None:
            self.tx.put(self.state.changes, job_id, [change])
        else:
            self.tx.append(log, change)  # not copied: a long-lived entity's log grows
        self.tx.change_notes.append((job_id, version))  # entity watchers, at commit
        return result, version

    async def entity_changes(self, job_id: str) -> list[EntityChange]:
        return clone(self.state.changes.get(job_id, []))

    async def find_jobs(
        self,
        *,
        entity: str | None = None,
        where: dict[str, Any] | None = None,
        search: dict[str, Any] | None = None,
        status: str | None = None,
        workflow_name: str | None = None,
        limit: int = 100,
        order_by: str | None = None,
    ) -> list[Job]:
        def matches(job: Job) -> bool:
            if entity is not None and job.entity != entity:
                return False
            if status is not None and job.status != status:
                return False
            if workflow_name is not None and job.workflow_name != workflow_name:
                return False
            for path, expected in (where or {}).items():
                if not json_equal(_path_value(job.context, path), expected):
                    return False
            for path, expected in (search or {}).items():
                if not json_equal(_path_value(job.search, path), expected):
                    return False
            return True

        found = [job for job in self.state.jobs.values() if matches(job)]
        field = (order_by or "created_at").lstrip("-")
        descending = (order_by or "").startswith("-")
        present = [j for j in found if _sort_key(j, field)[0] == 0]
        missing = [j for j in found if _sort_key(j, field)[0] == 1]
        present.sort(key=lambda j: (_sort_key(j, field)[1], j.id), reverse=descending)
        return clone((present + missing)[:limit])

    async def expire_jobs(self) -> int:
        now = self.tx.now()
        expired = [
            job.id
            for job in self.state.jobs.values()
            if job.status in TERMINAL_STATUSES
            and job.expire is not None
            and job.finished_at is not None
            and job.finished_at + job.expire <= now
        ]
        for job_id in expired:
            parent_id = self.state.jobs[job_id].parent_id
            siblings = self.state.children.get(parent_id or "")
            if siblings is not None and job_id in siblings:
                self.tx.pop(siblings, job_id)
            self.tx.pop(self.state.children, job_id)
            self.tx.pop(self.state.jobs, job_id)
            self.tx.pop(self.state.changes, job_id)
            for key in [k for k in self.state.steps if k[0] == job_id]:
                self.tx.pop(self.state.steps, key)
            for key in [k for k in self.state.threads if k[0] == job_id]:
                self.tx.pop(self.state.threads, key)
        self._expire_dead_letters(now)
        return len(expired)

    # -- read-only views for people (hotmesh ui) ---------------------------------

    async def page_jobs(
        self,
        *,
        entity: str | None = None,
        status: str | None = None,
        workflow_name: str | None = None,
        parent_id: str | None = None,
        id_prefix: str | None = None,
        where: dict[str, Any] | None = None,
        created_from: float | None = None,
        created_to: float | None = None,
        before: RunCursor | None = None,
        limit: int = 50,
    ) -> list[Job]:
        def matches(job: Job) -> bool:
            for wanted, value in (
                (entity, job.entity),
                (status, job.status),
                (workflow_name, job.workflow_name),
                (parent_id, job.parent_id),
            ):
                if wanted is not None and value != wanted:
                    return False
            if id_prefix is not None and not job.id.startswith(id_prefix):
                return False
            # Times compare in whole microseconds, as timestamptz does.
            created = round(job.created_at * 1_000_000)
            if created_from is not None and created < round(created_from * 1_000_000):
                return False
            if created_to is not None and created >= round(created_to * 1_000_000):
                return False
            if before is not None and RunCursor.after(job.created_at, job.id) >= before:
                return False
            return not where or query_matches(parse_where(where), job.context)

        found = sorted(
            (job for job in self.state.jobs.values() if matches(job)),
            key=lambda job: RunCursor.after(job.created_at, job.id),
            reverse=True,
        )
        return clone(found[:limit])

    def _expire_dead_letters(self, now: float) -> None:
        letters = self.state.dead_letters
        kept = [d for d in letters if d.created_at + DEAD_LETTER_KEEP > now]
        if len(kept) < len(letters):
            before = list(letters)
            letters[:] = kept

            def undo() -> None:
                letters[:] = before

            self.tx.undo.append(undo)

    # -- entity queries, search fields, change feed (hotmesh_core.entity_query) --

    async def query_jobs(self, query: JobQuery) -> list[tuple[Job, list[Any]]]:
        keyed = [
            (sort_key(job, query.order), job)
            for job in self.state.jobs.values()
            if job_matches(job, query)
        ]
        if query.after is not None:
            last = query.after
            if len(last) != (4 if query.order.field == "path" else 2):
                raise InvalidQuery("not a cursor of this query (its key does not fit)")
            try:
                keyed = [(k, j) for k, j in keyed if comes_after(k, last, query.order.descending)]
            except TypeError:
                raise InvalidQuery("not a cursor of this query (its key does not fit)") from None
        keyed.sort(key=lambda pair: pair[0], reverse=query.order.descending)
        return [(clone(job), key) for key, job in keyed[: query.limit]]

    async def count_jobs(self, query: JobQuery) -> int:
        return sum(1 for job in self.state.jobs.values() if job_matches(job, query))

    async def create_index(
        self, name: str, entity: str, path: tuple[str, ...] | None, kind: str, where: Node
    ) -> None:
        """Nothing to make: every query scans the in-memory table."""

    async def set_search(self, job_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        job = self.state.jobs.get(job_id)
        if job is None:
            raise WorkflowNotFound(f"no workflow with id {job_id!r}")
        search = {**job.search, **clone(fields)}
        self.tx.put(self.state.jobs, job_id, revise(job, search=search, updated_at=self.tx.now()))
        return clone(search)

    async def changes_after(self, job_id: str, version: int, limit: int) -> list[EntityChange]:
        changes = self.state.changes.get(job_id, [])
        start = bisect_right(changes, version, key=lambda c: c.version)  # in version order
        return clone(changes[start : start + limit])

    # -- entity operations applied outside the database (hotmesh_core.codec) --

    async def lock_entity(self, job_id: str) -> tuple[Any, int] | None:
        job = self.state.jobs.get(job_id)  # the transaction holds the state's lock
        return None if job is None else (clone(job.context), job.version)

    async def write_entity(self, job_id: str, context: Any, change: EntityChange) -> None:
        job = self.state.jobs.get(job_id)
        if job is None:
            raise WorkflowNotFound(f"no workflow with id {job_id!r}")
        now = self.tx.now()
        self.tx.put(
            self.state.jobs,
            job_id,
            revise(job, context=clone(context), version=change.version, updated_at=now),
        )
        stored = revise(clone(change), at=now)
        log = self.state.changes.get(job_id)
        if log is None:
            self.tx.put(self.state.changes, job_id, [stored])
        else:
            self.tx.append(log, stored)
        self.tx.change_notes.append((job_id, change.version))

    # -- worker presence ------------------------------------------------------------
    async def announce_worker(self, presence: WorkerPresence) -> None:
        seen = revise(clone(presence), last_seen=self.tx.now())
        self.tx.put(self.state.workers, (presence.queue, presence.worker_id), seen)

    async def remove_worker(self, queue: str, worker_id: str) -> None:
        self.tx.pop(self.state.workers, (queue, worker_id))

    async def workers(self, queue: str, *, seen_within: float) -> list[WorkerPresence]:
        since = self.tx.now() - seen_within
        found = [
            w for (q, _), w in self.state.workers.items() if q == queue and w.last_seen >= since
        ]
        return clone(sorted(found, key=lambda w: w.worker_id))
