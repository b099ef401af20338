"""A job's end is announced to whoever may wait on it, and to nobody else.

A job started eagerly (its first run leased to a worker of the starting
process) that completes in that process reaches the handles there from the
commit itself (hotmesh_core/in_process.py); on PostgreSQL its end is then not
NOTIFYed, since every LISTENing connection of the database would read it in a
transaction of its own. A ``result()`` anywhere else asks for the wake-up
(``Store.get_awaited_job``), and gets it. Observed here as a user of the
database would: a connection LISTENing on the app's job channel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_core.plugins import backend_test_options

pytestmark = pytest.mark.asyncio


async def plus_one(x: int) -> int:
    return x + 1


async def two_steps(x: int) -> int:
    acts = workflow.proxy_activities(activities=[plus_one])
    return await acts.plus_one(await acts.plus_one(x))  # type: ignore[no-any-return]


async def answers(signal_id: str) -> Any:
    return await workflow.wait_for(signal_id)


class Ends:
    """The job ids NOTIFYed on an app's job channel, as a LISTENing client sees them."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.seen: list[str] = []

    async def drain(self) -> list[str]:
        # A NOTIFY sent before a statement's answer is delivered with it.
        await self.conn.execute("SELECT 1")
        async for note in self.conn.notifies(timeout=0.2):
            self.seen.append(note.payload)
        return self.seen


@pytest.fixture
async def app_id() -> str:
    return f"quiet{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def ends(app_id: str) -> AsyncIterator[Ends]:
    dsn = backend_test_options("postgres")["dsn"]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f'LISTEN "hotmesh:{app_id}:j"')
        yield Ends(conn)


async def eager_starts(app_id: str) -> set[str]:
    """The jobs whose first run was leased to a worker of the starting process."""
    dsn = backend_test_options("postgres")["dsn"]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(f'SELECT id FROM "{app_id}".jobs WHERE NOT awaited')
        return {row[0] for row in await cursor.fetchall()}


async def app(app_id: str) -> MemFlow:
    return await MemFlow.init(app_id=app_id, backend="postgres", **backend_test_options("postgres"))


async def test_a_job_started_and_completed_in_one_process_wakes_nobody(
    app_id: str, ends: Ends
) -> None:
    mf = await app(app_id)
    try:
        await mf.worker("q", workflows=[two_steps], activities=[plus_one])
        # A start while the worker's claim is in flight (its first, or one a
        # queued start's NOTIFY set off) is not eager: that job is queued,
        # claimed, and announced. Once it is done the worker waits idle.
        first = await mf.workflow.start("t", "two_steps", "w0", [0], "q")
        assert await first.result(timeout=10) == 2
        handles = [
            await mf.workflow.start("t", "two_steps", f"w{i}", [i], "q") for i in range(1, 8)
        ]
        assert [await h.result(timeout=10) for h in handles] == [i + 2 for i in range(1, 8)]
        eager = await eager_starts(app_id)
        assert eager, "no start was eager"
        assert set(await ends.drain()) == {f"w{i}" for i in range(8)} - eager
    finally:
        await mf.shutdown()


async def test_a_job_started_elsewhere_is_announced(app_id: str, ends: Ends) -> None:
    """No worker where it starts: a worker of another process completes it."""
    client, workers = await app(app_id), await app(app_id)
    try:
        await workers.worker("q", workflows=[two_steps], activities=[plus_one])
        handle = await client.workflow.start("t", "two_steps", "far", [1], "q")
        assert await handle.result(timeout=10) == 3
        assert await ends.drain() == ["far"]
    finally:
        await client.shutdown()
        await workers.shutdown()


async def test_a_result_in_another_process_asks_for_the_end_and_gets_it(
    app_id: str, ends: Ends
) -> None:
    here, elsewhere = await app(app_id), await app(app_id)
    try:
        await here.worker("q", workflows=[answers])
        started = await here.workflow.start("t", "answers", "asked", ["go"], "q")
        while await started.status() != "running":
            await asyncio.sleep(0.01)
        remote = await elsewhere.workflow.get_handle("asked")
        waiting = asyncio.ensure_future(remote.result(timeout=30))
        # Until the remote result() has asked (its job read marks the row).
        dsn = backend_test_options("postgres")["dsn"]
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for _ in range(500):
                row = await (
                    await conn.execute(
                        f'SELECT awaited FROM "{app_id}".jobs WHERE id = %s', ["asked"]
                    )
                ).fetchone()
                if row is not None and row[0]:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the remote result() never asked for the end")
        await here.workflow.signal("go", {"ok": 1})  # handed to the worker here
        assert await started.result(timeout=10) == {"ok": 1}
        assert await waiting == {"ok": 1}
        assert await ends.drain() == ["asked"]
    finally:
        await here.shutdown()
        await elsewhere.shutdown()


async def test_a_failed_end_is_announced_even_from_its_process(app_id: str, ends: Ends) -> None:
    """Only a completed end reaches local handles from the commit; a failed job
    may be resumed, so a handle reads it, woken as always."""
    mf = await app(app_id)
    try:
        await mf.worker("q", workflows=[answers])
        handle = await mf.workflow.start("t", "answers", "fails", [None], "q")
        with pytest.raises(Exception, match="signal"):
            await handle.result(timeout=10)
        assert await ends.drain() == ["fails"]
    finally:
        await mf.shutdown()
