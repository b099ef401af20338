"""The Stream role in SQL: ``FOR UPDATE SKIP LOCKED`` claims under a lease.

A leased task's ``visible_at`` is the end of its lease: claiming, extending,
retrying and orphan take-over are all the one rule "claim what is visible".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hotmesh_core.models import DEAD_LETTER_KEEP, Backlog, DeadLetter, ErrorInfo, Task
from hotmesh_core.observe import QueueStats

from . import rows
from .rows import error_param, jsonb, task_columns

if TYPE_CHECKING:
    from .backend import PgTransaction


class PgStream:
    def __init__(self, tx: PgTransaction) -> None:
        self.tx = tx

    async def enqueue(
        self, task: Task, *, delay: float = 0.0, owner: str | None = None, lease: float = 0.0
    ) -> str | None:
        row = await self.tx.one(
            "INSERT INTO tasks (queue, kind, job_id, dimension, name, idx, payload, visible_at,"
            " lease_owner, attempts, sticky)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s,"
            " clock_timestamp() + make_interval(secs => %s), %s, %s, %s)"
            " ON CONFLICT (job_id, dimension) WHERE kind = 'run' AND lease_owner IS NULL"
            # Not DO NOTHING: the no-op update locks the queued run until this
            # transaction commits, so no worker (SKIP LOCKED) can claim it and read
            # the history before the answer that made us wake it is visible.
            " DO UPDATE SET visible_at = tasks.visible_at RETURNING id, xmax <> 0 AS existed",
            [
                task.queue,
                task.kind,
                task.job_id,
                task.dimension,
                task.name,
                task.index,
                jsonb(task.payload),
                delay if owner is None else lease,
                owner,
                0 if owner is None else 1,
                task.sticky,
            ],
        )
        if row is None or row["existed"]:
            return None  # a queued run of this thread will see everything
        if owner is None:
            self.tx.notify_queue(task.queue)
        return str(row["id"])

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
        # Cleared before the snapshot: a NOTIFY for anything committed after it
        # will set the event again, so an idle wait cannot miss it.
        self.tx.backend.queue_event(queue).clear()
        found = await self.tx.all(
            f"WITH ready AS ("
            f"  SELECT id FROM tasks"
            # statement_timestamp(), not clock_timestamp(): a stable value is an
            # index condition, so the scan of tasks_claim starts and stops at
            # the ready rows (clock_timestamp() filtered every queued row,
            # leased ones included: 1.1 ms for an empty claim among 8,000).
            f"  WHERE queue = %s AND visible_at <= statement_timestamp()"
            f"  AND (kind = 'timer' OR (kind = 'run' AND name = ANY(%s))"
            f"       OR (kind = 'activity' AND name = ANY(%s)))"
            # A run another worker keeps cached is left to it a while (or until
            # it stops); a lease that ran out makes it anyone's.
            f"  AND (sticky IS NULL OR sticky = %s OR lease_owner IS NOT NULL"
            f"       OR visible_at <= statement_timestamp() - make_interval(secs => %s)"
            f"       OR sticky IN (SELECT worker FROM stopped_workers WHERE queue = %s))"
            f"  ORDER BY visible_at LIMIT %s FOR UPDATE SKIP LOCKED),"
            f" claimed AS (UPDATE tasks t SET lease_owner = %s,"
            f"  attempts = t.attempts + 1,"
            f"  visible_at = clock_timestamp() + make_interval(secs => %s)"
            f"  FROM ready WHERE t.id = ready.id RETURNING {task_columns('t')}),"
            # Nothing to claim: when the next task of the queue comes due (or a
            # lease runs out), so that the idle wait needs no query of its own.
            f" due AS (SELECT extract(epoch FROM min(visible_at) - clock_timestamp())::float8"
            f"  AS next_due FROM tasks WHERE queue = %s AND visible_at > statement_timestamp()"
            f"  AND NOT EXISTS (SELECT 1 FROM claimed))"
            f" SELECT claimed.*, due.next_due FROM due LEFT JOIN claimed ON true",
            [
                queue,
                list(workflow_names),
                list(activity_names),
                owner.partition("#")[0],
                sticky_wait,
                queue,
                limit,
                owner,
                lease,
                queue,
            ],
        )
        if len(found) == 1 and found[0]["id"] is None:
            self.tx.backend.note_next_due(queue, found[0]["next_due"])
            return []
        for row in found:
            row.pop("next_due")
        return [rows.task(row) for row in found]

    async def worker_stopped(self, queue: str, worker: str) -> int:
        # Remembered a week (a worker that never starts again is forgotten).
        row = await self.tx.one(
            "WITH old AS (DELETE FROM stopped_workers"
            "  WHERE stopped_at < clock_timestamp() - interval '7 days'),"
            " noted AS (INSERT INTO stopped_workers (queue, worker) VALUES (%s, %s)"
            "  ON CONFLICT (queue, worker) DO UPDATE SET stopped_at = clock_timestamp()),"
            " freed AS (UPDATE tasks SET sticky = NULL WHERE queue = %s AND sticky = %s"
            "  RETURNING 1)"
            " SELECT count(*)::int AS freed FROM freed",
            [queue, worker, queue, worker],
        )
        freed = int(row["freed"]) if row is not None else 0
        if freed:
            self.tx.notify_queue(queue)
        return freed

    async def worker_started(self, queue: str, worker: str) -> None:
        await self.tx.run(
            "DELETE FROM stopped_workers WHERE queue = %s AND worker = %s", [queue, worker]
        )

    async def extend_lease(self, task_id: str, *, owner: str, lease: float) -> bool:
        row = await self.tx.one(
            "UPDATE tasks SET visible_at = clock_timestamp() + make_interval(secs => %s)"
            " WHERE id = %s AND lease_owner = %s RETURNING 1 AS kept",
            [lease, int(task_id), owner],
        )
        return row is not None

    async def dead_letters(
        self, *, job_id: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        found = await self.tx.all(
            "SELECT task, error, extract(epoch FROM created_at)::float8 AS created_at"
            " FROM dead_letters WHERE (%s::text IS NULL OR task->>'job_id' = %s)"
            " ORDER BY created_at DESC, id DESC LIMIT %s",
            [job_id, job_id, limit],
        )
        return [rows.dead_letter(row) for row in found]

    async def release_leases(self, queue: str, *, owner: str, attempted: bool = True) -> int:
        found = await self.tx.all(
            "UPDATE tasks SET visible_at = clock_timestamp(),"
            " attempts = CASE WHEN %s THEN attempts ELSE greatest(attempts - 1, 0) END"
            " WHERE queue = %s AND visible_at > clock_timestamp()"
            " AND (lease_owner = %s OR left(lease_owner, length(%s) + 1) = %s || '#')"
            " RETURNING 1 AS released",
            [attempted, queue, owner, owner, owner],
        )
        if found:
            self.tx.notify_queue(queue)
        return len(found)

    async def backlog(self, queue: str) -> list[Backlog]:
        found = await self.tx.all(
            "SELECT kind, name, count(*)::int AS count,"
            " extract(epoch FROM min(visible_at))::float8 AS oldest FROM tasks"
            " WHERE queue = %s AND kind <> 'timer' AND visible_at <= clock_timestamp()"
            " GROUP BY kind, name ORDER BY kind, name",
            [queue],
        )
        return [Backlog(**row) for row in found]

    async def queue_stats(self) -> list[QueueStats]:
        # A leased task has visible_at = the end of its lease (and a lease
        # owner); one whose lease ran out is ready again, as claim sees it.
        found = await self.tx.all(
            "SELECT queue,"
            " count(*) FILTER (WHERE ready)::int AS ready,"
            " extract(epoch FROM min(visible_at) FILTER (WHERE ready))::float8 AS oldest_ready,"
            " count(*) FILTER (WHERE NOT ready AND NOT leased)::int AS delayed,"
            " count(*) FILTER (WHERE leased)::int AS leased,"
            " coalesce(array_agg(DISTINCT split_part(lease_owner, '#', 1))"
            "  FILTER (WHERE leased), '{}') AS workers"
            " FROM (SELECT queue, visible_at, lease_owner,"
            "  lease_owner IS NOT NULL AND visible_at > clock_timestamp() AS leased,"
            "  kind <> 'timer' AND visible_at <= clock_timestamp() AS ready FROM tasks) AS t"
            " GROUP BY queue ORDER BY queue",
            [],
        )
        return [
            QueueStats(
                row["queue"],
                row["ready"],
                row["oldest_ready"],
                row["delayed"],
                row["leased"],
                tuple(sorted(row["workers"])),
            )
            for row in found
        ]

    async def remove_job_tasks(self, job_id: str, dimension: str | None = None) -> int:
        found = await self.tx.all(
            "DELETE FROM tasks WHERE job_id = %s AND (%s::text IS NULL OR dimension = %s)"
            " RETURNING 1 AS removed",
            [job_id, dimension, dimension],
        )
        return len(found)

    async def ack(self, task_id: str) -> bool:
        row = await self.tx.one(
            "DELETE FROM tasks WHERE id = %s RETURNING 1 AS gone", [int(task_id)]
        )
        return row is not None

    async def retry(self, task_id: str, *, delay: float, owner: str | None = None) -> None:
        # A run task is moved (deleted and queued again, "unless an unclaimed run
        # of its thread is queued": that one will do). An UPDATE guarded by NOT
        # EXISTS raced a run queued concurrently and broke the unique index of
        # unclaimed runs; ON CONFLICT waits for it and gives way.
        row = await self.tx.one(
            "WITH gone AS (DELETE FROM tasks WHERE id = %s AND kind = 'run'"
            "  AND (%s::text IS NULL OR lease_owner = %s)"
            "  RETURNING queue, kind, job_id, dimension, name, idx, payload, attempts),"
            " moved AS (INSERT INTO tasks (queue, kind, job_id, dimension, name, idx, payload,"
            "  visible_at, lease_owner, attempts)"
            "  SELECT queue, kind, job_id, dimension, name, idx, payload,"
            "  clock_timestamp() + make_interval(secs => %s), NULL, attempts FROM gone"
            "  ON CONFLICT (job_id, dimension) WHERE kind = 'run' AND lease_owner IS NULL"
            "  DO NOTHING RETURNING queue),"
            " kept AS (UPDATE tasks SET lease_owner = NULL,"
            "  visible_at = clock_timestamp() + make_interval(secs => %s)"
            "  WHERE id = %s AND kind <> 'run' AND (%s::text IS NULL OR lease_owner = %s)"
            "  RETURNING queue)"
            " SELECT queue FROM moved UNION ALL SELECT queue FROM kept",
            [int(task_id), owner, owner, delay, delay, int(task_id), owner, owner],
        )
        if row is not None:
            self.tx.notify_queue(row["queue"])

    async def dead_letter(self, task_id: str, error: ErrorInfo) -> None:
        await self.tx.run(
            "WITH gone AS (DELETE FROM tasks WHERE id = %s RETURNING *)"
            " INSERT INTO dead_letters (id, task, error, expires_at, bucket)"
            " SELECT id, to_jsonb(gone), %s, e, hm_bucket('dead_letters', e, 'later')"
            " FROM gone, (SELECT clock_timestamp() + make_interval(secs => %s) AS e) AS expiry",
            [int(task_id), error_param(error), DEAD_LETTER_KEEP],
        )
