"""``handle.resume()``: a failed run carries on after a fix."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import (
    NonDeterminismError,
    NotResumable,
    RetryPolicy,
    WorkflowFailed,
    workflow,
)

pytestmark = pytest.mark.asyncio

BROKEN = {"charge": True}


async def charge(amount: int) -> str:
    if BROKEN["charge"]:
        raise ValueError("the payment service rejects the request")
    return f"charged {amount}"


async def checkout(amount: int) -> Any:
    acts = workflow.proxy_activities(
        activities=[charge], retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=0.01)
    )
    entity = await workflow.entity()
    await entity.increment("attempts_seen", 1)
    receipt = await acts.charge(amount)
    await entity.merge({"receipt": receipt})
    return receipt


async def test_an_activity_that_failed_for_good_runs_again_after_the_fix(hm: Harness) -> None:
    BROKEN["charge"] = True
    mf = await hm.memflow()
    await mf.worker("q", workflows=[checkout], activities=[charge])
    handle = await mf.workflow.start("order", "checkout", "r1", [5], "q")
    with pytest.raises(WorkflowFailed, match="rejects the request"):
        await handle.result(timeout=20)
    BROKEN["charge"] = False  # the fix is deployed
    await handle.resume()
    assert await handle.result(timeout=20) == "charged 5"
    assert await handle.status() == "completed"
    # The entity operation before the activity was not applied again.
    assert await handle.state() == {"attempts_seen": 1, "receipt": "charged 5"}
    activities = [e for e in (await handle.export()).timeline if e.kind == "activity"]
    assert [(e.index, e.status, e.result) for e in activities] == [(1, "done", "charged 5")]
    with pytest.raises(NotResumable, match="completed"):
        await handle.resume()


async def greet(name: str) -> str:
    return f"hello {name}"


async def v1(name: str) -> Any:
    acts = workflow.proxy_activities(activities=[greet])
    first = await acts.greet(name)
    more = await workflow.wait_for("r2-go")
    return [first, await acts.greet(more)]


async def v2_breaks_history(name: str) -> Any:
    # A deploy that changed the first call: replay disagrees at index 0.
    acts = workflow.proxy_activities(activities=[greet])
    first = await acts.greet(name.upper())
    more = await workflow.wait_for("r2-go")
    return [first, await acts.greet(more)]


async def v3_patched(name: str) -> Any:
    # The fix: the change behind workflow.patched, old runs keep the old path.
    acts = workflow.proxy_activities(activities=[greet])
    first = await acts.greet(name.upper() if workflow.patched("upper") else name)
    more = await workflow.wait_for("r2-go")
    return [first, await acts.greet(more)]


async def test_a_nondeterminism_failure_resumes_under_fixed_code(hm: Harness) -> None:
    mf = await hm.memflow()
    worker = await mf.worker("q", workflows={"greeter": v1}, activities=[greet])
    handle = await mf.workflow.start("t", "greeter", "r2", ["ann"], "q")
    deadline = asyncio.get_running_loop().time() + 20
    while not [e for e in (await handle.export()).timeline if e.kind == "wait"]:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    await worker.stop()
    worker = await mf.worker("q", workflows={"greeter": v2_breaks_history}, activities=[greet])
    await mf.workflow.signal("r2-go", "bob")
    with pytest.raises(WorkflowFailed) as failed:
        await handle.result(timeout=20)
    assert failed.value.type_name == NonDeterminismError.__name__
    await worker.stop()
    await mf.worker("q", workflows={"greeter": v3_patched}, activities=[greet])
    await handle.resume()
    assert await handle.result(timeout=20) == ["hello ann", "hello bob"]


async def test_resume_is_for_failed_jobs_only(hm: Harness) -> None:
    mf = await hm.memflow()
    handle = await mf.workflow.start("t", "greeter", "r3", ["x"], "q")
    with pytest.raises(NotResumable, match="pending"):
        await handle.resume()
    await handle.interrupt()
    with pytest.raises(NotResumable, match="interrupted"):
        await handle.resume()
