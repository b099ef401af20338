"""The replayer: recorded histories against the current code, as a user runs it in CI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_core.replayer import replay_export, replay_runs
from hotmesh_postgres.testing import test_dsn

pytestmark = pytest.mark.asyncio


async def lookup(key: str) -> str:
    return f"value of {key}"


async def original(key: str) -> Any:
    acts = workflow.proxy_activities(activities=[lookup])
    entity = await workflow.entity()
    await entity.set({"key": key})
    found = await acts.lookup(key)
    approved = await workflow.wait_for(f"approve-{key}")
    return [found, approved]


async def changed_arguments(key: str) -> Any:
    acts = workflow.proxy_activities(activities=[lookup])
    entity = await workflow.entity()
    await entity.set({"key": key})
    found = await acts.lookup(key.upper())  # the change: other arguments at index 1
    approved = await workflow.wait_for(f"approve-{key}")
    return [found, approved]


async def inserted_call(key: str) -> Any:
    acts = workflow.proxy_activities(activities=[lookup])
    entity = await workflow.entity()
    await entity.set({"key": key})
    await workflow.sleep_for(1)  # the change: a new call at index 1
    found = await acts.lookup(key)
    approved = await workflow.wait_for(f"approve-{key}")
    return [found, approved]


async def patched_change(key: str) -> Any:
    acts = workflow.proxy_activities(activities=[lookup])
    entity = await workflow.entity()
    await entity.set({"key": key})
    if workflow.patched("nap-first"):
        await workflow.sleep_for(1)
    found = await acts.lookup(key)
    approved = await workflow.wait_for(f"approve-{key}")
    return [found, approved]


async def stops_early(key: str) -> Any:
    entity = await workflow.entity()
    await entity.set({"key": key})
    return "nothing more"


async def running_and_completed(mf: Any) -> None:
    await mf.worker("q", workflows={"flow": original}, activities=[lookup])
    done = await mf.workflow.start("t", "flow", "done-1", ["a"], "q")
    waiting = await mf.workflow.start("t", "flow", "waiting-1", ["b"], "q")
    await mf.workflow.signal("approve-a", "yes")
    assert await done.result(timeout=20) == ["value of a", "yes"]
    deadline = asyncio.get_running_loop().time() + 20
    while not [e for e in (await waiting.export()).timeline if e.kind == "wait"]:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_each_kind_of_change_is_reported_at_its_index() -> None:
    async with MemFlow.init(app_id=f"rp{uuid.uuid4().hex[:8]}", backend="memory") as mf:
        await running_and_completed(mf)
        same = await replay_runs(mf.backend, {"flow": original}, status=None)
        assert [(r.workflow_id, r.ok) for r in same] == [("done-1", True), ("waiting-1", True)]

        (bad,) = await replay_runs(mf.backend, {"flow": changed_arguments}, ids=["waiting-1"])
        assert not bad.ok and bad.divergence is not None
        assert bad.divergence.index == 1
        assert bad.divergence.recorded == {"kind": "activity", "name": "lookup", "args": ["b"]}
        assert bad.divergence.issued == {"kind": "activity", "name": "lookup", "args": ["B"]}

        (bad,) = await replay_runs(mf.backend, {"flow": inserted_call}, ids=["done-1"])
        assert bad.divergence is not None and bad.divergence.index == 1
        assert bad.divergence.issued == {"kind": "sleep", "name": "sleep", "args": 1.0}

        patched = await replay_runs(mf.backend, {"flow": patched_change})
        assert all(r.ok for r in patched)

        (bad,) = await replay_runs(mf.backend, {"flow": stops_early}, ids=["done-1"])
        assert bad.divergence is not None and bad.divergence.index == 1
        assert bad.divergence.recorded is not None and bad.divergence.issued is None
        assert "returns before it" in bad.divergence.message

        (unknown,) = await replay_runs(mf.backend, {"other": original}, ids=["done-1"])
        assert not unknown.ok and "'flow' is not among the workflows" in (unknown.error or "")


async def test_an_exported_history_replays_without_a_database(tmp_path: Path) -> None:
    async with MemFlow.init(app_id=f"rp{uuid.uuid4().hex[:8]}", backend="memory") as mf:
        await running_and_completed(mf)
        export = await (await mf.workflow.get_handle("done-1")).export()
    path = tmp_path / "done-1.json"
    path.write_text(json.dumps(export.to_dict(), default=str))
    assert (await replay_export({"flow": original}, path)).ok
    bad = await replay_export({"flow": changed_arguments}, path)
    assert bad.divergence is not None and bad.divergence.index == 1


FLOWS = """
from hotmesh_core import workflow


async def lookup(key):
    return f"value of {key}"


async def flow(key):
    acts = workflow.proxy_activities(activities=[lookup])
    entity = await workflow.entity()
    await entity.set({"key": key})
    found = await acts.lookup(KEY(key))
    approved = await workflow.wait_for(f"approve-{key}")
    return [found, approved]


WORKFLOWS = [flow]
"""


def hotmesh(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command as CI runs it: a process of its own, in the project's directory."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [sys.executable, "-c", "from hotmesh_core.cli import main; main()", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_the_replay_command_fails_ci_on_a_changed_workflow(tmp_path: Path) -> None:
    (tmp_path / "flows_v1.py").write_text(FLOWS.replace("KEY(key)", "key"))
    (tmp_path / "flows_v2.py").write_text(FLOWS.replace("KEY(key)", "key.upper()"))
    sys.path.insert(0, str(tmp_path))
    try:
        import flows_v1  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    app = f"rp{uuid.uuid4().hex[:8]}"
    dsn = test_dsn()
    async with MemFlow.init(app_id=app, backend="postgres", dsn=dsn, drop_on_close=True) as mf:
        await mf.worker("q", workflows=flows_v1.WORKFLOWS, activities=[flows_v1.lookup])
        handle = await mf.workflow.start("t", "flow", "order-7", ["x"], "q")
        deadline = asyncio.get_running_loop().time() + 20
        while not [e for e in (await handle.export()).timeline if e.kind == "wait"]:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        common = ["--app", app, "--backend", "postgres", "--dsn", dsn]

        ok = await asyncio.to_thread(
            hotmesh, [*common, "replay", "--workflows", "flows_v1:WORKFLOWS"], tmp_path
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "ok        order-7 (flow, running)" in ok.stdout
        assert "1 replayed, 1 ok, 0 not" in ok.stdout

        bad = await asyncio.to_thread(
            hotmesh, [*common, "replay", "--workflows", "flows_v2:WORKFLOWS"], tmp_path
        )
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "DIVERGED  order-7 (flow, running) at index 1" in bad.stdout
        assert """history: activity 'lookup' args=["x"]""" in bad.stdout
        assert """code:    activity 'lookup' args=["X"]""" in bad.stdout

        exported = await asyncio.to_thread(
            hotmesh, [*common, "runs", "export", "order-7"], tmp_path
        )
        assert exported.returncode == 0, exported.stderr
        (tmp_path / "order-7.json").write_text(exported.stdout)
    # Without the database: the exported history, as a fixture kept in the repo.
    offline = await asyncio.to_thread(
        hotmesh, ["replay", "--workflows", "flows_v2:WORKFLOWS", "--file", "order-7.json"], tmp_path
    )
    assert offline.returncode == 1 and "at index 1" in offline.stdout
    unusable = await asyncio.to_thread(
        hotmesh, ["replay", "--workflows", "flows_v9:WORKFLOWS", "--file", "order-7.json"], tmp_path
    )
    assert unusable.returncode == 1 and "cannot import 'flows_v9'" in unusable.stderr
