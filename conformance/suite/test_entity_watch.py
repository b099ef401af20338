"""Watching entities: every change once, in version order, as it commits; resumable."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import Change, InvalidQuery, WorkflowHandle, WorkflowNotFound, workflow

pytestmark = pytest.mark.asyncio


async def chatty(n: int, team: str) -> int:
    entity = await workflow.entity()
    await entity.set({"team": team, "count": 0, "log": []})
    for i in range(n):
        await entity.increment("count")
        await entity.append("log", i)
    await workflow.wait_for(f"more-{workflow.info().workflow_id}")
    await entity.merge({"done": True})
    return n


async def take(changes: Any, count: int) -> list[Change]:
    taken: list[Change] = []

    async def collect() -> None:
        async for change in changes:
            taken.append(change)
            if len(taken) == count:
                return

    await asyncio.wait_for(collect(), 30)
    return taken


async def test_watch_streams_every_change_once_in_order_then_live(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[chatty])
    handle = await mf.workflow.start("agent", "chatty", "w1", [3, "red"], "q")
    async with aclosing(handle.watch(since_version=0)) as changes:
        first = await take(changes, 7)  # set, then 3 x (increment, append)
        assert [c.version for c in first] == list(range(1, 8))
        assert [c.operation for c in first] == ["set"] + ["increment", "append"] * 3
        assert [c.path for c in first[1:3]] == ["count", "log"]
        assert first[2].value == 0 and first[0].value["team"] == "red"
        assert all(c.workflow_id == "w1" and c.thread == "" for c in first)
        await mf.workflow.signal("more-w1", None)  # a change made after we caught up
        [last] = await take(changes, 1)
    assert (last.version, last.operation, last.value) == (8, "merge", {"done": True})
    assert await handle.result(timeout=20) == 3


async def test_watch_resumes_after_a_version_without_gaps_or_repeats(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[chatty])
    handle = await mf.workflow.start("agent", "chatty", "w2", [3, "red"], "q")
    async with aclosing(handle.watch(since_version=0)) as changes:
        before = await take(changes, 3)
    # "Reconnect": a new watch from the last version seen.
    async with aclosing(handle.watch(since_version=before[-1].version)) as changes:
        after = await take(changes, 4)
        await mf.workflow.signal("more-w2", None)
        after += await take(changes, 1)
    assert [c.version for c in before + after] == list(range(1, 9))
    await handle.result(timeout=20)


async def test_watch_from_now_sees_only_new_changes(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[chatty])
    handle = await mf.workflow.start("agent", "chatty", "w3", [2, "red"], "q")
    for _ in range(400):
        if (await handle.export()).version == 5:
            break
        await asyncio.sleep(0.025)
    async with aclosing(handle.watch()) as changes:
        waiting = asyncio.ensure_future(take(changes, 1))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # nothing new yet: the history is not replayed
        await mf.workflow.signal("more-w3", None)
        [change] = await waiting
    assert (change.version, change.operation) == (6, "merge")
    await handle.result(timeout=20)


async def test_watch_of_a_missing_job_or_bad_version_is_refused(hm: Harness) -> None:
    mf = await hm.memflow()
    with pytest.raises(WorkflowNotFound):
        async with aclosing(WorkflowHandle(mf.backend, "nobody").watch()) as changes:
            await take(changes, 1)
    with pytest.raises(InvalidQuery):
        async with aclosing(WorkflowHandle(mf.backend, "nobody").watch(-1)) as changes:
            await take(changes, 1)


async def test_entity_watch_follows_matching_entities_only(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[chatty])
    # A job no worker runs, changed from outside until the watch reports it: then
    # the watch is surely subscribed (no sleep to guess how long that takes).
    await mf.workflow.start("agent", "nobody-runs-this", "probe", [], "elsewhere")
    received: asyncio.Queue[Change] = asyncio.Queue()

    async def consume() -> None:
        async with aclosing(mf.entity.watch("agent", where={"team": "red"})) as changes:
            async for change in changes:
                received.put_nowait(change)

    consumer = asyncio.ensure_future(consume())
    try:
        for tick in range(200):
            await mf.entity.update("probe", "merge", value={"team": "red", "tick": tick})
            try:
                probe = await asyncio.wait_for(received.get(), 0.1)
                break
            except asyncio.TimeoutError:
                continue
        else:
            raise AssertionError("the watch never reported the probe's changes")
        assert probe.workflow_id == "probe" and probe.thread is None
        while not received.empty():
            received.get_nowait()  # later probe ticks
        blue = await mf.workflow.start("agent", "chatty", "blue", [2, "blue"], "q")
        other = await mf.workflow.start("other", "chatty", "other", [2, "red"], "q")
        red = await mf.workflow.start("agent", "chatty", "red", [2, "red"], "q")
        seen = [await asyncio.wait_for(received.get(), 30) for _ in range(5)]
        assert [(c.workflow_id, c.version) for c in seen] == [("red", v) for v in range(1, 6)]
        for job in (blue, other, red):
            await mf.workflow.signal(f"more-{job.workflow_id}", None)
        last = await asyncio.wait_for(received.get(), 30)
        assert (last.workflow_id, last.version, last.operation) == ("red", 6, "merge")
        await red.result(timeout=20)
        assert received.empty()  # nothing of blue or of the other entity type
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
