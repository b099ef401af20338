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
