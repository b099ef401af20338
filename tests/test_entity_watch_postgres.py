"""PostgreSQL watch: woken by NOTIFY; a change made while the listener was cut
is still delivered once it reconnects, with no gap and no repeat."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import aclosing

import psycopg
import pytest

from hotmesh_core import Change, MemFlow, workflow
from hotmesh_postgres.testing import test_dsn

pytestmark = pytest.mark.asyncio


async def two_phases() -> str:
    entity = await workflow.entity()
    await entity.set({"phase": 1})
    await workflow.wait_for(f"go-{workflow.info().workflow_id}")
    await entity.merge({"phase": 2})
    await entity.increment("n")
    return "ok"


@pytest.mark.parametrize("watching", ["handle", "entity"])
async def test_a_change_made_while_the_listener_is_cut_is_delivered(watching: str) -> None:
    app_id = f"t{uuid.uuid4().hex[:20]}"
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn(), drop_on_close=True)
    try:
        await mf.worker("q", workflows=[two_phases])
        seen: list[Change] = []
        if watching == "entity":
            stream = mf.entity.watch("agent", {"phase": {"$gte": 1}})
        else:
            handle = await mf.workflow.start("agent", "two_phases", "w", [], "q")
            stream = handle.watch(since_version=0)
        async with aclosing(stream) as changes:

            async def collect(count: int) -> None:
                async for change in changes:
                    seen.append(change)
                    if len(seen) == count:
                        return

            first = asyncio.ensure_future(asyncio.wait_for(collect(1), 20))
            if watching == "entity":
                await asyncio.sleep(0.2)  # the watch subscribes before the job starts
                handle = await mf.workflow.start("agent", "two_phases", "w", [], "q")
            await first
            with psycopg.connect(test_dsn(), autocommit=True) as conn:
                cut = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s AND query LIKE 'LISTEN %%'",
                    [f"hotmesh:{app_id}"],
                ).fetchall()
                assert cut, "the LISTEN connection was found and cut"
                for _ in range(200):  # gone: the listener sleeps a second, then reconnects
                    left = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                        " AND query LIKE 'LISTEN %%'",
                        [f"hotmesh:{app_id}"],
                    ).fetchone()
                    if left is not None and left[0] == 0:
                        break
                    await asyncio.sleep(0.005)
            await mf.workflow.signal("go-w", None)  # its changes commit while nobody listens
            await asyncio.wait_for(collect(3), 20)
        assert [(c.version, c.operation) for c in seen] == [
            (1, "set"),
            (2, "merge"),
            (3, "increment"),
        ]
        assert await handle.result(timeout=20) == "ok"
    finally:
        await mf.shutdown()
