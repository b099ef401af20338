"""Sleeps fire from an in-process timer of the worker that dispatched them; the
stored timer row stays the fallback, and whoever gets there first fires it."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_core.plugins import backend_test_options


async def naps(count: int) -> int:
    for _ in range(count):
        await workflow.sleep_for(0.2)
    return count


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_two_workers_each_sleep_resumes_once(backend: str) -> None:
    mf = await MemFlow.init(
        app_id=f"armed{uuid.uuid4().hex[:8]}", backend=backend, **backend_test_options(backend)
    )
    try:
        workers = [await mf.worker("q", workflows=[naps], poll_interval=0.05) for _ in range(2)]
        fired: list[bool] = []
        for worker in workers:
            engine, original = worker.engine, worker.engine.fire_armed_timer

            async def counted(task, original=original):  # type: ignore[no-untyped-def]
                fired.append(await original(task))
                return fired[-1]

            engine.fire_armed_timer = counted  # type: ignore[method-assign]
            resume = worker._wake_in_process

            async def resumed(suspended, timer, resume=resume):  # type: ignore[no-untyped-def]
                fired.append(True)  # the cached run resumed here, its answer committed with it
                await resume(suspended, timer)

            worker._wake_in_process = resumed  # type: ignore[method-assign]
        handles = [await mf.workflow.start("t", "naps", f"nap-{i}", [3], "q") for i in range(6)]
        assert [await h.result(timeout=30) for h in handles] == [3] * 6
        for handle in handles:
            sleeps = [e for e in (await handle.export()).timeline if e.kind == "sleep"]
            assert [e.status for e in sleeps] == ["done"] * 3
        assert any(fired)  # the in-process path ran (its row lost the race, or not)
        assert all(w._armed == {} for w in workers)
    finally:
        await mf.shutdown()


async def test_a_stopped_worker_leaves_its_sleeps_to_their_rows() -> None:
    mf = await MemFlow.init(app_id=f"armed{uuid.uuid4().hex[:8]}", backend="memory")
    try:
        first = await mf.worker("q", workflows=[naps], poll_interval=0.05)
        handle = await mf.workflow.start("t", "naps", "nap-stop", [1], "q")
        while not first._armed:
            await asyncio.sleep(0.01)
        await first.stop()
        assert first._armed == {}
        await mf.worker("q", workflows=[naps], poll_interval=0.05)
        assert await handle.result(timeout=10) == 1
    finally:
        await mf.shutdown()


async def nap_once(seconds: float) -> float:
    await workflow.sleep_for(seconds)
    return seconds


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_sleeps_due_together_beyond_concurrency_all_resume_in_process(backend: str) -> None:
    """More sleeps come due at once than the worker has slots: each waits a
    moment for one and resumes its cached run here, and no claim races the
    armed timers for their rows (those come due ARMED_TIMER_GRACE later)."""
    mf = await MemFlow.init(
        app_id=f"armed{uuid.uuid4().hex[:8]}", backend=backend, **backend_test_options(backend)
    )
    try:
        worker = await mf.worker("q", workflows=[nap_once], concurrency=2, poll_interval=0.05)
        paths: list[str] = []
        resume, fire_row = worker._wake_in_process, worker.engine.fire_timer

        async def resumed(suspended, timer):  # type: ignore[no-untyped-def]
            paths.append("in process")
            await resume(suspended, timer)

        async def row_fired(task):  # type: ignore[no-untyped-def]
            paths.append("row")
            await fire_row(task)

        worker._wake_in_process = resumed  # type: ignore[method-assign]
        worker.engine.fire_timer = row_fired  # type: ignore[method-assign]
        handles = [await mf.workflow.start("t", "nap_once", f"n-{i}", [0.3], "q") for i in range(8)]
        assert [await h.result(timeout=30) for h in handles] == [0.3] * 8
        assert paths == ["in process"] * 8
    finally:
        await mf.shutdown()
