"""Replay rules: determinism is checked, history is the audit trail."""

from __future__ import annotations

import asyncio

import pytest

from conformance.plugin import Harness
from hotmesh_core import WorkflowFailed, workflow

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio

VERSION: dict[str, int] = {}


async def step_a() -> str:
    return "a"


async def step_b() -> str:
    return "b"


async def drifting(key: str) -> str:
    acts = workflow.proxy_activities(activities=[step_a, step_b])
    first = await (acts.step_a() if VERSION.get(key, 1) == 1 else acts.step_b())
    VERSION[key] = 2  # the "deployed code" changes between runs
    await workflow.sleep_for(0.05)
    return first


async def test_nondeterminism_is_detected(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker(
        "q", workflows=[drifting], activities=[step_a, step_b], max_cached_workflows=0
    )  # a deploy: a new process
    handle = await mf.workflow.start("t", "drifting", "nd", [mf.app_id], "q")
    with pytest.raises(WorkflowFailed) as caught:
        await handle.result(timeout=10)
    assert caught.value.type_name == "NonDeterminismError"
    assert "step_b" in caught.value.message and "step_a" in caught.value.message
    timeline = [(e.kind, e.name, e.result) for e in (await handle.export()).timeline]
    # The sleep is recorded with step_a's answer; under faults that commit may
    # be lost, and the next run meets the drift before it issues the sleep.
    assert timeline in (
        [("activity", "step_a", "a"), ("sleep", "sleep", None)],
        [("activity", "step_a", "a")],
    )


async def uses_asyncio_sleep() -> None:
    await asyncio.sleep(1)


async def test_asyncio_timers_are_refused_in_workflows(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[uses_asyncio_sleep])
    handle = await mf.workflow.start("t", "uses_asyncio_sleep", "as", [], "q")
    with pytest.raises(WorkflowFailed, match="sleep_for"):
        await handle.result(timeout=10)


async def audited(name: str) -> str:
    entity = await workflow.entity()
    await entity.set({"name": name})
    acts = workflow.proxy_activities(activities=[step_a])
    letter = await acts.step_a()
    await entity.merge({"letter": letter})
    await workflow.sleep_for(0.01)
    await entity.increment("visits")
    return letter


async def test_export_is_a_complete_timeline(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[audited], activities=[step_a])
    handle = await mf.workflow.start("t", "audited", "audit", ["ada"], "q")
    await handle.result(timeout=10)
    export = await handle.export()
    assert (export.workflow_id, export.status, export.result, export.args) == (
        "audit",
        "completed",
        "a",
        ["ada"],
    )
    assert [(e.index, e.kind, e.name, e.status) for e in export.timeline] == [
        (0, "entity", "set", "done"),
        (1, "activity", "step_a", "done"),
        (2, "entity", "merge", "done"),
        (3, "sleep", "sleep", "done"),
        (4, "entity", "increment", "done"),
    ]
    activity = export.timeline[1]
    assert activity.attempts == 1 and activity.result == "a" and activity.args == []
    assert all(e.finished_at is not None and e.finished_at >= e.started_at for e in export.timeline)
    assert [(c["version"], c["op"], c["path"]) for c in export.entity_changes] == [
        (1, "set", None),
        (2, "merge", None),
        (3, "increment", "visits"),
    ]
    assert export.context == {"name": "ada", "letter": "a", "visits": 1}
    as_dict = export.to_dict()
    assert as_dict["timeline"][1]["name"] == "step_a"


async def stamps_then_steps(count: int) -> int:
    stamps = [workflow.now() for _ in range(count)]
    acts = workflow.proxy_activities(activities=[step_a])
    await acts.step_a()
    await acts.step_a()
    return len(stamps)


async def test_steps_recorded_done_never_finish_before_they_start(hm: Harness) -> None:
    """Values, and a first activity a worker runs before its dispatch commits, are
    stored done in one go: each starts when it finishes, and the timeline keeps the
    order the workflow took them in."""
    mf = await hm.memflow()
    await mf.worker("q", workflows=[stamps_then_steps], activities=[step_a])
    handle = await mf.workflow.start("t", "stamps_then_steps", "stamps", [300], "q")
    assert await handle.result(timeout=20) == 300
    timeline = (await handle.export()).timeline
    assert [e.index for e in timeline] == list(range(302))
    assert [e.kind for e in timeline] == ["now"] * 300 + ["activity", "activity"]
    backwards = [e.index for e in timeline if e.finished_at is None or e.finished_at < e.started_at]
    assert backwards == []
