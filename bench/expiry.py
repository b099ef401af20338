"""``python -m bench.expiry [--jobs N]``: what removing expired work costs.

Not one of BENCH.md's workloads: it backs the README's retention claim. The
same N finished jobs (each with 3 steps and 2 entity changes, expire = 1 hour)
are removed two ways on one server, in one run:

- partitions (ours, migration 0002): the jobs were written into their expiry
  day's partition when they started; a pass after that day drops it;
- row DELETE (the peer: how version 1 expired jobs, and what the maintenance
  pass still does for jobs that started before their day's partition existed).

It prints the time of each, the dead rows each leaves for autovacuum, and the
ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone

import psycopg

from hotmesh_core import MemFlow

from .__main__ import server_dsn

POPULATE = """
INSERT INTO jobs (id, entity, workflow_name, task_queue, status, context, version, result,
                  expire, finished_at, bucket)
SELECT 'j' || n, 'bench', 'wf', 'q', 'completed', '{"n": 1, "tags": ["a"]}', 2, '"done"',
       3600, clock_timestamp() - interval '5 minutes', %(bucket)s
  FROM generate_series(1, %(n)s) n;
INSERT INTO steps (job_id, dimension, idx, kind, name, status, result, wake_queue, wake_name,
                   finished_at, bucket)
SELECT 'j' || n, '', i, 'activity', 'step', 'done', '"ok"', 'q', 'wf', clock_timestamp(),
       %(bucket)s
  FROM generate_series(1, %(n)s) n, generate_series(0, 2) i;
INSERT INTO entity_changes (job_id, version, op, path, value, bucket)
SELECT 'j' || n, v, 'set', NULL, '{"n": 1}', %(bucket)s
  FROM generate_series(1, %(n)s) n, generate_series(1, 2) v;
"""

DEAD_ROWS = """
SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables
 WHERE schemaname = %s AND relname IN ('jobs_keep', 'steps_keep', 'entity_changes_keep')
"""


def populate(conn: psycopg.Connection[tuple[object, ...]], jobs: int, bucket: str) -> None:
    for statement in POPULATE.split(";")[:-1]:
        conn.execute(statement, {"n": jobs, "bucket": bucket})
    conn.execute("VACUUM ANALYZE jobs, steps, entity_changes")


async def timed_pass(mf: MemFlow) -> float:
    """One maintenance pass as of two days from now, timed."""
    later = datetime.now(timezone.utc) + timedelta(days=2)
    started = time.perf_counter()
    await mf.backend.maintain(now=later)  # type: ignore[call-arg]
    return time.perf_counter() - started


def dead_rows(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(0.7)  # the statistics collector reports asynchronously
    row = conn.execute(DEAD_ROWS, [schema]).fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


async def measure(jobs: int) -> dict[str, float]:
    app_id, dsn = f"benchexp{uuid.uuid4().hex[:8]}", server_dsn()
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn, drop_on_close=True)
    figures: dict[str, float] = {}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{app_id}"')
            day = conn.execute(
                "SELECT hm_day_bucket(clock_timestamp() + interval '1 hour')"
            ).fetchone()[0]  # type: ignore[index]
            for table in ("jobs", "threads", "steps", "entity_changes"):
                conn.execute("SELECT hm_ensure_partition(%s, %s)", [table, day])
            populate(conn, jobs, str(day))
            figures["drop"] = await timed_pass(mf)
            figures["drop_dead"] = dead_rows(conn, app_id)
            populate(conn, jobs, "keep")
            figures["delete"] = await timed_pass(mf)
            figures["delete_dead"] = dead_rows(conn, app_id)
    finally:
        await mf.shutdown()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20000)
    jobs = parser.parse_args().jobs
    f = asyncio.run(measure(jobs))
    rows = jobs * 6
    print(f"expiring {jobs:,} finished jobs ({rows:,} rows with their history)")
    print("| way | seconds | dead rows left in 'keep' |")
    print("|---|---:|---:|")
    print(f"| partitions: drop the expiry day | {f['drop']:.3f} | {f['drop_dead']:,.0f} |")
    print(f"| peer, row DELETE | {f['delete']:.3f} | {f['delete_dead']:,.0f} |")
    print(f"drop ÷ DELETE: {f['drop'] / f['delete']:.3f}")


if __name__ == "__main__":
    main()
