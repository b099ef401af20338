"""A worker's cache of suspended runs: resumed runs behave exactly as replayed ones."""

from __future__ import annotations

from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import workflow
from hotmesh_core.worker import Worker

pytestmark = pytest.mark.asyncio


async def add_one(value: int) -> int:
    return value + 1


async def loops_with_waits(rounds: int) -> list[Any]:
    acts = workflow.proxy_activities(activities=[add_one])
    entity = await workflow.entity()
    seen: list[Any] = []
    total = 0
    for i in range(rounds):
        total = await acts.add_one(total)
        await entity.increment("count", 1)
        seen.append(await workflow.wait_for(f"{workflow.info().workflow_id}-{i}"))
        await workflow.sleep_for(0.01)
        seen.append(workflow.random() < 2)
    return [total, seen]


def _timeline(export: Any) -> list[tuple[Any, ...]]:
    return [
        (e.dimension, e.index, e.kind, e.name, e.args, e.status, e.result)
        for e in export.timeline
        if e.kind != "random"
    ]


async def _drive(mf: Any, workflow_id: str, rounds: int) -> Any:
    handle = await mf.workflow.start("t", "loops_with_waits", workflow_id, [rounds], "q")
    for i in range(rounds):
        await mf.workflow.signal(f"{workflow_id}-{i}", i)
    return handle


async def test_a_cached_run_records_what_a_replayed_one_does(hm: Harness) -> None:
    cached_app = await hm.memflow()
    replayed_app = await hm.memflow()
    cached = await cached_app.worker("q", workflows=[loops_with_waits], activities=[add_one])
    await replayed_app.worker(
        "q", workflows=[loops_with_waits], activities=[add_one], max_cached_workflows=0
    )
    one = await _drive(cached_app, "w", 8)
    two = await _drive(replayed_app, "w", 8)
    expected = [8, [x for i in range(8) for x in (i, True)]]
    assert await one.result(timeout=30) == expected
    assert await two.result(timeout=30) == expected
    assert _timeline(await one.export()) == _timeline(await two.export())
    assert (await one.entity())["count"] == 8
    assert cached._cache.hits > 0  # the cached path was taken


async def test_a_run_advanced_elsewhere_is_replayed_not_resumed(hm: Harness) -> None:
    mf = await hm.memflow()
    first = Worker(mf.backend, "q", workflows=[loops_with_waits], activities=[add_one])
    other = Worker(mf.backend, "q", workflows=[loops_with_waits], activities=[add_one])
    await first.start()
    handle = await mf.workflow.start("t", "loops_with_waits", "stale", [3], "q")
    await _wait_for_waiter(mf, handle, 1)
    assert len(first._cache) == 1  # suspended at its first wait, kept by `first`
    await first.stop()
    await other.start()
    await mf.workflow.signal("stale-0", "zero")  # `other` advances the run
    await _wait_for_waiter(mf, handle, 2)
    await other.stop()
    await first.start()  # `first` still holds the run as it was two waits ago
    await mf.workflow.signal("stale-1", "one")
    await mf.workflow.signal("stale-2", "two")
    assert await handle.result(timeout=30) == [3, ["zero", True, "one", True, "two", True]]
    assert first._cache.stale == 1
    await first.stop()


async def _wait_for_waiter(mf: Any, handle: Any, waits: int) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        timeline = (await handle.export()).timeline
        if sum(1 for e in timeline if e.kind == "wait") >= waits:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the workflow did not reach wait {waits}")
