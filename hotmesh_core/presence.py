"""Workers say what they serve, so that a waiting job can say what it waits for.

Each worker started by ``MemFlow.worker`` (and so by ``hotmesh worker``)
announces its queue and its workflow and activity names when it starts and
every :data:`ANNOUNCE_EVERY` seconds (``Store.announce_worker``), and removes
the announcement when it stops. :func:`waiting_reasons` reads them with the
queue's backlog: ready work of a job for a name that no worker announced in the
last :data:`SEEN_WITHIN` seconds is what ``hotmesh runs show`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .client import WorkflowExport
from .models import TERMINAL_STATUSES, WorkerPresence
from .protocols import Backend
from .worker import Worker

__all__ = ["ANNOUNCE_EVERY", "SEEN_WITHIN", "Announcer", "waiting_reasons"]

log = logging.getLogger("hotmesh.presence")

#: Seconds between two announcements of a live worker.
ANNOUNCE_EVERY = 5.0
#: A worker not heard from for this long is taken for gone.
SEEN_WITHIN = 30.0


class Announcer:
    """Keeps one worker's announcement fresh while it runs."""

    def __init__(self, worker: Worker, every: float = ANNOUNCE_EVERY) -> None:
        self.worker = worker
        self.every = every
        self._task: asyncio.Task[None] | None = None

    def presence(self) -> WorkerPresence:
        return WorkerPresence(
            worker_id=self.worker.id,
            queue=self.worker.task_queue,
            workflows=sorted(self.worker.workflows),
            activities=sorted(self.worker.activities),
        )

    async def announce(self) -> None:
        try:
            async with self.worker.backend.transaction() as tx:
                await tx.store.announce_worker(self.presence())
        except Exception as error:  # presence is advice: never stop a worker for it
            log.info("worker %s could not announce itself: %s", self.worker.id, error)

    async def start(self) -> Announcer:
        await self.announce()
        self._task = asyncio.create_task(self._loop(), name=f"hotmesh:{self.worker.id}:presence")
        return self

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.announce()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            async with self.worker.backend.transaction() as tx:
                await tx.store.remove_worker(self.worker.task_queue, self.worker.id)
        except Exception as error:
            log.info("worker %s could not withdraw its announcement: %s", self.worker.id, error)


async def waiting_reasons(
    backend: Backend, export: WorkflowExport, seen_within: float = SEEN_WITHIN
) -> list[str]:
    """Why an unfinished job's ready work is not taken: the names of this job
    (its workflow, its hooks, its pending activities) that have ready tasks on
    its queue and that no worker announced in the last ``seen_within`` s."""
    if export.status in TERMINAL_STATUSES:
        return []
    queue = export.task_queue
    workflows = {export.workflow_name, *(str(h["workflow_name"]) for h in export.hooks)}
    activities = {e.name for e in export.timeline if e.kind == "activity" and e.status != "done"}
    async with backend.transaction(readonly=True) as tx:
        backlog = await tx.stream.backlog(queue)
        workers = await tx.store.workers(queue, seen_within=seen_within)
    served = {
        "run": {name for w in workers for name in w.workflows},
        "activity": {name for w in workers for name in w.activities},
    }
    mine = {"run": workflows, "activity": activities}
    now = backend.now()
    reasons = []
    for entry in backlog:
        if entry.name not in mine.get(entry.kind, set()):
            continue
        if entry.name in served.get(entry.kind, set()):
            continue
        what = "workflow" if entry.kind == "run" else "activity"
        others = (
            f"; workers seen: {', '.join(w.worker_id for w in workers)}"
            if workers
            else "; no worker at all was seen on it"
        )
        reasons.append(
            f"no worker has registered {what} {entry.name!r} on queue {queue!r} in the last"
            f" {seen_within:.0f} s ({entry.count} ready task(s), the oldest for"
            f" {max(now - entry.oldest, 0.0):.0f} s{others})"
        )
    return reasons
