"""Connections dropped by the server (a restart, a failover, an idle-kill) do not
stop work: workers and clients carry on with new connections, at once, without
waiting out any lease."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg

from hotmesh_core import MemFlow, workflow
from hotmesh_postgres.testing import test_dsn


async def add(a: int, b: int) -> int:
    return a + b


async def counting(n: int) -> int:
    acts = workflow.proxy_activities(activities=[add])
    total = 0
    for i in range(n):
        total = await acts.add(total, i)
        await workflow.sleep_for(0.1)
    return total


def drop_connections(app_id: str) -> int:
    """What a server restart does to one app: every connection of it is cut."""
    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [f"hotmesh:{app_id}"],
        ).fetchall()
    return len(rows)


async def test_work_goes_on_when_the_server_drops_every_connection() -> None:
    app_id = f"cut{uuid.uuid4().hex[:10]}"
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn(), drop_on_close=True)
    try:
        await mf.worker("q", workflows=[counting], activities=[add], lease=60)
        handles = [await mf.workflow.start("t", "counting", f"c{i}", [15], "q") for i in range(6)]
        began = time.monotonic()
        cut = []
        for _ in range(3):
            await asyncio.sleep(0.4)
            cut.append(drop_connections(app_id))
        assert cut[0] > 0
        results = [await handle.result(timeout=30) for handle in handles]
        assert results == [sum(range(15))] * 6
        assert time.monotonic() - began < 20  # no 60 s lease was waited out
        # The client's own pooled connections were cut too: reads still work.
        drop_connections(app_id)
        assert await handles[0].status() == "completed"
    finally:
        await mf.shutdown()
