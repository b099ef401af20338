"""The Store role in SQL: jobs and their entity, threads, steps, changes, search."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from hotmesh_core.advance import Advance, Advanced, Superseded
from hotmesh_core.entity_ops import READ_ONLY_OPS, EntityPathError, split_path
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
from hotmesh_core.replay import CANCEL_INDEX

from . import rows
from .entity_query import Compiled, compile_query, index_statement
from .rows import (
    CHANGE_COLUMNS,
    JOB_COLUMNS,
    STEP_COLUMNS,
    THREAD_COLUMNS,
    error_param,
    jsonb,
)

if TYPE_CHECKING:
    from .backend import PgTransaction

TERMINAL = list(TERMINAL_STATUSES)
ORDER_COLUMNS = {"created_at", "updated_at", "id"}


def _path_expression(column: str, path: str, *, text: bool) -> sql.Composable:
    """``column -> 'a' -> 'b'`` (or ``->>`` last): the shape a user's expression index has."""
    parts = split_path(path)
    expression: sql.Composable = sql.Identifier(column)
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        operator = "->>" if (last and text) else "->"
        expression = sql.SQL("({} {} {})").format(expression, sql.SQL(operator), sql.Literal(part))
    return expression


def _equals(column: str, path: str, value: Any) -> sql.Composable:
    """JSON equality at a path; booleans also in the ``(col->>'k')::boolean`` form.

    The second form is what a partial index such as
    ``WHERE (context->>'isPremium')::boolean = true`` is written with, so the
    planner can prove the index applies.  The JSON equality comes first and is
    as cheap, so rows holding a non-boolean never reach the cast.
    """
    equality = sql.SQL("{} = {}").format(
        _path_expression(column, path, text=False), sql.Placeholder()
    )
    if isinstance(value, bool):
        cast = sql.SQL("({})::boolean").format(_path_expression(column, path, text=True))
        return sql.SQL("({} AND {})").format(equality, cast if value else sql.SQL("NOT ") + cast)
    return equality


class PgStore:
    def __init__(self, tx: PgTransaction) -> None:
        self.tx = tx

    # -- the bucket hint --------------------------------------------------------
    # A statement by job id that does not name the job's bucket is planned and
    # run against every partition; one that does touches one. Buckets never
    # change, so the backend remembers each job's. A job can still be deleted
    # (expired) and started again under its id in another bucket, so a hinted
    # statement that finds nothing is tried again without the hint; a list is
    # read with the hint only once the job was found by it in this transaction.

    def _hint(self, job_id: str) -> str | None:
        return self.tx.backend.buckets.get(job_id)

    async def _one_for_job(
        self, query: str, key: str, job_id: str, before: list[Any], after: list[Any]
    ) -> dict[str, Any] | None:
        """Run ``query`` with ``{job}`` as the job condition on ``key``, hinted if known."""
        bucket = self._hint(job_id)
        table, dot, _ = key.rpartition(".")
        bucket_column = f"{table}{dot}bucket"
        if bucket is not None:
            row = await self.tx.one(
                query.replace("{job}", f"{key} = %s AND {bucket_column} = %s"),
                [*before, job_id, bucket, *after],
            )
            if row is not None:
                self.tx.found_jobs.add(job_id)
                return row
            self.tx.backend.buckets.pop(job_id, None)
        return await self.tx.one(query.replace("{job}", f"{key} = %s"), [*before, job_id, *after])

    async def _all_for_job(self, query: str, job_id: str, after: list[Any]) -> list[dict[str, Any]]:
        bucket = self._hint(job_id) if job_id in self.tx.found_jobs else None
        if bucket is not None:
            return await self.tx.all(
                query.replace("{job}", "job_id = %s AND bucket = %s"), [job_id, bucket, *after]
            )
        return await self.tx.all(query.replace("{job}", "job_id = %s"), [job_id, *after])

    def _learn(self, row: dict[str, Any]) -> Job:
        """A job row selected with its bucket: remember the bucket, return the job."""
        bucket = row.pop("bucket")
        self.tx.backend.remember_bucket(row["id"], bucket)
        self.tx.found_jobs.add(row["id"])
        return rows.job(row)

    async def create_job(
        self, job: Job, *, run: Task | None = None, owner: str | None = None, lease: float = 0.0
    ) -> tuple[Job, bool]:
        # The primary key is (id, bucket), so "does this id exist" looks in every
        # bucket, under a lock on the id (hm_id_free): a job without expire goes
        # to 'keep', one with expire to its day's bucket, and two starts of one
        # id in different buckets must not both find it free.
        params: list[Any] = [
            job.id,
            job.entity,
            job.workflow_name,
            job.task_queue,
            jsonb(job.args),
            job.status,
            jsonb(job.context),
            job.parent_id,
            job.parent_dimension,
            job.parent_index,
            job.persistent,
            jsonb(job.search),
            job.expire,
            # An eager start's end is announced only if a handle elsewhere asks
            # (get_awaited_job): the starting process hears it from the commit.
            owner is None,
            job.expire,
            job.id,
        ]
        insert = (
            f"INSERT INTO jobs (id, entity, workflow_name, task_queue, args, status, context,"
            f" parent_id, parent_dimension, parent_index, persistent, search, expire, awaited,"
            f" bucket)"
            f" SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            f" hm_bucket('jobs', clock_timestamp() + make_interval(secs => %s), 'keep')"
            f" WHERE hm_id_free(%s)"
            f" ON CONFLICT (id, bucket) DO NOTHING RETURNING {JOB_COLUMNS}, bucket"
        )
        if run is None:
            row = await self.tx.one(insert, params)
        elif owner is None:
            # The job, its first run and the wake-up of idle workers: one statement.
            row = await self.tx.one(
                f"WITH created AS ({insert}),"
                " run AS (INSERT INTO tasks (queue, kind, job_id, dimension, name, payload,"
                "  sticky) SELECT %s, 'run', id, %s, %s, %s, %s FROM created"
                "  ON CONFLICT (job_id, dimension) WHERE kind = 'run' AND lease_owner IS NULL"
                "  DO NOTHING RETURNING queue),"
                " woken AS (SELECT pg_notify(%s, queue) FROM run)"
                " SELECT created.*, (SELECT count(*) FROM woken) AS woken FROM created",
                [
                    *params,
                    run.queue,
                    run.dimension,
                    run.name,
                    jsonb(run.payload),
                    run.sticky,
                    self.tx.backend.queue_channel,
                ],
            )
            if row is not None:
                row.pop("woken")
        else:
            # An eager start: the job and its first run leased to ``owner``, who
            # runs it at once; nobody else is woken (as Stream.enqueue(owner=)).
            row = await self.tx.one(
                f"WITH created AS ({insert}),"
                " run AS (INSERT INTO tasks (queue, kind, job_id, dimension, name, payload,"
                "  sticky, visible_at, lease_owner, attempts)"
                "  SELECT %s, 'run', id, %s, %s, %s, %s,"
                "  clock_timestamp() + make_interval(secs => %s), %s, 1 FROM created"
                "  RETURNING id)"
                " SELECT created.*, (SELECT id FROM run) AS run_id FROM created",
                [
                    *params,
                    run.queue,
                    run.dimension,
                    run.name,
                    jsonb(run.payload),
                    run.sticky,
                    lease,
                    owner,
                ],
            )
            if row is not None:
                run.id, run.attempts, run.lease_owner = str(row.pop("run_id")), 1, owner
        if row is not None:
            return self._learn(row), True
        existing = await self.get_job(job.id)
        assert existing is not None
        return existing, False

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._one_for_job(
            f"SELECT {JOB_COLUMNS}, bucket FROM jobs WHERE {{job}}", "id", job_id, [], []
        )
        return None if row is None else self._learn(row)

    async def lock_job(self, job_id: str) -> None:
        await self._one_for_job(
            "SELECT 1 AS locked FROM jobs WHERE {job} FOR NO KEY UPDATE", "id", job_id, [], []
        )

    async def get_awaited_job(self, job_id: str) -> Job | None:
        # One statement: the flag set, if it was not (the row as the UPDATE
        # left it: after waiting for a finishing advance that held the row's
        # lock, so that one either saw the flag or is seen here, ended), else
        # the job as it is (then the end is announced already).
        hint = self._hint(job_id)
        where = "id = %s" if hint is None else "id = %s AND bucket = %s"
        key = [job_id] if hint is None else [job_id, hint]
        row = await self.tx.one(
            f"WITH asked AS (UPDATE jobs SET awaited = true WHERE {where} AND NOT awaited"
            f" RETURNING {JOB_COLUMNS}, bucket)"
            f" SELECT * FROM asked UNION ALL SELECT {JOB_COLUMNS}, bucket FROM jobs"
            f" WHERE {where} AND NOT EXISTS (SELECT FROM asked)",
            [*key, *key],
        )
        if row is None and hint is not None:  # a stale hint (expired, started again)
            self.tx.backend.buckets.pop(job_id, None)
            return await self.get_awaited_job(job_id)
        return None if row is None else self._learn(row)

    async def set_job_status(
        self, job_id: str, status: str, *, result: Any = None, error: ErrorInfo | None = None
    ) -> Job | None:
        row = await self._one_for_job(
            f"UPDATE jobs SET status = %s, result = %s, error = %s,"
            f" updated_at = clock_timestamp(),"
            f" finished_at = CASE WHEN %s THEN clock_timestamp() END"
            f" WHERE {{job}} AND status <> ALL(%s) RETURNING {JOB_COLUMNS}",
            "id",
            job_id,
            [status, jsonb(result), error_param(error), status in TERMINAL_STATUSES],
            [TERMINAL],
        )
        return None if row is None else rows.job(row)

    async def continue_job(self, job_id: str, args: list[Any]) -> Job | None:
        row = await self._one_for_job(
            f"UPDATE jobs SET args = %s, status = 'running', activation = 0,"
            f" generation = generation + 1, updated_at = clock_timestamp()"
            f" WHERE {{job}} AND status <> ALL(%s) RETURNING {JOB_COLUMNS}, bucket",
            "id",
            job_id,
            [jsonb(args)],
            [TERMINAL],
        )
        if row is None:
            return None
        job = self._learn(row)
        await self.tx.run(
            "DELETE FROM steps WHERE job_id = %s AND bucket = %s AND dimension = %s",
            [job_id, self._hint(job_id), MAIN_THREAD],
        )
        return job

    async def reopen_job(
        self, job_id: str, *, activation: int, delete: Sequence[int]
    ) -> Job | None:
        row = await self._one_for_job(
            f"UPDATE jobs SET status = 'running', result = NULL, error = NULL,"
            f" finished_at = NULL, activation = activation + 1,"
            f" updated_at = clock_timestamp()"
            f" WHERE {{job}} AND status = 'failed' AND activation = %s"
            f" RETURNING {JOB_COLUMNS}, bucket",
            "id",
            job_id,
            [],
            [activation],
        )
        if row is None:
            return None
        job = self._learn(row)
        bucket = self._hint(job_id)
        await self.tx.run(
            "DELETE FROM steps WHERE job_id = %s AND bucket = %s AND dimension = %s"
            " AND idx = ANY(%s)",
            [job_id, bucket, MAIN_THREAD, list(delete)],
        )
        return job

    async def active_children(self, job_id: str) -> list[str]:
        found = await self.tx.all(
            "SELECT id FROM jobs WHERE parent_id = %s AND status <> ALL(%s) ORDER BY created_at",
            [job_id, TERMINAL],
        )
        return [row["id"] for row in found]

    async def create_thread(self, thread: Thread) -> bool:
        row = await self._one_for_job(
            "INSERT INTO threads (job_id, dimension, workflow_name, task_queue, args, signal_id,"
            " bucket) SELECT %s, %s, %s, %s, %s, %s, j.bucket FROM jobs j WHERE {job}"
            " ON CONFLICT DO NOTHING RETURNING 1 AS created",
            "j.id",
            thread.job_id,
            [
                thread.job_id,
                thread.dimension,
                thread.workflow_name,
                thread.task_queue,
                jsonb(thread.args),
                thread.signal_id,
            ],
            [],
        )
        return row is not None

    async def get_thread(self, job_id: str, dimension: str) -> Thread | None:
        row = await self._one_for_job(
            f"SELECT {THREAD_COLUMNS} FROM threads WHERE {{job}} AND dimension = %s",
            "job_id",
            job_id,
            [],
            [dimension],
        )
        return None if row is None else rows.thread(row)

    async def finish_thread(
        self, job_id: str, dimension: str, status: str, error: ErrorInfo | None = None
    ) -> Thread | None:
        row = await self._one_for_job(
            f"UPDATE threads SET status = %s, error = %s, finished_at = clock_timestamp()"
            f" WHERE {{job}} AND dimension = %s AND status = 'running'"
            f" RETURNING {THREAD_COLUMNS}",
            "job_id",
            job_id,
            [status, error_param(error)],
            [dimension],
        )
        return None if row is None else rows.thread(row)

    async def threads(self, job_id: str) -> list[Thread]:
        found = await self._all_for_job(
            f"SELECT {THREAD_COLUMNS} FROM threads WHERE {{job}} ORDER BY created_at, dimension",
            job_id,
            [],
        )
        return [rows.thread(row) for row in found]

    async def load_steps(
        self, job_id: str, dimension: str | None = None, indexes: Sequence[int] | None = None
    ) -> list[Step]:
        if dimension is None:
            found = await self._all_for_job(
                f"SELECT {STEP_COLUMNS} FROM steps WHERE {{job}} ORDER BY dimension, idx",
                job_id,
                [],
            )
        elif indexes is not None:
            match, param = _index_match(indexes)
            found = await self._all_for_job(
                f"SELECT {STEP_COLUMNS} FROM steps WHERE {{job}} AND dimension = %s"
                f" AND {match} ORDER BY idx",
                job_id,
                [dimension, param],
            )
        else:
            found = await self._all_for_job(
                f"SELECT {STEP_COLUMNS} FROM steps WHERE {{job}} AND dimension = %s ORDER BY idx",
                job_id,
                [dimension],
            )
        return [rows.step(row) for row in found]

    async def load_thread(
        self, job_id: str, dimension: str, indexes: Sequence[int] | None = None
    ) -> tuple[Job | None, Thread | None, list[Step]]:
        # One statement: the job, with its thread and its steps as JSON (their
        # own rows' columns, so rows.thread/rows.step read them as usual).
        match, params = "", [dimension]
        if indexes is not None:
            index_match, param = _index_match(indexes)
            match, params = f" AND {index_match}", [dimension, param]
        thread_doc = (
            "NULL::jsonb"
            if dimension == MAIN_THREAD
            else f"(SELECT to_jsonb(t) FROM (SELECT {THREAD_COLUMNS} FROM threads"
            " WHERE job_id = j.id AND bucket = j.bucket AND dimension = %s) t)"
        )
        row = await self._one_for_job(
            f"SELECT {JOB_COLUMNS}, j.bucket, {thread_doc} AS thread_doc,"
            f" (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.idx), '[]')"
            f"  FROM (SELECT {STEP_COLUMNS} FROM steps WHERE job_id = j.id AND bucket = j.bucket"
            f"  AND dimension = %s{match}) s) AS steps_doc"
            f" FROM jobs j WHERE {{job}}",
            "j.id",
            job_id,
            [*([] if dimension == MAIN_THREAD else [dimension]), *params],
            [],
        )
        if row is None:
            return None, None, []
        thread_doc, steps_doc = row.pop("thread_doc"), row.pop("steps_doc")
        job = self._learn(row)
        if dimension != MAIN_THREAD and thread_doc is None:
            return job, None, []
        thread = None if thread_doc is None else rows.thread(thread_doc)
        return job, thread, [rows.step(step) for step in steps_doc]

    async def insert_step(self, step: Step) -> bool:
        row = await self._one_for_job(
            # One clock reading for both times: a step inserted done starts and
            # finishes at once (a column default would be read after the SELECT).
            "WITH c AS MATERIALIZED (SELECT clock_timestamp() AS at)"
            " INSERT INTO steps (job_id, dimension, idx, kind, name, args, status, result, error,"
            " attempts, wake_queue, wake_name, wake_worker, started_at, finished_at, bucket)"
            " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " c.at, CASE WHEN %s THEN NULL ELSE c.at END, j.bucket"
            # Steps live in their job's bucket; an interrupted job takes no new step.
            " FROM jobs j, c WHERE {job} AND j.status <> 'interrupted'"
            " ON CONFLICT DO NOTHING RETURNING 1 AS inserted",
            "j.id",
            step.job_id,
            [
                step.job_id,
                step.dimension,
                step.index,
                step.kind,
                step.name,
                jsonb(step.args),
                step.status,
                jsonb(step.result),
                error_param(step.error),
                step.attempts,
                step.wake_queue,
                step.wake_name,
                step.wake_worker,
                step.status == "pending",
            ],
            [],
        )
        return row is not None

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
        row = await self._one_for_job(
            f"UPDATE steps SET status = %s, result = %s, error = %s,"
            f" attempts = coalesce(%s, attempts), finished_at = clock_timestamp()"
            f" WHERE {{job}} AND dimension = %s AND idx = %s AND status = 'pending'"
            f" RETURNING {STEP_COLUMNS}",
            "job_id",
            job_id,
            [
                "failed" if error is not None else "done",
                jsonb(result),
                error_param(error),
                attempts,
            ],
            [dimension, index],
        )
        return None if row is None else rows.step(row)

    async def mark_delivered(
        self, job_id: str, dimension: str, indexes: Sequence[int], activation: int
    ) -> bool:
        # One statement: the compare-and-set of the thread's activation, then the
        # steps, only if it succeeded. A racing run waits for the job (or
        # thread) row's lock, then finds the activation taken: no row.
        bucket = self._hint(job_id)
        for hint in [bucket, None] if bucket is not None else [None]:
            in_bucket = "" if hint is None else " AND bucket = %s"
            hinted = [] if hint is None else [hint]
            if dimension == MAIN_THREAD:
                claim = f"UPDATE jobs SET activation = %s WHERE id = %s{in_bucket}"
                claim_params: list[Any] = [activation, job_id, *hinted]
                if CANCEL_INDEX not in indexes:
                    # A cancel request this run has not seen (it came after
                    # the run read): the next activation delivers it.
                    claim += (
                        " AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.job_id = jobs.id"
                        " AND s.bucket = jobs.bucket AND s.dimension = '' AND s.idx = %s"
                        " AND s.activation IS NULL)"
                    )
                    claim_params.append(CANCEL_INDEX)
            else:
                claim = (
                    f"UPDATE threads SET activation = %s"
                    f" WHERE job_id = %s{in_bucket} AND dimension = %s"
                )
                claim_params = [activation, job_id, *hinted, dimension]
            match, param = _index_match(indexes)
            row = await self.tx.one(
                f"WITH claimed AS ({claim} AND activation = %s RETURNING bucket),"
                " marked AS (UPDATE steps SET activation = %s"
                f" WHERE job_id = %s{in_bucket} AND dimension = %s AND {match}"
                " AND status <> 'pending' AND activation IS NULL"
                " AND bucket = (SELECT bucket FROM claimed) RETURNING 1)"
                " SELECT (SELECT count(*) FROM marked)::int AS marked"
                " WHERE EXISTS (SELECT 1 FROM claimed)",
                [
                    *claim_params,
                    activation - 1,
                    activation,
                    job_id,
                    *hinted,
                    dimension,
                    param,
                ],
            )
            if row is not None:
                return bool(row["marked"] == len(indexes))
        return False

    async def advance(self, plan: Advance) -> Advanced:
        # hm_advance (migration 0008): the whole commit in one statement.
        try:
            row = await self.tx.one(
                "SELECT hm_advance(%s, %s, %s, %s, %s) AS done",
                [
                    jsonb(rows.advance_document(plan)),
                    self._hint(plan.job_id),
                    TERMINAL,
                    self.tx.backend.queue_channel,
                    self.tx.backend.job_channel,
                ],
            )
        except psycopg.Error as error:
            if error.sqlstate == "HM010":
                raise Superseded(error.diag.message_primary or str(error)) from None
            raise
        assert row is not None
        return _advanced(row["done"])

    async def advance_many(self, plans: Sequence[Advance]) -> list[Advanced | None]:
        # hm_advance_many (migration 0017): each advance a subtransaction, NULL
        # where one failed (the caller applies it again alone, to see why).
        row = await self.tx.one(
            "SELECT hm_advance_many(%s, %s::text[], %s, %s, %s) AS done",
            [
                jsonb([rows.advance_document(plan) for plan in plans]),
                [self._hint(plan.job_id) for plan in plans],
                TERMINAL,
                self.tx.backend.queue_channel,
                self.tx.backend.job_channel,
            ],
        )
        assert row is not None
        return [None if done is None else _advanced(done) for done in row["done"]]

    async def note_attempt(
        self, job_id: str, dimension: str, index: int, attempts: int, error: ErrorInfo
    ) -> None:
        await self.tx.run(
            "UPDATE steps SET attempts = %s, error = %s"
            " WHERE job_id = %s AND dimension = %s AND idx = %s AND status = 'pending'",
            [attempts, error_param(error), job_id, dimension, index],
        )

    async def apply_entity(
        self, job_id: str, op: EntityOp, *, dimension: str | None, index: int | None
    ) -> tuple[Any, int]:
        if op.path is not None:
            split_path(op.path)
        try:
            row = await self.tx.one(
                "SELECT result, new_version FROM hm_apply_entity(%s, %s, %s, %s, %s, %s, %s)",
                [job_id, op.op, op.path, jsonb(op.value), dimension, index, self._hint(job_id)],
            )
        except psycopg.Error as error:
            if error.sqlstate == "HM001":
                raise EntityPathError(error.diag.message_primary or str(error)) from None
            if error.sqlstate == "HM002":
                raise WorkflowNotFound(error.diag.message_primary or str(error)) from None
            raise
        assert row is not None
        if op.op not in READ_ONLY_OPS:  # a no-op change repeats a version: harmless
            self.tx.notify_change(job_id, int(row["new_version"]))
        return row["result"], int(row["new_version"])

    async def entity_changes(self, job_id: str) -> list[EntityChange]:
        found = await self._all_for_job(
            f"SELECT {CHANGE_COLUMNS} FROM entity_changes WHERE {{job}} ORDER BY version",
            job_id,
            [],
        )
        return [rows.change(row) for row in found]

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
        conditions, params = _column_equals(
            entity=entity, status=status, workflow_name=workflow_name
        )
        for column, filters in (("context", where), ("search", search)):
            for path, value in (filters or {}).items():
                conditions.append(_equals(column, path, value))
                params.append(jsonb(value))
        field = (order_by or "created_at").lstrip("-")
        direction = sql.SQL("DESC") if (order_by or "").startswith("-") else sql.SQL("ASC")
        if field in ORDER_COLUMNS:
            key: sql.Composable = sql.Identifier(field)
        else:
            key = _path_expression("context", field, text=False)
        query = sql.SQL(
            "SELECT {} FROM jobs WHERE {} ORDER BY {} {} NULLS LAST, id {} LIMIT %s"
        ).format(
            sql.SQL(JOB_COLUMNS),
            sql.SQL(" AND ").join(conditions or [sql.SQL("true")]),
            key,
            direction,
            direction,
        )
        found = await self.tx.all(query, [*params, limit])
        return [rows.job(row) for row in found]

    async def expire_jobs(self, now: datetime | None = None) -> int:
        # The in-transaction part of a maintenance pass (sql/migrations/0002):
        # deletes what expired outside a droppable partition, makes the coming
        # days' partitions. PostgresBackend.maintain drops the days that are over.
        row = await self.tx.one(
            "SELECT hm_maintain(coalesce(%s::timestamptz, clock_timestamp())) AS n", [now]
        )
        await self.tx.run(
            "SELECT hm_maintain_dead_letters(coalesce(%s::timestamptz, clock_timestamp()), %s)",
            [now, DEAD_LETTER_KEEP],
        )
        return int(row["n"]) if row else 0

    # -- entity queries, search fields, change feed (hotmesh_core.entity_query) --

    async def query_jobs(self, query: JobQuery) -> list[tuple[Job, list[Any]]]:
        statement, params = compile_query(query, JOB_COLUMNS)
        try:
            found = await self.tx.all(statement, params)
        except psycopg.errors.DataError:
            if query.after is None:
                raise
            raise InvalidQuery("not a cursor of this query (its key does not parse)") from None
        keys = [
            name for name in (found[0] if found else {}) if name[:1] == "k" and name[1:].isdigit()
        ]
        return [
            (rows.job({k: v for k, v in row.items() if k not in keys}), [row[k] for k in keys])
            for row in found
        ]

    async def count_jobs(self, query: JobQuery) -> int:
        statement, params = compile_query(query, JOB_COLUMNS, count=True)
        row = await self.tx.one(statement, params)
        return int(row["n"]) if row else 0

    async def create_index(
        self, name: str, entity: str, path: tuple[str, ...] | None, kind: str, where: Node
    ) -> None:
        await self.tx.run(index_statement(name, entity, path, kind, where), [])

    async def set_search(self, job_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        row = await self._one_for_job(
            "UPDATE jobs SET search = search || %s, updated_at = clock_timestamp()"
            " WHERE {job} RETURNING search",
            "id",
            job_id,
            [jsonb(fields)],
            [],
        )
        if row is None:
            raise WorkflowNotFound(f"no workflow with id {job_id!r}")
        search: dict[str, Any] = row["search"]
        return search

    async def changes_after(self, job_id: str, version: int, limit: int) -> list[EntityChange]:
        found = await self._all_for_job(
            f"SELECT {CHANGE_COLUMNS} FROM entity_changes WHERE {{job}} AND version > %s"
            " ORDER BY version LIMIT %s",
            job_id,
            [version, limit],
        )
        return [rows.change(row) for row in found]

    # -- entity operations applied outside the database (hotmesh_core.codec) --

    async def lock_entity(self, job_id: str) -> tuple[Any, int] | None:
        row = await self._one_for_job(
            "SELECT context, version FROM jobs WHERE {job} FOR UPDATE", "id", job_id, [], []
        )
        return None if row is None else (row["context"], int(row["version"]))

    async def write_entity(self, job_id: str, context: Any, change: EntityChange) -> None:
        row = await self._one_for_job(
            "WITH j AS (UPDATE jobs SET context = %s, version = %s,"
            " updated_at = clock_timestamp() WHERE {job} RETURNING bucket)"
            " INSERT INTO entity_changes (job_id, version, op, path, value, dimension, idx,"
            " bucket) SELECT %s, %s, %s, %s, %s, %s, %s, j.bucket FROM j RETURNING 1 AS written",
            "id",
            job_id,
            [jsonb(context), change.version],
            [
                job_id,
                change.version,
                change.op,
                change.path,
                jsonb(change.value),
                change.dimension,
                change.index,
            ],
        )
        if row is None:
            raise WorkflowNotFound(f"no workflow with id {job_id!r}")
        self.tx.notify_change(job_id, change.version)

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
        # Served by jobs_created_id / jobs_status_created_id / jobs_entity_created
        # (migration 0010), read backwards; times compare in whole microseconds,
        # the precision of timestamptz, so a cursor never skips or repeats a row.
        conditions, params = _column_equals(
            entity=entity, status=status, workflow_name=workflow_name, parent_id=parent_id
        )
        if id_prefix is not None:
            escaped = id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(sql.SQL("id LIKE %s"))
            params.append(escaped + "%")
        if where:
            # The query language of mf.entity.find: operators, $or...
            compiled = Compiled()
            conditions.append(compiled.node(parse_where(where), "context"))
            params.extend(compiled.params)
        moment = "(timestamptz 'epoch' + %s * interval '1 microsecond')"
        if created_from is not None:
            conditions.append(sql.SQL(f"created_at >= {moment}"))
            params.append(round(created_from * 1_000_000))
        if created_to is not None:
            conditions.append(sql.SQL(f"created_at < {moment}"))
            params.append(round(created_to * 1_000_000))
        if before is not None:
            conditions.append(sql.SQL(f"(created_at, id) < ({moment}, %s)"))
            params.extend([before.created_us, before.job_id])
        # ORDER BY names the table's column: a bare created_at would be the
        # selected alias (epoch seconds, a float), which no index serves.
        query = sql.SQL(
            "SELECT {} FROM jobs WHERE {} ORDER BY jobs.created_at DESC, jobs.id DESC LIMIT %s"
        ).format(sql.SQL(JOB_COLUMNS), sql.SQL(" AND ").join(conditions or [sql.SQL("true")]))
        found = await self.tx.all(query, [*params, limit])
        return [rows.job(row) for row in found]

    # -- worker presence ------------------------------------------------------------
    async def announce_worker(self, presence: WorkerPresence) -> None:
        await self.tx.run(
            "INSERT INTO workers (queue, worker_id, workflows, activities)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (queue, worker_id) DO UPDATE"
            " SET workflows = excluded.workflows, activities = excluded.activities,"
            " last_seen = clock_timestamp()",
            [presence.queue, presence.worker_id, presence.workflows, presence.activities],
        )

    async def remove_worker(self, queue: str, worker_id: str) -> None:
        await self.tx.run(
            "DELETE FROM workers WHERE queue = %s AND worker_id = %s", [queue, worker_id]
        )

    async def workers(self, queue: str, *, seen_within: float) -> list[WorkerPresence]:
        found = await self.tx.all(
            "SELECT worker_id, queue, workflows, activities,"
            " extract(epoch FROM last_seen)::float8 AS last_seen FROM workers"
            " WHERE queue = %s AND last_seen >= clock_timestamp() - make_interval(secs => %s)"
            " ORDER BY worker_id",
            [queue, seen_within],
        )
        return [
            WorkerPresence(
                worker_id=row["worker_id"],
                queue=row["queue"],
                workflows=list(row["workflows"]),
                activities=list(row["activities"]),
                last_seen=float(row["last_seen"]),
            )
            for row in found
        ]

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        # One statement for many ids, across every bucket (no hint: their
        # buckets differ); each row teaches its job's bucket, as get_job does.
        if not job_ids:
            return []
        found = await self.tx.all(
            f"SELECT {JOB_COLUMNS}, bucket FROM jobs WHERE id = ANY(%s)", [list(set(job_ids))]
        )
        return [self._learn(row) for row in found]


def _index_match(indexes: Sequence[int]) -> tuple[str, Any]:
    """The condition on ``idx`` for the given step indexes, with its parameter.

    One index (a sequential workflow's every step) is an equality: a partition
    that was never analyzed (a new day's, or any in a short-lived app) is
    planned as tiny, and the planner then leaves ``idx = ANY(...)`` out of the
    index condition and filters every step of the job -- a cost that grew
    with the history (W7: 1.7 ms a step at the start, 2.4 ms after 3,000).
    """
    if len(indexes) == 1:
        return "idx = %s", indexes[0]
    return "idx = ANY(%s)", list(indexes)


def _column_equals(**columns: str | None) -> tuple[list[sql.Composable], list[Any]]:
    """``column = %s`` for each jobs column given a value, with the values."""
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in columns.items():
        if value is not None:
            conditions.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    return conditions, params


def _advanced(done: dict[str, Any]) -> Advanced:
    """What hm_advance returned (``{"task_ids": [...], "finished": bool}``)."""
    return Advanced(
        [None if task_id is None else str(task_id) for task_id in done["task_ids"]],
        bool(done["finished"]),
    )
