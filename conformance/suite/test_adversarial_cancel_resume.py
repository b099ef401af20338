"""Adversarial regressions for cancel, resume and continue_as_new (issue #10):
races and edge cases a demanding user meets, each one a defect found and fixed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.plugin import Harness
from conformance.suite.test_cancel import wait_entity
from hotmesh_core import SerializationError, WorkflowCancelled, workflow

pytestmark = pytest.mark.asyncio


async def slow(n: int) -> int:
    await asyncio.sleep(0.5)
    return n


async def recurring(n: int) -> Any:
    acts = workflow.proxy_activities(activities=[slow])
    entity = await workflow.entity()
    await entity.set({"gen": n})
    await acts.slow(n)
    if n < 3:
        await workflow.continue_as_new(n + 1)
    await workflow.wait_for("recurring-never")
    return "finished"


@pytest.mark.parametrize("cache", [0, 100])
async def test_a_cancel_racing_continue_as_new_is_not_lost(hm: Harness, cache: int) -> None:
    # One slot: the worker runs the activity itself and resumes the run with its
    # answer, never seeing the cancel that came meanwhile; the generation it
    # ends must not take the request with it (the job would recur for ever).
    mf = await hm.memflow()
    await mf.worker(
        "q", workflows=[recurring], activities=[slow], max_cached_workflows=cache, concurrency=1
    )
    handle = await mf.workflow.start("t", "recurring", "rc", [0], "q")
    await wait_entity(handle, "gen", 0)
    await asyncio.sleep(0.1)
    assert await handle.cancel("stop") is True
    with pytest.raises(WorkflowCancelled, match="stop"):
        await handle.result(timeout=20)
    assert (await handle.state())["gen"] < 3


async def shielded_recurring(n: int) -> Any:
    entity = await workflow.entity()
    if n == 0:
        async with workflow.non_cancellable():
            await entity.set({"gen": n})
            await workflow.wait_for("shr-go")
            await workflow.continue_as_new(n + 1)
    await entity.set({"gen": n})
    await workflow.wait_for("shr-never")
    return "finished"


@pytest.mark.parametrize("cache", [0, 100])
async def test_a_held_cancel_carries_over_continue_as_new(hm: Harness, cache: int) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[shielded_recurring], max_cached_workflows=cache)
    handle = await mf.workflow.start("t", "shielded_recurring", "shr", [0], "q")
    await wait_entity(handle, "gen", 0)
    await asyncio.sleep(0.2)
    assert await handle.cancel("stop") is True
    await asyncio.sleep(0.3)
    await mf.workflow.signal("shr-go", 1)
    # The scope held it; the generation ended inside it: the next one gets it
    # at its first await.
    with pytest.raises(WorkflowCancelled, match="stop"):
        await handle.result(timeout=20)
    assert await handle.state() == {"gen": 1}


async def restarts_on_cancel(n: int) -> Any:
    try:
        got = await workflow.wait_for(f"gen-{n}")
    except asyncio.CancelledError:
        if n == 0:
            await workflow.continue_as_new(1)  # the user's choice: start afresh
        raise
    return [n, got]


@pytest.mark.parametrize("cache", [0, 100])
async def test_a_cancelled_wait_does_not_outlive_its_generation(hm: Harness, cache: int) -> None:
    # The cancel cancels the wait at index 0; the workflow continues as new and
    # waits again at index 0, for another signal. The old wait's waiter must go
    # with its generation: it took the old signal into the new wait (and on
    # PostgreSQL kept the new wait from ever getting its own).
    mf = await hm.memflow()
    await mf.worker("q", workflows=[restarts_on_cancel], max_cached_workflows=cache)
    handle = await mf.workflow.start("t", "restarts_on_cancel", "roc", [0], "q")
    deadline = asyncio.get_running_loop().time() + 20
    while [e.name for e in (await handle.export()).timeline if e.kind == "wait"] != ["gen-0"]:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    await handle.cancel()
    while (await handle.export()).generation != 1 or not (await handle.export()).timeline:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    await mf.workflow.signal("gen-0", "meant for the old wait")
    await asyncio.sleep(0.3)
    assert await handle.status() == "running"
    await mf.workflow.signal("gen-1", "meant for the new wait")
    assert await handle.result(timeout=20) == [1, "meant for the new wait"]


async def tidy(x: str) -> str:
    return f"tidied {x}"


async def cleans_after_cancel() -> Any:
    acts = workflow.proxy_activities(activities=[tidy])
    first = await acts.tidy("a")
    try:
        await workflow.wait_for("cleans-never")
    except asyncio.CancelledError:
        return [first, await acts.tidy("b"), await acts.tidy("c")]
    return "not cancelled"


@pytest.mark.parametrize("from_step", [2, 3, 4])
async def test_a_fork_past_a_cancel_keeps_it(hm: Harness, from_step: int) -> None:
    # The cleanup after a cancel is history only the cancel leads to: a fork
    # that kept it without the request failed with NonDeterminismError.
    from hotmesh_core.fork import fork_run

    mf = await hm.memflow()
    await mf.worker("q", workflows=[cleans_after_cancel], activities=[tidy])
    handle = await mf.workflow.start("t", "cleans_after_cancel", "cac", [], "q")
    deadline = asyncio.get_running_loop().time() + 20
    while not [e for e in (await handle.export()).timeline if e.kind == "wait"]:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    await handle.cancel()
    expected = ["tidied a", "tidied b", "tidied c"]
    assert await handle.result(timeout=20) == expected
    fork = await fork_run(mf.backend, "cac", from_step)
    assert await fork.result(timeout=20) == expected


async def waits_for_ever() -> Any:
    await workflow.wait_for("reason-never")


async def test_a_cancel_reason_is_checked_and_stored_as_text(hm: Harness) -> None:
    # On PostgreSQL a NUL or lone surrogate in the reason, or a reason that is
    # not JSON, was the driver's error; the memory backend stored any object.
    mf = await hm.memflow()
    await mf.worker("q", workflows=[waits_for_ever])
    handle = await mf.workflow.start("t", "waits_for_ever", "why", [], "q")
    for bad in (123, {"a": object()}, ["x"]):
        with pytest.raises(SerializationError, match="a cancel reason is text"):
            await handle.cancel(bad)  # type: ignore[arg-type]
    assert await handle.cancel("nul\x00 and \ud800") is True
    with pytest.raises(WorkflowCancelled, match=r"nul\\x00 and \\ud800"):
        await handle.result(timeout=20)


async def hook_that_continues() -> Any:
    entity = await workflow.entity()
    left = asyncio.ensure_future(workflow.wait_for("hook-left-it"))  # a branch left waiting
    await entity.set({"hook": "waiting"})
    await workflow.sleep_for(0.1)  # the wait is recorded, its waiter set
    await workflow.continue_as_new()  # refused in a hook: the hook fails
    await left


async def main_waits_after_the_hook() -> Any:
    await workflow.hook(None, "hook_that_continues")
    await workflow.wait_for("main-go")
    return await workflow.wait_for("hook-left-it")


@pytest.mark.parametrize("cache", [0, 100])
async def test_a_hook_failed_by_continue_as_new_leaves_no_waiter(hm: Harness, cache: int) -> None:
    # The hook's waiter outlived it and took, for ever, the signal meant for
    # the next waiter of that name.
    mf = await hm.memflow()
    await mf.worker(
        "q", workflows=[main_waits_after_the_hook, hook_that_continues], max_cached_workflows=cache
    )
    handle = await mf.workflow.start("t", "main_waits_after_the_hook", "mwh", [], "q")
    await wait_entity(handle, "hook", "waiting")
    deadline = asyncio.get_running_loop().time() + 20
    while [h["status"] for h in (await handle.export()).hooks] != ["failed"]:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    await mf.workflow.signal("main-go", 1)
    while len([e for e in (await handle.export()).timeline if e.kind == "wait"]) < 3:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    await mf.workflow.signal("hook-left-it", "for main")
    assert await handle.result(timeout=20) == "for main"
