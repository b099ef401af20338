"""A finished workflow's run is freed at once, not left to the garbage collector.

A run held its root task, whose context held the run: every finished
workflow left a cycle of its run, its history and its tasks (26 objects under
W1) that only a collection could free, and the memory backend's W1 spent a
fifth of its CPU collecting. The code's context now holds a slot emptied when
the code ends (``replay._RunSlot``).
"""

from __future__ import annotations

import asyncio
import gc
import uuid

import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_core.replay import Run

pytestmark = pytest.mark.asyncio


async def add_one(x: int) -> int:
    return x + 1


async def three_steps(x: int) -> int:
    acts = workflow.proxy_activities(activities=[add_one])
    a = await acts.add_one(x)
    b = await acts.add_one(a)
    return await acts.add_one(b)  # type: ignore[no-any-return]


def live_runs() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, Run))


async def test_finished_runs_are_freed_without_a_collection() -> None:
    mf = await MemFlow.init(app_id=f"life-{uuid.uuid4().hex[:8]}", backend="memory")
    try:
        await mf.worker("q", workflows=[three_steps], activities=[add_one])
        await (await mf.workflow.start("q", "three_steps", args=[0], task_queue="q")).result(10)
        gc.collect()
        before = live_runs()
        gc.disable()
        try:
            handles = [
                await mf.workflow.start("q", "three_steps", args=[i], task_queue="q")
                for i in range(20)
            ]
            assert await asyncio.gather(*(h.result(10) for h in handles)) == [
                i + 3 for i in range(20)
            ]
            await asyncio.sleep(0.05)  # the worker lets go of each run after its commit
            assert live_runs() <= before
        finally:
            gc.enable()
    finally:
        await mf.shutdown()
