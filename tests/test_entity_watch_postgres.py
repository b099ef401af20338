"""PostgreSQL watch: woken by NOTIFY; a change made while the listener was cut
is still delivered once it reconnects, with no gap and no repeat."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator
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
    received: asyncio.Queue[Change] = asyncio.Queue()

    async def consume(stream: AsyncGenerator[Change, None]) -> None:
        async with aclosing(stream) as changes:
            async for change in changes:
                received.put_nowait(change)

    consumer: asyncio.Future[None] | None = None
    try:
        await mf.worker("q", workflows=[two_phases])
        if watching == "entity":
            consumer = asyncio.ensure_future(
                consume(mf.entity.watch("agent", {"phase": {"$gte": 1}}))
            )
            # Changed from outside until the watch reports it: then it is subscribed.
            await mf.workflow.start("agent", "nobody-runs-this", "probe", [], "elsewhere")
            for tick in range(1, 200):
                await mf.entity.update("probe", "merge", value={"phase": tick})
                with contextlib.suppress(asyncio.TimeoutError):
                    assert (await asyncio.wait_for(received.get(), 0.1)).workflow_id == "probe"
                    break
            else:
                raise AssertionError("the watch never reported the probe's changes")
            handle = await mf.workflow.start("agent", "two_phases", "w", [], "q")
        else:
            handle = await mf.workflow.start("agent", "two_phases", "w", [], "q")
            consumer = asyncio.ensure_future(consume(handle.watch(since_version=0)))

        async def take() -> Change:
            while True:
                change = await asyncio.wait_for(received.get(), 20)
                if change.workflow_id != "probe":
                    return change

        seen = [await take()]
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
        seen += [await take(), await take()]
        assert [(c.version, c.operation) for c in seen] == [
            (1, "set"),
            (2, "merge"),
            (3, "increment"),
        ]
        assert await handle.result(timeout=20) == "ok"
    finally:
        if consumer is not None:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        await mf.shutdown()
