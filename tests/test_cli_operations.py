"""``hotmesh runs cancel|resume|fork`` against runs on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from click.testing import CliRunner

from hotmesh_core import MemFlow, RetryPolicy, WorkflowCancelled, workflow
from hotmesh_core.cli import main
from hotmesh_postgres.testing import test_dsn

pytestmark = pytest.mark.asyncio

FIXED = {"done": False}


async def flaky(text: str) -> str:
    if not FIXED["done"]:
        raise RuntimeError("not fixed yet")
    return text.upper()


async def shouts(text: str) -> Any:
    acts = workflow.proxy_activities(
        activities=[flaky], retry_policy=RetryPolicy(maximum_attempts=1)
    )
    return await acts.flaky(text)


async def waits_forever() -> Any:
    try:
        await workflow.wait_for("never")
    except asyncio.CancelledError:
        await (await workflow.entity()).set({"cleaned": True})
        raise


def hotmesh(app: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["--app", app, "--backend", "postgres", "--dsn", test_dsn(), *args]
    )
    return result.exit_code, result.output


async def test_cancel_resume_and_fork_from_the_command_line() -> None:
    FIXED["done"] = False
    app = f"ops{uuid.uuid4().hex[:8]}"
    async with MemFlow.init(
        app_id=app, backend="postgres", dsn=test_dsn(), drop_on_close=True
    ) as mf:
        await mf.worker("q", workflows=[shouts, waits_forever], activities=[flaky])
        failing = await mf.workflow.start("t", "shouts", "s-1", ["hi"], "q")
        with pytest.raises(Exception, match="not fixed yet"):
            await failing.result(timeout=20)
        FIXED["done"] = True
        code, out = await asyncio.to_thread(hotmesh, app, "runs", "resume", "s-1")
        assert (code, out.strip()) == (0, "resumed s-1")
        assert await failing.result(timeout=20) == "HI"
        code, out = await asyncio.to_thread(hotmesh, app, "runs", "resume", "s-1")
        assert code == 1 and "only a failed workflow resumes" in out

        stuck = await mf.workflow.start("t", "waits_forever", "w-1", [], "q")
        while await stuck.status() != "running":
            await asyncio.sleep(0.02)
        code, out = await asyncio.to_thread(
            hotmesh, app, "runs", "cancel", "w-1", "--reason", "operator"
        )
        assert (code, out.strip()) == (0, "cancel requested for w-1")
        with pytest.raises(WorkflowCancelled, match="operator"):
            await stuck.result(timeout=20)
        assert await stuck.state() == {"cleaned": True}

        code, out = await asyncio.to_thread(
            hotmesh, app, "runs", "fork", "s-1", "--from-step", "0", "--id", "s-2"
        )
        assert (code, out.strip()) == (0, "forked s-1 at step 0 as s-2")
        assert await (await mf.workflow.get_handle("s-2")).result(timeout=20) == "HI"
        code, out = await asyncio.to_thread(hotmesh, app, "runs", "cancel", "nobody")
        assert code == 1 and "no workflow with id 'nobody'" in out
