"""Hooks: functions that run against an existing job's entity."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import WaitTimeout, WorkflowClosed, WorkflowFailed, WorkflowNotFound, workflow

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio


async def perspective(kind: str, config: dict[str, str]) -> None:
    entity = await workflow.entity()
    await entity.merge({"perspectives": {kind: {"view": f"{kind} take"}}})
    await workflow.signal(config["signal"], {"kind": kind, "ok": True})


async def coordinator(query: str) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"query": query, "perspectives": {}})
    answers = await asyncio.gather(
        workflow.exec_hook(None, "perspective", ["optimistic"]),
        workflow.exec_hook(None, "perspective", ["skeptical"]),
    )
    return {"answers": answers, "entity": await entity.get()}


async def test_exec_hook_returns_signal_data_and_shares_entity(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[coordinator, perspective])
    handle = await mf.workflow.start("research", "coordinator", "r1", ["why?"], "q")
    result = await handle.result(timeout=10)
    assert result["answers"] == [
        {"kind": "optimistic", "ok": True},
        {"kind": "skeptical", "ok": True},
    ]
    assert result["entity"]["perspectives"] == {
        "optimistic": {"view": "optimistic take"},
        "skeptical": {"view": "skeptical take"},
    }
    hooks = (await handle.export()).hooks
    assert sorted(h["workflow_name"] for h in hooks) == ["perspective", "perspective"]
    # A hook's signal and its own end are two commits: the job may complete
    # between them (under faults, while the end's lost commit is run again).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while {h["status"] for h in hooks} != {"completed"} and loop.time() < deadline:
        await asyncio.sleep(0.05)
        hooks = (await handle.export()).hooks
    assert {h["status"] for h in hooks} == {"completed"}


async def waits_for_approval() -> Any:
    entity = await workflow.entity()
    await entity.set({"approved": False})
    decision = await workflow.wait_for(f"approve-{workflow.info().workflow_id}")
    return {"decision": decision, "entity": await entity.get()}


async def approver(who: str) -> None:
    entity = await workflow.entity()
    await entity.merge({"approved": True, "by": who})
    await workflow.signal(f"approve-{workflow.info().workflow_id}", "yes")


async def test_hook_from_outside(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[waits_for_approval, approver])
    handle = await mf.workflow.start("doc", "waits_for_approval", "w1", [], "q")
    # Hook once the job has set up its entity (it is running): an earlier hook
    # would be overwritten by the job's own entity.set, as it should be.
    for _ in range(200):
        if await handle.status() == "running":
            break
        await asyncio.sleep(0.02)
    await mf.workflow.hook("w1", "q", "approver", ["ada"])
    assert await handle.result(timeout=10) == {
        "decision": "yes",
        "entity": {"approved": True, "by": "ada"},
    }


async def quick() -> str:
    return "done"


async def note(text: str) -> None:
    entity = await workflow.entity()
    await entity.append("notes", text)


async def test_hook_to_finished_job_raises_closed(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[quick, note])
    handle = await mf.workflow.start("doc", "quick", "fin", [], "q")
    await handle.result(timeout=10)
    with pytest.raises(WorkflowClosed):
        await mf.workflow.hook("fin", "q", "note", ["late"])
    with pytest.raises(WorkflowNotFound):
        await mf.workflow.hook("nobody", "q", "note", ["late"])


async def test_persistent_job_accepts_hooks_after_return(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[quick, note])
    handle = await mf.workflow.start("memory", "quick", "keep", [], "q", persistent=True)
    assert await handle.result(timeout=10) == "done"
    await mf.workflow.hook("keep", "q", "note", ["one"])
    await mf.workflow.hook("keep", "q", "note", ["two"])
    for _ in range(200):
        if len((await handle.state()).get("notes", [])) == 2:
            break
        await asyncio.sleep(0.02)
    assert sorted((await handle.state())["notes"]) == ["one", "two"]


async def failing_hook(config: dict[str, str]) -> None:
    raise LookupError("hook could not find it")


async def silent_hook(config: dict[str, str]) -> None:
    entity = await workflow.entity()
    await entity.set({"silent": True})


async def never_signals(config: dict[str, str]) -> None:
    await workflow.sleep_for("1 hour")


async def hook_outcomes() -> dict[str, Any]:
    outcome: dict[str, Any] = {"silent": await workflow.exec_hook(None, "silent_hook", [])}
    try:
        await workflow.exec_hook(None, "failing_hook", [])
    except WorkflowFailed as failure:
        outcome["failed"] = [failure.type_name, failure.message]
    try:
        await workflow.exec_hook(None, "never_signals", [], timeout=0.3)
    except WaitTimeout:
        outcome["timeout"] = True
    return outcome


async def test_exec_hook_never_blocks_forever(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[hook_outcomes, failing_hook, silent_hook, never_signals])
    handle = await mf.workflow.start("doc", "hook_outcomes", "ho", [], "q")
    assert await handle.result(timeout=10) == {
        "silent": None,
        "failed": ["LookupError", "hook could not find it"],
        "timeout": True,
    }


async def fire_and_forget() -> str:
    hook_id = await workflow.hook(None, "note", ["from inside"])
    await workflow.wait_for(f"never-{workflow.info().workflow_id}", timeout=0.5)
    return hook_id


async def test_hook_started_without_waiting(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[fire_and_forget, note])
    handle = await mf.workflow.start("doc", "fire_and_forget", "ff", [], "q")
    with pytest.raises(WorkflowFailed, match="WaitTimeout"):
        await handle.result(timeout=10)
    assert await handle.state() == {"notes": ["from inside"]}
