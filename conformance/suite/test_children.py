"""Child jobs: their own entity, awaited or not."""

from __future__ import annotations

from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import WorkflowFailed, workflow

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio


async def checker(claim: str) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"claim": claim, "verified": len(claim) > 3})
    return {"claim": claim, "verified": len(claim) > 3}


async def parent(claim: str) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"role": "parent"})
    verdict = await workflow.exec_child("fact-checker", "checker", args=[claim])
    return {"verdict": verdict, "mine": await entity.get(), "me": workflow.info().workflow_id}


async def test_exec_child_has_its_own_entity(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[parent, checker])
    handle = await mf.workflow.start("research", "parent", "p1", ["earth is round"], "q")
    result = await handle.result(timeout=10)
    assert result["verdict"] == {"claim": "earth is round", "verified": True}
    assert result["mine"] == {"role": "parent"}
    (child_step,) = [e for e in (await handle.export()).timeline if e.kind == "child"]
    child = await mf.workflow.get_handle(f"p1-c-{child_step.index}")  # deterministic id
    assert await child.state() == {"claim": "earth is round", "verified": True}
    assert (await child.export()).entity == "fact-checker"
    assert (await child.export()).parent_id == "p1"


async def starter(n: int) -> list[str]:
    ids = [
        await workflow.start_child("fact-checker", "checker", f"kid-{i}", [f"claim {i}"])
        for i in range(n)
    ]
    return ids


async def test_start_child_returns_id_without_waiting(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[starter, checker])
    handle = await mf.workflow.start("research", "starter", "s1", [2], "q")
    assert await handle.result(timeout=10) == ["kid-0", "kid-1"]
    kid = await mf.workflow.get_handle("kid-1")
    assert await kid.result(timeout=10) == {"claim": "claim 1", "verified": True}


async def bad_child() -> None:
    raise KeyError("missing source")


async def catches_child() -> str:
    try:
        await workflow.exec_child("x", "bad_child", workflow_id="bad-kid")
    except WorkflowFailed as failure:
        return f"{failure.type_name}: {failure.message}"
    return "no error"


async def test_child_failure_surfaces_in_parent(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[catches_child, bad_child])
    handle = await mf.workflow.start("x", "catches_child", "cc", [], "q")
    assert await handle.result(timeout=10) == "KeyError: 'missing source'"
    with pytest.raises(WorkflowFailed):
        await (await mf.workflow.get_handle("bad-kid")).result(timeout=1)


async def child_on_other_queue() -> int:
    return await workflow.exec_child(
        "calc",
        "times_two",
        args=[21],  # type: ignore[no-any-return]
        task_queue="kids",
    )


async def times_two(x: int) -> int:
    return x * 2


async def test_child_on_another_queue(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[child_on_other_queue])
    await mf.worker("kids", workflows=[times_two])
    handle = await mf.workflow.start("calc", "child_on_other_queue", "coq", [], "q")
    assert await handle.result(timeout=10) == 42
