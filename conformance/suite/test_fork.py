"""``fork_run`` (``hotmesh runs fork ID --from-step N``): a new run from a history prefix."""

from __future__ import annotations

from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import workflow
from hotmesh_core.fork import fork_run

pytestmark = pytest.mark.asyncio

CALLS: list[str] = []


async def step(name: str) -> str:
    CALLS.append(name)
    return f"{name} done"


async def three_steps() -> Any:
    acts = workflow.proxy_activities(activities=[step])
    entity = await workflow.entity()
    results = []
    for name in ("one", "two", "three"):
        results.append(await acts.step(name))
        await entity.append("done", name)
    return results


async def test_a_fork_keeps_the_history_before_the_step(hm: Harness) -> None:
    CALLS.clear()
    mf = await hm.memflow()
    await mf.worker("q", workflows=[three_steps], activities=[step])
    original = await mf.workflow.start("t", "three_steps", "f1", [], "q")
    assert await original.result(timeout=20) == ["one done", "two done", "three done"]
    # Indexes: 0 step(one), 1 append, 2 step(two), 3 append, 4 step(three), 5 append.
    forked = await fork_run(mf.backend, "f1", 2, "f1-again")
    assert await forked.result(timeout=20) == ["one done", "two done", "three done"]
    assert CALLS == ["one", "two", "three", "two", "three"]  # "one" was kept, not run
    assert await forked.state() == {"done": ["one", "two", "three"]}
    export = await forked.export()
    assert [(e.index, e.kind) for e in export.timeline][:2] == [(0, "activity"), (1, "entity")]
    assert await original.state() == {"done": ["one", "two", "three"]}  # untouched
