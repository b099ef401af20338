"""Adversarial regressions for issue #10 (replayer, fork, cancel, resume): bad
input is a HotMeshError naming the problem, never a traceback."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from hotmesh_core import HotMeshError, MemFlow, workflow
from hotmesh_core.replayer import replay_export

pytestmark = pytest.mark.asyncio


async def lookup(key: str) -> str:
    return f"value of {key}"


async def flow(key: str) -> Any:
    acts = workflow.proxy_activities(activities=[lookup])
    entity = await workflow.entity()
    await entity.set({"key": key})
    return await acts.lookup(key)


async def exported_run() -> dict[str, Any]:
    async with MemFlow.init(app_id=f"adv{uuid.uuid4().hex[:8]}", backend="memory") as mf:
        await mf.worker("q", workflows=[flow], activities=[lookup])
        handle = await mf.workflow.start("t", "flow", "x1", ["a"], "q")
        assert await handle.result(timeout=20) == "value of a"
        data: dict[str, Any] = json.loads(
            json.dumps((await handle.export()).to_dict(), default=str)
        )
    return data


def _set(path: list[Any], value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


MALFORMED = {
    "activation is a list": _set(["timeline", 1, "activation"], [1]),
    "activation is text": _set(["timeline", 1, "activation"], "2"),
    "a step's error is text": _set(["timeline", 1, "error"], "boom"),
    "a step's error lacks fields": _set(["timeline", 1, "error"], {"x": 1}),
    "the job's error is text": _set(["error"], "boom"),
    "a hook is not a thread": _set(["hooks"], [{"x": 1}]),
    "hooks is text": _set(["hooks"], "abc"),
    "workflow_name is a list": _set(["workflow_name"], ["flow"]),
    "kind is a number": _set(["timeline", 1, "kind"], 5),
}


@pytest.mark.parametrize("change", list(MALFORMED))
async def test_a_malformed_export_is_a_clear_error(tmp_path: Path, change: str) -> None:
    data = copy.deepcopy(await exported_run())
    MALFORMED[change](data)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    with pytest.raises(HotMeshError, match="not a HotMesh export"):
        await replay_export({"flow": flow}, path)


async def test_an_export_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(HotMeshError, match="cannot read the export"):
        await replay_export({"flow": flow}, path)


async def plain() -> Any:
    acts = workflow.proxy_activities(activities=[lookup])
    return await acts.lookup("p")


@pytest.mark.parametrize("from_step", ["2", True, -1, 1.5, None])
async def test_fork_refuses_a_from_step_that_is_not_a_step_index(from_step: Any) -> None:
    from hotmesh_core.fork import fork_run

    async with MemFlow.init(app_id=f"adv{uuid.uuid4().hex[:8]}", backend="memory") as mf:
        await mf.worker("q", workflows=[plain], activities=[lookup])
        handle = await mf.workflow.start("t", "plain", "p1", [], "q")
        assert await handle.result(timeout=20) == "value of p"
        with pytest.raises(HotMeshError, match="from_step must be a step index"):
            await fork_run(mf.backend, "p1", from_step)
        assert [run.workflow_id for run in await mf.workflow.list_runs()] == ["p1"]
