"""Starting jobs and reading their outcome."""

from __future__ import annotations

import asyncio

import pytest

from conformance.plugin import Harness
from hotmesh_core import (
    DuplicateWorkflow,
    MemFlow,
    WorkflowFailed,
    WorkflowNotFound,
    workflow,
)

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio

RUNS: dict[str, int] = {}


async def add(a: int, b: int) -> int:
    RUNS[f"add-{a}-{b}"] = RUNS.get(f"add-{a}-{b}", 0) + 1
    return a + b


async def adder(a: int, b: int) -> int:
    acts = workflow.proxy_activities(activities=[add])
    return await acts.add(a, b)  # type: ignore[no-any-return]


async def broken(message: str) -> None:
    raise ValueError(message)


async def test_start_and_result(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[adder], activities=[add])
    handle = await mf.workflow.start("calc", "adder", "sum-1", [2, 3], task_queue="q")
    assert await handle.result(timeout=10) == 5
    assert await handle.status() == "completed"


async def test_start_is_idempotent_and_runs_once(hm: Harness) -> None:
    mf = await hm.memflow()
    first = await mf.workflow.start("calc", "adder", "sum-once", [40, 2], task_queue="q")
    second = await mf.workflow.start("calc", "adder", "sum-once", [1, 1], task_queue="q")
    assert first.workflow_id == second.workflow_id
    await mf.worker("q", workflows=[adder], activities=[add])
    assert await second.result(timeout=10) == 42
    assert RUNS.get("add-1-1", 0) == 0


async def test_strict_start_raises_duplicate(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.workflow.start("calc", "adder", "dup", [1, 2], task_queue="q")
    with pytest.raises(DuplicateWorkflow):
        await mf.workflow.start("calc", "adder", "dup", [1, 2], task_queue="q", strict=True)


async def test_pending_until_a_worker_serves_it(hm: Harness) -> None:
    mf = await hm.memflow()
    handle = await mf.workflow.start("calc", "adder", "later", [1, 2], task_queue="q")
    assert await handle.status() == "pending"
    with pytest.raises(TimeoutError):
        await handle.result(timeout=0.2)
    await mf.worker("q", workflows=[adder], activities=[add])
    assert await handle.result(timeout=10) == 3


async def test_unknown_workflow_waits_for_a_worker_that_has_it(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[broken])  # registers another name on the same queue
    handle = await mf.workflow.start("calc", "adder", "orphan", [5, 5], task_queue="q")
    await asyncio.sleep(0.2)
    assert await handle.status() == "pending"
    await mf.worker("q", workflows=[adder], activities=[add])
    assert await handle.result(timeout=10) == 10


async def test_failing_workflow_carries_type_message_traceback(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[broken])
    handle = await mf.workflow.start("calc", "broken", "b1", ["no good"], task_queue="q")
    with pytest.raises(WorkflowFailed) as caught:
        await handle.result(timeout=10)
    assert caught.value.type_name == "ValueError"
    assert caught.value.message == "no good"
    assert "raise ValueError(message)" in caught.value.traceback
    assert await handle.status() == "failed"


async def test_get_handle_of_missing_job(hm: Harness) -> None:
    mf = await hm.memflow()
    with pytest.raises(WorkflowNotFound):
        await mf.workflow.get_handle("does-not-exist")


async def test_client_and_context_manager_share_the_app(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[adder], activities=[add])
    client = await hm.client(mf.app_id)
    handle = await client.workflow.start("calc", "adder", "from-client", [7, 8], task_queue="q")
    assert await handle.result(timeout=10) == 15
    async with MemFlow.init(app_id=mf.app_id, backend=hm.backend, **hm.options) as other:
        again = await other.workflow.get_handle("from-client")
        assert await again.result(timeout=10) == 15


async def test_generated_workflow_id(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[adder], activities=[add])
    one = await mf.workflow.start("calc", "adder", args=[1, 1], task_queue="q")
    two = await mf.workflow.start("calc", "adder", args=[1, 1], task_queue="q")
    assert one.workflow_id != two.workflow_id
    assert [await one.result(timeout=10), await two.result(timeout=10)] == [2, 2]
