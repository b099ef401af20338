"""Safe code changes: ``workflow.patched`` keeps running workflows replaying."""

from __future__ import annotations

from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import workflow

pytestmark = pytest.mark.asyncio

DEPLOYED: dict[str, int] = {}


async def old_step(tag: str) -> str:
    return f"old-{tag}"


async def new_step(tag: str) -> str:
    return f"new-{tag}"


async def evolving(key: str) -> list[Any]:
    acts = workflow.proxy_activities(activities=[old_step, new_step])
    version = DEPLOYED.get(key, 1)
    if version == 1:
        first = await acts.old_step("1")
    elif version == 2:
        first = await (acts.new_step("1") if workflow.patched("v2") else acts.old_step("1"))
    else:  # version 3: the old path is gone; runs that recorded the marker still replay
        workflow.deprecate_patch("v2")
        first = await acts.new_step("1")
    signal = await workflow.wait_for(f"{workflow.info().workflow_id}-go")
    return [first, signal, await acts.old_step("2")]


async def _start(hm: Harness, mf: Any, workflow_id: str) -> Any:
    return await mf.workflow.start("t", "evolving", workflow_id, [mf.app_id], "q")


async def test_a_patch_keeps_old_runs_on_the_old_path(hm: Harness) -> None:
    mf = await hm.memflow()
    # Without a cache every step replays, as after a deploy (a new process).
    await mf.worker(
        "q", workflows=[evolving], activities=[old_step, new_step], max_cached_workflows=0
    )
    old = await _start(hm, mf, "old")
    await _until_waiting(old)
    DEPLOYED[mf.app_id] = 2  # the deploy
    new = await _start(hm, mf, "new")
    await _until_waiting(new)
    await mf.workflow.signal("old-go", "go")
    await mf.workflow.signal("new-go", "go")
    assert await old.result(timeout=20) == ["old-1", "go", "old-2"]
    assert await new.result(timeout=20) == ["new-1", "go", "old-2"]
    kinds = [(e.kind, e.name) for e in (await new.export()).timeline]
    assert kinds[0] == ("patch", "v2")
    assert ("patch", "v2") not in [(e.kind, e.name) for e in (await old.export()).timeline]


async def test_a_deprecated_patch_still_replays_runs_that_recorded_it(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker(
        "q", workflows=[evolving], activities=[old_step, new_step], max_cached_workflows=0
    )
    DEPLOYED[mf.app_id] = 2
    marked = await _start(hm, mf, "marked")
    await _until_waiting(marked)
    DEPLOYED[mf.app_id] = 3
    fresh = await _start(hm, mf, "fresh")
    await _until_waiting(fresh)
    await mf.workflow.signal("marked-go", 1)
    await mf.workflow.signal("fresh-go", 2)
    assert await marked.result(timeout=20) == ["new-1", 1, "old-2"]
    assert await fresh.result(timeout=20) == ["new-1", 2, "old-2"]
    assert "patch" not in [e.kind for e in (await fresh.export()).timeline]


async def _until_waiting(handle: Any) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(e.kind == "wait" for e in (await handle.export()).timeline):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the workflow never reached its wait")
