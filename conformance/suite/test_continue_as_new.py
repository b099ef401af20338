"""``workflow.continue_as_new``: the memory outlives the history."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import workflow

pytestmark = pytest.mark.asyncio


async def bump(value: int) -> int:
    return value + 1


async def recurring(iteration: int, last: int) -> Any:
    acts = workflow.proxy_activities(activities=[bump])
    entity = await workflow.entity()
    await entity.increment("iterations", 1)
    value = await acts.bump(iteration)
    await workflow.sleep_for(0.01)
    if iteration + 1 < last:
        try:
            await workflow.continue_as_new(iteration + 1, last)
        except Exception:  # a broad except must not swallow the end of a generation
            return "swallowed"
    return {"value": value, "entity": await entity.get()}


async def test_generations_keep_the_entity_and_bound_the_history(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[recurring], activities=[bump])
    handle = await mf.workflow.start("t", "recurring", "cn", [0, 12], "q")
    result = await handle.result(timeout=30)
    assert result == {"value": 12, "entity": {"iterations": 12}}
    export = await handle.export()
    assert export.generation == 11  # eleven came before the one shown
    assert export.args == [11, 12]
    # Only the last generation's steps are kept: entity op, activity, sleep, get.
    assert [(e.kind, e.name) for e in export.timeline] == [
        ("entity", "increment"),
        ("activity", "bump"),
        ("sleep", "sleep"),
        ("entity", "get"),
    ]
    assert len(export.entity_changes) == 12  # the memory's audit trail stays


async def waits_then_continues(round_: int) -> Any:
    if round_ == 0:
        # A pending wait in another branch goes with its generation; a signal for
        # it is kept for the next one.
        abandoned = asyncio.ensure_future(workflow.wait_for("cn-signal"))
        await workflow.sleep_for(0.01)
        await workflow.continue_as_new(1)
        await abandoned  # never reached
    return await workflow.wait_for("cn-signal")


async def test_a_signal_sent_between_generations_reaches_the_next(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[waits_then_continues])
    handle = await mf.workflow.start("t", "waits_then_continues", "cn2", [0], "q")
    deadline = asyncio.get_running_loop().time() + 20
    while (await handle.export()).generation == 0:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    await mf.workflow.signal("cn-signal", "hello")
    assert await handle.result(timeout=20) == "hello"
