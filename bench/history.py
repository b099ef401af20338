"""W1 with and without a big history: 200,000 finished workflows already in the database.

Two databases per engine: a seeded one, and a fresh one for each repetition;
the repetitions alternate between them (fresh, seeded, fresh, seeded, ...),
each opening the engine, warming it up with 50 workflows and timing W1, so
that both figures of a pair are taken seconds apart: on a shared machine the
load then falls on both alike (measured one after the other, minutes apart,
the ratio crossed 1 in both directions between two runs).

Seeding runs no workflow: the rows that the engine itself wrote for the
finished workflows of one W1 (the template) are copied
with bulk ``INSERT ... SELECT ... generate_series`` until the database holds
at least ``target`` finished workflows, each copy with ids of its own (text
ids get a suffix, uuids a derived uuid, consistently across tables, so a
copied job still has its threads and steps). So the rows match what the
engine writes, by construction, whatever the engine's version. Then
``VACUUM ANALYZE`` (the state autovacuum reaches on its own) and W1 again.

Which tables: HotMesh's jobs, threads, steps and entity changes (its app
schema); DBOS's ``workflow_status`` and ``operation_outputs``; Absurd's task,
run and checkpoint tables of the queue. pgqueuer keeps no history of
finished jobs in its queue table (they are deleted; the log table is not
read by the dequeue), so it is not measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import psycopg

from .harness import median

# Columns that hold a workflow's, task's or run's identity (or point at one).
ID_COLUMNS = {
    "id",
    "job_id",
    "parent_id",
    "workflow_uuid",
    "parent_workflow_id",
    "task_id",
    "run_id",
    "last_attempt_run",
    "owner_run_id",
}


def tables(engine: str, schema: str) -> tuple[str, list[str]]:
    """(the table counting finished workflows, every table to copy) in ``schema``."""
    if engine == "hotmesh-postgres":
        return "jobs", ["jobs", "threads", "steps", "entity_changes"]
    if engine == "dbos":
        return "workflow_status", ["workflow_status", "operation_outputs"]
    if engine == "absurd":
        from .adapters.absurd_engine import QUEUE

        return f"t_{QUEUE}", [f"t_{QUEUE}", f"r_{QUEUE}", f"c_{QUEUE}"]
    raise ValueError(engine)


def seed(engine: str, dsn: str, schema: str, target: int) -> tuple[int, float]:
    """Copy the rows of finished workflows until ``target`` are stored; (count, seconds)."""
    counted, copied = tables(engine, schema)
    began = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}"."{counted}"').fetchone()
        base = int(row[0]) if row else 0
        assert base > 0, f"no finished {engine} workflows to copy"
        copies = math.ceil((target - base) / base)
        with conn.transaction():
            for table in copied:
                columns = conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = %s AND table_name = %s"
                    " AND is_generated = 'NEVER' AND is_identity = 'NO'"
                    " ORDER BY ordinal_position",
                    [schema, table],
                ).fetchall()
                if not columns:
                    continue
                names, values = [], []
                for name, kind in columns:
                    names.append(f'"{name}"')
                    if name not in ID_COLUMNS:
                        values.append(f't."{name}"')
                    elif kind == "uuid":
                        values.append(f"md5(t.\"{name}\"::text || ':' || g)::uuid")
                    else:
                        values.append(f"t.\"{name}\" || '-h' || g")
                conn.execute(
                    f'INSERT INTO "{schema}"."{table}" ({", ".join(names)})'
                    f" SELECT {', '.join(values)}"
                    f' FROM "{schema}"."{table}" t, generate_series(1, {copies}) g'
                )
        for table in copied:
            conn.execute(f'VACUUM ANALYZE "{schema}"."{table}"')
        row = conn.execute(f'SELECT count(*) FROM "{schema}"."{counted}"').fetchone()
    return int(row[0]) if row else 0, time.perf_counter() - began


def schema_of(engine: Any) -> str:
    if engine.name == "hotmesh-postgres":
        return str(engine.app_id)
    return "dbos" if engine.name == "dbos" else "absurd"


async def timed_w1(engine: Any, dsn: str, n: int) -> float:
    """Open, warm up with 50 workflows, W1 of n; workflows/s."""
    await engine.open(dsn)
    try:
        await engine.w1_sequential(min(n, 50))
        return n / await engine.w1_sequential(n)
    finally:
        await engine.close()


async def w1_history(
    make: Callable[[bool], Any],
    fresh_dsn: Callable[[], str],
    seeded_dsn: str,
    n: int,
    reps: int,
    target: int,
) -> dict[str, Any]:
    """Median W1 workflows/s on fresh databases and on one holding ``target`` finished.

    ``make(keep)`` builds the engine (``keep``: its data outlives ``close()``),
    ``fresh_dsn()`` makes a new empty database.
    """
    engine = make(True)
    await engine.open(seeded_dsn)
    try:
        await engine.w1_sequential(n)  # the template rows
    finally:
        await engine.close()
    # Not in the loop's default executor: DBOS installs its own there and shuts
    # it down at close. Nothing else runs meanwhile, so blocking is fine.
    jobs, seconds = seed(engine.name, seeded_dsn, schema_of(engine), target)
    before, after = [], []
    for _ in range(reps):
        before.append(await timed_w1(make(False), fresh_dsn(), n))
        after.append(await timed_w1(engine, seeded_dsn, n))
    return {"before": median(before), "after": median(after), "jobs": jobs, "seed_s": seconds}
