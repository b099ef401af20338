"""The queue's statements keep to their indexes however the table's statistics look.

A queue table is often empty when autovacuum visits it. Truncated to no pages,
it then looks free to scan, and statements planned from then on read every row
of tasks, dead ones included, once it has filled again; a statement planned for
a hundred ids (`id = ANY(ARRAY(SELECT ...))`) did so whatever the statistics.
What a DBA sees: the table's sequential scans in pg_stat_user_tables.
"""

from __future__ import annotations

import uuid

import psycopg

from hotmesh_core import MemFlow, workflow
from hotmesh_postgres.testing import test_dsn


async def plus_one(x: int) -> int:
    return x + 1


async def three_steps(x: int) -> int:
    acts = workflow.proxy_activities(activities=[plus_one])
    a = await acts.plus_one(x)
    b = await acts.plus_one(a)
    return await acts.plus_one(b)  # type: ignore[no-any-return]


def sequential_scans(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'tasks'",
            [schema],
        ).fetchone()
    assert row is not None
    return int(row[0])


async def open_app(app_id: str, dsn: str) -> MemFlow:
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn)
    await mf.worker("q", workflows=[three_steps], activities=[plus_one], concurrency=4)
    return mf


async def test_workflows_do_not_scan_a_vacuumed_empty_queue() -> None:
    app_id, dsn = f"qp{uuid.uuid4().hex[:12]}", test_dsn()
    mf = await open_app(app_id, dsn)
    try:
        await mf.shutdown()
        # A queue that was long and is empty now, as autovacuum finds it.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{app_id}"')
            conn.execute(
                "INSERT INTO tasks (queue, kind, job_id, dimension, name)"
                " SELECT 'elsewhere', 'run', 'j' || g, '', 'n' FROM generate_series(1, 3000) g"
            )
            conn.execute("DELETE FROM tasks")
            conn.execute("VACUUM ANALYZE tasks")
        # New connections plan from these statistics.
        mf = await open_app(app_id, dsn)
        before = sequential_scans(dsn, app_id)
        handles = [
            await mf.workflow.start("q", "three_steps", args=[i], task_queue="q") for i in range(30)
        ]
        assert [await h.result(timeout=30) for h in handles] == [i + 3 for i in range(30)]
        await mf.shutdown()  # a closed session has flushed its statistics
        assert sequential_scans(dsn, app_id) == before
    finally:
        await mf.shutdown()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{app_id}" CASCADE')
