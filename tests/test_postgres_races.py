"""Races that only a real database has, made likely by holding transactions open."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conformance.suite.test_entity import contended, counter_hook
from conformance.suite.test_fault_regressions import job_with_answered_steps
from hotmesh_core import MemFlow, WorkflowCancelled, workflow
from hotmesh_core.engine import Engine
from hotmesh_postgres.testing import test_dsn


async def test_an_answer_is_never_lost_to_a_run_claimed_before_it_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer that finds a run of its thread already queued relies on that run.

    If a worker could claim that run and read the history before the answer
    commits, the answer would never be seen and the job would stall. Holding
    each answering transaction open a little makes that window wide.
    """
    wake = Engine._wake

    async def slow_wake(self: Engine, tx: Any, step: Any) -> None:
        await wake(self, tx, step)
        await asyncio.sleep(0.02)  # the transaction stays open: claims race it

    monkeypatch.setattr(Engine, "_wake", slow_wake)
    mf = await MemFlow.init(
        app_id=f"race{uuid.uuid4().hex[:10]}",
        backend="postgres",
        dsn=test_dsn(),
        drop_on_close=True,
    )
    try:
        await mf.worker("q", workflows=[contended, counter_hook], concurrency=20)
        await mf.worker("q", workflows=[contended, counter_hook], concurrency=20)
        for attempt in range(3):
            handle = await mf.workflow.start("counter", "contended", f"c{attempt}", [20, 2], "q")
            assert await handle.result(timeout=30) == 40
    finally:
        await mf.shutdown()


async def test_two_runs_delivering_one_activation_cannot_both_succeed() -> None:
    """Two runs of a thread that saw different answers (disjoint sets: an inline
    continuation does not reload its history) race to deliver activation 1. The
    first holds its transaction open; the second waits on the job row, then
    finds the activation taken, and gives way, though it marks other steps."""
    mf = await MemFlow.init(
        app_id=f"race{uuid.uuid4().hex[:10]}",
        backend="postgres",
        dsn=test_dsn(),
        drop_on_close=True,
    )
    try:
        await job_with_answered_steps(mf.backend, "j", 2)
        first_marked = asyncio.Event()
        release = asyncio.Event()

        async def first() -> bool:
            async with mf.backend.transaction() as tx:
                marked = await tx.store.mark_delivered("j", "", [0], 1)
                first_marked.set()
                await release.wait()
            return marked

        async def second() -> bool:
            await first_marked.wait()
            async with mf.backend.transaction() as tx:
                return await tx.store.mark_delivered("j", "", [1], 1)

        one = asyncio.create_task(first())
        two = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not two.done()  # waiting on the row lock
        release.set()
        assert await one is True
        assert await two is False
        async with mf.backend.transaction() as tx:
            steps = await tx.store.load_steps("j", "")
        assert [s.activation for s in steps] == [1, None]
    finally:
        await mf.shutdown()


async def waits_then_moves_on(round_: int, signal_id: str) -> Any:
    if round_ == 0:
        # A wait left pending in another branch when the generation ends.
        abandoned = asyncio.ensure_future(workflow.wait_for(signal_id))
        await workflow.sleep_for(0.01)
        await workflow.continue_as_new(1, signal_id)
        await abandoned  # never reached
    return await workflow.wait_for(signal_id, timeout=20)


@pytest.fixture
async def ending_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[MemFlow, asyncio.Event]]:
    """An app whose continue_as_new holds its transaction open after it read the
    ending generation's steps (the event is set then), so that whatever the test
    sends meanwhile races it."""
    from hotmesh_postgres.store import PgStore

    inside = asyncio.Event()
    continue_job = PgStore.continue_job

    async def held_continue(self: PgStore, job_id: str, args: list[Any]) -> Any:
        inside.set()
        await asyncio.sleep(0.2)
        return await continue_job(self, job_id, args)

    monkeypatch.setattr(PgStore, "continue_job", held_continue)
    mf = await MemFlow.init(
        app_id=f"race{uuid.uuid4().hex[:10]}",
        backend="postgres",
        dsn=test_dsn(),
        drop_on_close=True,
    )
    try:
        await mf.worker("q", workflows=[waits_then_moves_on])
        yield mf, inside
    finally:
        await mf.shutdown()


async def test_a_signal_sent_while_a_generation_ends_reaches_the_next(
    ending_generation: tuple[MemFlow, asyncio.Event],
) -> None:
    """continue_as_new reads what the ending generation's waits got, then ends it.
    A signal committing in between answered a wait of the ended generation and was
    lost with it; the waits go first now, so it is carried over or buffered."""
    mf, inside = ending_generation
    handle = await mf.workflow.start("t", "waits_then_moves_on", "gen", [0, "gen-sig"], "q")
    await asyncio.wait_for(inside.wait(), 20)
    await mf.workflow.signal("gen-sig", "across")
    assert await handle.result(timeout=30) == "across"


async def test_a_cancel_sent_while_a_generation_ends_reaches_the_next(
    ending_generation: tuple[MemFlow, asyncio.Event],
) -> None:
    """The cancel request's step, inserted after continue_as_new read the ending
    generation's steps, went with them; the request queues behind the
    continuing transaction on the job's row now, and the next generation gets it."""
    mf, inside = ending_generation
    handle = await mf.workflow.start("t", "waits_then_moves_on", "gen-c", [0, "never"], "q")
    await asyncio.wait_for(inside.wait(), 20)
    await handle.cancel("stop")
    with pytest.raises(WorkflowCancelled):
        await handle.result(timeout=30)
