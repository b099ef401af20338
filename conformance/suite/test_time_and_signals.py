"""Durable sleep, signals (early, late, exactly once), recorded time and randomness."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import WaitTimeout, WorkflowFailed, workflow

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio


async def napper(duration: Any) -> str:
    await workflow.sleep_for(duration)
    return "rested"


async def test_short_sleep(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[napper])
    began = time.monotonic()
    handle = await mf.workflow.start("t", "napper", "nap", ["0.3s"], "q")
    assert await handle.result(timeout=10) == "rested"
    elapsed = time.monotonic() - began
    assert 0.3 <= elapsed < 5


@pytest.mark.requires("virtual_clock")
async def test_long_sleep_on_the_virtual_clock(hm: Harness) -> None:
    mf = await hm.memflow(virtual_clock=True)
    await mf.worker("q", workflows=[napper])
    began = mf.backend.now()
    handle = await mf.workflow.start("t", "napper", "day", ["24 hours"], "q")
    assert await handle.result(timeout=10) == "rested"
    assert mf.backend.now() - began >= 86400


async def waiter(signal_id: str, timeout: Any = None) -> Any:
    return await workflow.wait_for(signal_id, timeout=timeout)


async def test_signal_wakes_a_waiter(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[waiter])
    handle = await mf.workflow.start("t", "waiter", "w", ["go"], "q")
    for _ in range(100):  # wait until the workflow is waiting (status running)
        if await handle.status() == "running":
            break
        await asyncio.sleep(0.02)
    assert await mf.workflow.signal("go", {"n": 1}) is True
    assert await handle.result(timeout=10) == {"n": 1}


async def test_early_signal_is_kept_for_the_first_waiter(hm: Harness) -> None:
    mf = await hm.memflow()
    assert await mf.workflow.signal("early", "before anyone waited") is False
    await mf.worker("q", workflows=[waiter])
    handle = await mf.workflow.start("t", "waiter", "w", ["early"], "q")
    assert await handle.result(timeout=10) == "before anyone waited"


async def test_wait_timeout_then_later_signal_is_kept(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[waiter])
    first = await mf.workflow.start("t", "waiter", "w1", ["late", 0.2], "q")
    with pytest.raises(WorkflowFailed) as caught:
        await first.result(timeout=10)
    assert caught.value.type_name == "WaitTimeout"
    await mf.workflow.signal("late", "for the next one")
    second = await mf.workflow.start("t", "waiter", "w2", ["late"], "q")
    assert await second.result(timeout=10) == "for the next one"


async def catches_timeout() -> str:
    try:
        await workflow.wait_for("nothing-comes", timeout="100ms")
    except WaitTimeout as timeout:
        assert isinstance(timeout, TimeoutError)
        return "timed out"
    return "signalled"


async def test_wait_timeout_is_catchable(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[catches_timeout])
    handle = await mf.workflow.start("t", "catches_timeout", "ct", [], "q")
    assert await handle.result(timeout=10) == "timed out"


async def test_one_signal_reaches_exactly_one_waiter(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[waiter])
    one = await mf.workflow.start("t", "waiter", "a", ["shared", 1], "q")
    two = await mf.workflow.start("t", "waiter", "b", ["shared", 1], "q")
    for _ in range(100):
        if {await one.status(), await two.status()} == {"running"}:
            break
        await asyncio.sleep(0.02)
    await mf.workflow.signal("shared", "only one")
    outcomes = []
    for handle in (one, two):
        try:
            outcomes.append(await handle.result(timeout=10))
        except WorkflowFailed as failure:
            outcomes.append(failure.type_name)
    assert sorted(outcomes) == ["WaitTimeout", "only one"]


async def sender(target: str) -> None:
    await workflow.signal(target, {"from": workflow.info().workflow_id})


async def test_workflow_to_workflow_signal(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[waiter, sender])
    receiving = await mf.workflow.start("t", "waiter", "rx", ["wf-signal"], "q")
    await mf.workflow.start("t", "sender", "tx", ["wf-signal"], "q")
    assert await receiving.result(timeout=10) == {"from": "tx"}


async def recorder() -> dict[str, Any]:
    first = {
        "now": workflow.now().isoformat(),
        "random": workflow.random(),
        "uuid": workflow.uuid4(),
    }
    entity = await workflow.entity()
    await entity.set({"first": first})
    await workflow.sleep_for(0.05)  # forces a second run that replays the values
    again = {
        "now": workflow.now().isoformat(),
        "random": workflow.random(),
        "uuid": workflow.uuid4(),
    }
    return {"first": first, "replayed_first": (await entity.get("first")), "again": again}


async def test_now_random_uuid_are_replay_stable(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[recorder])
    handle = await mf.workflow.start("t", "recorder", "rec", [], "q")
    result = await handle.result(timeout=10)
    assert result["first"] == result["replayed_first"]
    assert result["again"]["uuid"] != result["first"]["uuid"]
    assert 0 <= result["first"]["random"] < 1
    kinds = [e.kind for e in (await handle.export()).timeline]
    assert kinds[:3] == ["now", "random", "uuid4"]
