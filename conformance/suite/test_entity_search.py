"""Search fields set from inside a run (``workflow.search().set``), found by ``search``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import InvalidQuery, workflow

pytestmark = pytest.mark.asyncio


async def staged(name: str) -> dict[str, Any]:
    fields = await workflow.search().set({"stage": "review", "priority": 3})
    await workflow.wait_for(f"go-{name}")
    after = await workflow.search().set({"stage": "done"})
    return {"first": fields, "after": after}


async def test_search_fields_set_during_the_run_are_found(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[staged], max_cached_workflows=0)  # replay every step
    handle = await mf.workflow.start(
        "order", "staged", "o1", ["o1"], "q", search={"customer": "ada"}
    )
    other = await mf.workflow.start("order", "staged", "o2", ["o2"], "q")
    for _ in range(400):
        if len(await mf.workflow.search({"stage": "review"})) == 2:
            break
        await asyncio.sleep(0.025)
    assert await mf.workflow.search({"stage": "review"}) == ["o1", "o2"]
    assert await mf.workflow.search({"priority": {"$gte": 2}, "customer": "ada"}) == ["o1"]
    assert await mf.workflow.search({"customer": {"$exists": False}}) == ["o2"]
    await mf.workflow.signal("go-o1", None)
    result = await handle.result(timeout=20)
    assert result["first"] == {"customer": "ada", "stage": "review", "priority": 3}
    assert result["after"] == {"customer": "ada", "stage": "done", "priority": 3}
    assert await mf.workflow.search({"stage": "done"}) == ["o1"]
    assert await mf.workflow.search({"stage": "review"}) == ["o2"]
    assert await mf.workflow.search({"$or": [{"stage": "done"}, {"priority": 3}]}) == ["o1", "o2"]
    # Recorded once each, though the run replayed from the top at every step.
    steps = [s for s in (await handle.export()).timeline if s.name == "search.set"]
    assert [s.index for s in steps] == [0, 2] and all(s.status == "done" for s in steps)
    assert (await handle.export()).version == 0  # search fields are not the entity
    await mf.workflow.signal("go-o2", None)
    await other.result(timeout=20)


async def bad_fields() -> str:
    try:
        await workflow.search().set({"": 1})
    except InvalidQuery:
        return "refused"
    return "accepted"


async def test_bad_search_fields_are_refused(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[bad_fields])
    handle = await mf.workflow.start("t", "bad_fields", "b1", [], "q")
    assert await handle.result(timeout=20) == "refused"
    with pytest.raises(InvalidQuery, match=r"\$gt"):
        await mf.workflow.search({"priority": {"$gt": [1]}})
