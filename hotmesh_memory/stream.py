"""The Stream role over in-memory queues: leases, delays, retries, dead letters."""

from __future__ import annotations

from collections.abc import Sequence

from hotmesh_core.models import Backlog, DeadLetter, ErrorInfo, Task
from hotmesh_core.observe import QueueStats
from hotmesh_core.records import revise

from .state import MemoryTx, clone


class MemoryStream:
    def __init__(self, tx: MemoryTx) -> None:
        self.tx = tx
        self.state = tx.state

    def _queue(self, name: str) -> dict[str, Task]:
        # In task id order (ids grow, and are inserted once): first come, first served.
        return self.state.queues.setdefault(name, {})

    def _put(self, task: Task) -> None:
        self.tx.put(self._queue(task.queue), task.id, task)
        self.tx.put(self.state.task_queue_of, task.id, task.queue)

    async def enqueue(
        self, task: Task, *, delay: float = 0.0, owner: str | None = None, lease: float = 0.0
    ) -> str | None:
        run_key = (task.job_id, task.dimension)
        if task.kind == "run" and owner is None and run_key in self.state.unclaimed_runs:
            return None
        now = self.tx.now()
        stored = revise(
            clone(task),
            id=f"m{next(self.state.task_ids)}",
            visible_at=now + delay,
            created_at=now,
            attempts=0 if owner is None else 1,
            lease_owner=owner,
            lease_until=None if owner is None else now + lease,
        )
        self._put(stored)
        if owner is None:
            if task.kind == "run":
                self.tx.put(self.state.unclaimed_runs, run_key, stored.id)
            self.tx.queues_to_wake.add(task.queue)
        return stored.id

    async def claim(
        self,
        queue: str,
        *,
        owner: str,
        lease: float,
        workflow_names: Sequence[str],
        activity_names: Sequence[str],
        limit: int,
        sticky_wait: float = 0.0,
    ) -> list[Task]:
        now = self.tx.now()
        me = owner.partition("#")[0]
        stopped = self.state.stopped_workers.get(queue, {})
        workflows, activities = set(workflow_names), set(activity_names)
        ready: list[Task] = []
        for task in self._queue(queue).values():  # insertion order: first come, first served
            if (
                task.visible_at <= now
                and (task.lease_until is None or task.lease_until <= now)
                and (
                    task.sticky is None
                    or task.sticky == me
                    or task.lease_owner is not None  # a lease ran out: anyone's
                    or task.visible_at + sticky_wait <= now
                    or task.sticky in stopped
                )
                and (
                    task.kind == "timer"
                    or (task.kind == "run" and task.name in workflows)
                    or (task.kind == "activity" and task.name in activities)
                )
            ):
                ready.append(task)
                if len(ready) == limit:
                    break
        claimed: list[Task] = []
        for task in ready:
            leased = revise(
                task, lease_owner=owner, lease_until=now + lease, attempts=task.attempts + 1
            )
            self._put(leased)
            if task.kind == "run":
                self.tx.pop(self.state.unclaimed_runs, (task.job_id, task.dimension))
            claimed.append(clone(leased))
        return claimed

    def _find(self, task_id: str) -> Task | None:
        queue = self.state.task_queue_of.get(task_id)
        return None if queue is None else self._queue(queue).get(task_id)

    async def extend_lease(self, task_id: str, *, owner: str, lease: float) -> bool:
        task = self._find(task_id)
        if task is None or task.lease_owner != owner:
            return False
        self._put(revise(task, lease_until=self.tx.now() + lease))
        return True

    async def dead_letters(
        self, *, job_id: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        found = [
            letter
            for letter in reversed(self.state.dead_letters)
            if job_id is None or letter.task.job_id == job_id
        ]
        return [DeadLetter(clone(d.task), d.error, d.created_at) for d in found[:limit]]

    async def release_leases(self, queue: str, *, owner: str, attempted: bool = True) -> int:
        now = self.tx.now()
        held = [
            task
            for task in self._queue(queue).values()
            if task.lease_owner is not None
            and (task.lease_owner == owner or task.lease_owner.startswith(owner + "#"))
            and task.lease_until is not None
            and task.lease_until > now
        ]
        for task in held:
            attempts = task.attempts if attempted else max(task.attempts - 1, 0)
            self._put(revise(task, lease_until=now, attempts=attempts))
        if held:
            self.tx.queues_to_wake.add(queue)
        return len(held)

    async def backlog(self, queue: str) -> list[Backlog]:
        now = self.tx.now()
        found: dict[tuple[str, str], tuple[int, float]] = {}
        for task in self._queue(queue).values():
            if task.kind == "timer" or task.visible_at > now:
                continue
            if task.lease_until is not None and task.lease_until > now:
                continue
            ready_since = task.visible_at if task.lease_until is None else task.lease_until
            count, oldest = found.get((task.kind, task.name), (0, ready_since))
            found[(task.kind, task.name)] = (count + 1, min(oldest, ready_since))
        return [Backlog(kind, name, n, first) for (kind, name), (n, first) in sorted(found.items())]

    async def queue_stats(self) -> list[QueueStats]:
        now = self.tx.now()
        found: list[QueueStats] = []
        for name in sorted(self.state.queues):
            ready, delayed, leased, oldest = 0, 0, 0, None
            workers: set[str] = set()
            for task in self.state.queues[name].values():
                if task.lease_until is not None and task.lease_until > now:
                    leased += 1
                    workers.add((task.lease_owner or "").partition("#")[0])
                elif task.visible_at > now:
                    delayed += 1
                elif task.kind == "timer":
                    delayed += 1  # due: the next worker to look fires it
                else:
                    ready += 1
                    since = task.visible_at if task.lease_until is None else task.lease_until
                    oldest = since if oldest is None else min(oldest, since)
            if ready or delayed or leased:
                found.append(
                    QueueStats(name, ready, oldest, delayed, leased, tuple(sorted(workers)))
                )
        return found

    async def remove_job_tasks(self, job_id: str, dimension: str | None = None) -> int:
        doomed = [
            task
            for queue in self.state.queues.values()
            for task in queue.values()
            if task.job_id == job_id and (dimension is None or task.dimension == dimension)
        ]
        for task in doomed:
            self._remove(task)
        return len(doomed)

    def _remove(self, task: Task) -> None:
        self.tx.pop(self._queue(task.queue), task.id, order=task_order)
        self.tx.pop(self.state.task_queue_of, task.id)
        run_key = (task.job_id, task.dimension)
        if task.kind == "run" and self.state.unclaimed_runs.get(run_key) == task.id:
            self.tx.pop(self.state.unclaimed_runs, run_key)

    async def worker_stopped(self, queue: str, worker: str) -> int:
        stopped = self.state.stopped_workers.setdefault(queue, {})
        self.tx.put(stopped, worker, None)
        freed = [task for task in self._queue(queue).values() if task.sticky == worker]
        for task in freed:
            self._put(revise(task, sticky=None))
        if freed:
            self.tx.queues_to_wake.add(queue)
        return len(freed)

    async def worker_started(self, queue: str, worker: str) -> None:
        stopped = self.state.stopped_workers.get(queue)
        if stopped is not None and worker in stopped:
            self.tx.pop(stopped, worker)

    async def ack(self, task_id: str) -> bool:
        task = self._find(task_id)
        if task is not None:
            self._remove(task)
        return task is not None

    async def retry(self, task_id: str, *, delay: float, owner: str | None = None) -> None:
        task = self._find(task_id)
        if task is None or (owner is not None and task.lease_owner != owner):
            return
        run_key = (task.job_id, task.dimension)
        if task.kind == "run":
            if self.state.unclaimed_runs.get(run_key, task.id) != task.id:
                self._remove(task)  # an unclaimed run of the same thread exists: it will do
                return
            self.tx.put(self.state.unclaimed_runs, run_key, task.id)
        self._put(
            revise(task, visible_at=self.tx.now() + delay, lease_owner=None, lease_until=None)
        )
        self.tx.queues_to_wake.add(task.queue)

    async def dead_letter(self, task_id: str, error: ErrorInfo) -> None:
        task = self._find(task_id)
        if task is None:
            return
        self._remove(task)
        letters = self.state.dead_letters
        letters.append(DeadLetter(clone(task), error, self.tx.now()))

        def undo() -> None:
            letters.pop()

        self.tx.undo.append(undo)


def task_order(task_id: str) -> int:
    """The place of a task in its queue: its number (ids are ``m1``, ``m2``, ...)."""
    return int(task_id[1:])
