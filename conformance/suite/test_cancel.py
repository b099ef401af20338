"""Cooperative cancellation: ``handle.cancel()`` raises ``asyncio.CancelledError``
at the workflow's current await, so it can clean up; ``non_cancellable`` holds it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import WorkflowCancelled, WorkflowHandle, WorkflowNotFound, workflow

pytestmark = pytest.mark.asyncio


async def note(text: str) -> str:
    return f"noted {text}"


async def cleans_up() -> Any:
    acts = workflow.proxy_activities(activities=[note])
    entity = await workflow.entity()
    await entity.set({"state": "started"})
    try:
        await workflow.wait_for("never-comes")
    except asyncio.CancelledError:
        # Cleanup runs durable calls as usual, then the job ends cancelled.
        await entity.merge({"state": "cleaned", "note": await acts.note("bye")})
        raise
    return "not cancelled"


async def wait_status(handle: Any, *statuses: str) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    while (await _status(handle)) not in statuses:
        assert asyncio.get_running_loop().time() < deadline, await handle.status()
        await asyncio.sleep(0.02)


async def _status(handle: Any) -> str | None:
    try:
        status: str = await handle.status()
    except WorkflowNotFound:
        return None  # not started yet
    return status


async def wait_entity(handle: Any, key: str, value: Any) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    while (await handle.state()).get(key) != value:
        assert asyncio.get_running_loop().time() < deadline, await handle.state()
        await asyncio.sleep(0.02)


async def test_cancel_raises_at_the_await_and_cleanup_runs(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[cleans_up], activities=[note])
    handle = await mf.workflow.start("t", "cleans_up", "c1", [], "q")
    await wait_entity(handle, "state", "started")
    assert await handle.cancel("enough") is True
    with pytest.raises(WorkflowCancelled, match="enough"):
        await handle.result(timeout=20)
    assert await handle.status() == "cancelled"
    assert await handle.state() == {"state": "cleaned", "note": "noted bye"}
    kinds = [(e.kind, e.status) for e in (await handle.export()).timeline]
    assert ("cancel", "done") in kinds  # the request is in the audit trail
    assert await handle.cancel() is False  # finished: nothing to cancel


async def catches_and_completes() -> Any:
    try:
        await workflow.sleep_for("1 hour")
    except asyncio.CancelledError:
        return "stopped early"
    return "slept"


async def test_a_workflow_that_catches_the_cancel_completes(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[catches_and_completes])
    handle = await mf.workflow.start("t", "catches_and_completes", "c2", [], "q")
    await wait_status(handle, "running")
    await handle.cancel()
    assert await handle.result(timeout=20) == "stopped early"
    assert await handle.status() == "completed"


async def shielded() -> Any:
    acts = workflow.proxy_activities(activities=[note])
    entity = await workflow.entity()
    try:
        async with workflow.non_cancellable():
            await entity.set({"phase": "inside"})
            await workflow.wait_for("go-on")  # the cancel arrives here and is held
            await entity.merge({"charged": await acts.note("charge")})
        await workflow.sleep_for("1 hour")
    except asyncio.CancelledError:
        await entity.merge({"phase": "raised after the scope"})
        raise
    return "not reached"


async def test_non_cancellable_holds_the_cancel_until_the_scope_ends(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[shielded], activities=[note])
    handle = await mf.workflow.start("t", "shielded", "c3", [], "q")
    await wait_entity(handle, "phase", "inside")
    await handle.cancel()
    await asyncio.sleep(0.3)
    assert await handle.status() == "running"  # held: the scope is not over
    await mf.workflow.signal("go-on", None)
    with pytest.raises(WorkflowCancelled):
        await handle.result(timeout=20)
    # The scope ran to its end, and the cancel was raised as it closed (the
    # hour-long sleep after it was never awaited).
    assert await handle.state() == {
        "phase": "raised after the scope",
        "charged": "noted charge",
    }
    sleeps = [e for e in (await handle.export()).timeline if e.kind == "sleep"]
    assert sleeps == []


async def child_waits() -> Any:
    entity = await workflow.entity()
    try:
        await workflow.wait_for("child-never")
    except asyncio.CancelledError:
        await entity.set({"child": "cleaned"})
        raise


async def parent_of_two() -> Any:
    detached = await workflow.start_child("t", "child_waits", workflow_id="c4-detached")
    try:
        await workflow.exec_child("t", "child_waits", workflow_id="c4-awaited")
    except asyncio.CancelledError:
        return f"parent stopped; started {detached}"
    return "not cancelled"


async def test_cancel_reaches_the_running_children(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[parent_of_two, child_waits])
    handle = await mf.workflow.start("t", "parent_of_two", "c4", [], "q")
    awaited = WorkflowHandle(mf.backend, "c4-awaited")
    detached = WorkflowHandle(mf.backend, "c4-detached")
    for child in (awaited, detached):
        await wait_status(child, "running")
    await handle.cancel()
    assert await handle.result(timeout=20) == "parent stopped; started c4-detached"
    for child in (awaited, detached):
        with pytest.raises(WorkflowCancelled, match="parent workflow 'c4' was cancelled"):
            await child.result(timeout=20)
        assert await child.state() == {"child": "cleaned"}


async def gathered(name: str) -> Any:
    acts = workflow.proxy_activities(activities=[note])
    await acts.note(name)
    return await workflow.wait_for(f"{name}-go")


async def cancels_branches() -> Any:
    entity = await workflow.entity()
    try:
        await asyncio.gather(gathered("a"), gathered("b"))
    except asyncio.CancelledError:
        await entity.set({"gather": "cancelled"})
        return "both branches stopped"
    return "not cancelled"


async def test_cancel_stops_every_branch_and_replays_the_same(hm: Harness) -> None:
    mf = await hm.memflow()
    # No cache: each activation replays the history, the cancel included.
    await mf.worker("q", workflows=[cancels_branches], activities=[note], max_cached_workflows=0)
    handle = await mf.workflow.start("t", "cancels_branches", "c5", [], "q")
    deadline = asyncio.get_running_loop().time() + 20
    while len([e for e in (await handle.export()).timeline if e.kind == "wait"]) < 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    await handle.cancel()
    assert await handle.result(timeout=20) == "both branches stopped"
    # The branches' waits were given up: a signal for them is kept, not lost.
    await mf.workflow.signal("a-go", "later")
    assert await handle.state() == {"gather": "cancelled"}


async def test_cancel_before_the_first_run_and_of_an_unknown_job(hm: Harness) -> None:
    mf = await hm.memflow()
    handle = await mf.workflow.start("t", "cleans_up", "c6", [], "q")
    await handle.cancel()  # no worker yet: the first run meets it at its first await
    await mf.worker("q", workflows=[cleans_up], activities=[note])
    with pytest.raises(WorkflowCancelled):
        await handle.result(timeout=20)
    assert (await handle.state())["state"] == "cleaned"
    with pytest.raises(WorkflowNotFound):
        await WorkflowHandle(mf.backend, "nobody").cancel()
