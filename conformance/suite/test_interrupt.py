"""Interrupting jobs: sleeps, waits and children stop."""

from __future__ import annotations

import asyncio

import pytest

from conformance.plugin import Harness
from hotmesh_core import WorkflowInterrupted, WorkflowNotFound, workflow

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio


async def sleeper() -> str:
    await workflow.sleep_for("1 hour")
    return "woke"


async def family(n: int) -> list[str]:
    return list(
        await asyncio.gather(
            *(workflow.exec_child("kid", "sleeper", f"fam-kid-{i}") for i in range(n))
        )
    )


async def wait_status(handle: object, status: str) -> None:
    for _ in range(200):
        if await handle.status() == status:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never reached {status}")


async def test_interrupt_a_sleeping_job(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[sleeper])
    handle = await mf.workflow.start("t", "sleeper", "s", [], "q")
    await wait_status(handle, "running")
    assert await handle.interrupt("no longer needed") is True
    with pytest.raises(WorkflowInterrupted, match="no longer needed"):
        await handle.result(timeout=10)
    assert await handle.status() == "interrupted"
    assert await handle.interrupt() is False


async def test_interrupting_a_parent_reaches_its_children(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[family, sleeper])
    handle = await mf.workflow.start("t", "family", "fam", [3], "q")
    kids = []
    for i in range(3):
        for _ in range(200):
            try:
                kids.append(await mf.workflow.get_handle(f"fam-kid-{i}"))
                break
            except WorkflowNotFound:
                await asyncio.sleep(0.02)
    for kid in kids:
        await wait_status(kid, "running")
    await handle.interrupt()
    for kid in [handle, *kids]:
        with pytest.raises(WorkflowInterrupted):
            await kid.result(timeout=10)
        assert await kid.status() == "interrupted"


async def test_interrupted_waiter_does_not_consume_a_later_signal(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[listener])
    handle = await mf.workflow.start("t", "listener", "l1", ["ping"], "q")
    await wait_status(handle, "running")
    await handle.interrupt()
    assert await mf.workflow.signal("ping", "after interrupt") is False
    again = await mf.workflow.start("t", "listener", "l2", ["ping"], "q")
    assert await again.result(timeout=10) == "after interrupt"


async def listener(signal_id: str) -> object:
    return await workflow.wait_for(signal_id)


async def writes_after_sleep() -> None:
    entity = await workflow.entity()
    await entity.set({"phase": "before"})
    await workflow.sleep_for("0.3s")
    await entity.set({"phase": "after"})


async def test_an_interrupted_job_changes_nothing_more(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[writes_after_sleep])
    handle = await mf.workflow.start("t", "writes_after_sleep", "frozen", [], "q")
    await wait_status(handle, "running")
    await handle.interrupt()
    await asyncio.sleep(0.6)  # past the sleep: its timer fires into an interrupted job
    assert await handle.state() == {"phase": "before"}
    assert [e.kind for e in (await handle.export()).timeline] == ["entity", "sleep"]
