"""``python -m bench.ui_pages [--jobs N]``: what a page of the dashboard's runs costs.

Not one of BENCH.md's workloads: it backs the dashboard's claim that its runs
table stays fast with a million runs (keyset pagination, migration 0010). N
jobs (default 1,000,000; 1% failed, four workflows, two entity types) are
written straight into a fresh app's tables, then pages of 50 are read through
``Store.page_jobs`` as the dashboard reads them: the first page, a page deep
in the listing (after the cursor of the N/2-th run), and filtered pages. Each
figure is the median of 9 reads, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import psycopg

from hotmesh_core import MemFlow
from hotmesh_core.observe import RunCursor

from .__main__ import server_dsn

POPULATE = """
INSERT INTO jobs (id, entity, workflow_name, task_queue, status, context, version,
                  created_at, updated_at, bucket)
SELECT 'run-' || n, CASE WHEN n %% 2 = 0 THEN 'order' ELSE 'user' END, 'wf' || (n %% 4), 'q',
       CASE WHEN n %% 100 = 0 THEN 'failed' ELSE 'completed' END,
       jsonb_build_object('n', n, 'tier', n %% 10), 1,
       timestamptz '2026-01-01' + n * interval '1 second',
       timestamptz '2026-01-01' + n * interval '1 second', 'keep'
  FROM generate_series(1, %(n)s) n
"""


async def median_ms(mf: MemFlow, reads: int = 9, **filters: Any) -> float:
    times = []
    for _ in range(reads):
        started = time.perf_counter()
        async with mf.backend.transaction(readonly=True) as tx:
            page = await tx.store.page_jobs(limit=51, **filters)
        times.append((time.perf_counter() - started) * 1000)
        assert page, filters
    return statistics.median(times)


async def measure(jobs: int) -> list[tuple[str, float]]:
    app_id, dsn = f"benchui{uuid.uuid4().hex[:8]}", server_dsn()
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn, drop_on_close=True)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{app_id}"')
            conn.execute(POPULATE, {"n": jobs})
            conn.execute("VACUUM ANALYZE jobs")
        middle = RunCursor.after(1767225600.0 + jobs // 2, f"run-{jobs // 2}")
        return [
            ("first page", await median_ms(mf)),
            (f"page after run {jobs // 2:,}", await median_ms(mf, before=middle)),
            ("status=failed (1%)", await median_ms(mf, status="failed")),
            ("status=failed, deep", await median_ms(mf, status="failed", before=middle)),
            ("entity=order", await median_ms(mf, entity="order")),
            ("workflow=wf1", await median_ms(mf, workflow_name="wf1")),
            ("entity=user, where tier=3", await median_ms(mf, entity="user", where={"tier": 3})),
            ("id starts with run-4242", await median_ms(mf, id_prefix="run-4242")),
        ]
    finally:
        await mf.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    jobs = parser.parse_args().jobs
    figures = asyncio.run(measure(jobs))
    print(f"a page of 50 runs among {jobs:,} (median of 9 reads)")
    print("| page | ms |")
    print("|---|---:|")
    for name, ms in figures:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
