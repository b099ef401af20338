"""A task the engine keeps failing on is set aside, and its job fails visibly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from hotmesh_core import MemFlow, WorkflowFailed, workflow
from hotmesh_core.engine import Engine
from hotmesh_core.worker import Worker
from hotmesh_postgres.testing import test_dsn


async def naps() -> str:
    await workflow.sleep_for(0.05)
    return "rested"


@asynccontextmanager
async def broken_timers(backend: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MemFlow]:
    """An app whose timer path always fails, with a worker that gives up after 2 tries."""

    async def broken_timer(self: Engine, task: Any) -> None:
        raise RuntimeError("the timer path is broken")

    monkeypatch.setattr(Engine, "fire_timer", broken_timer)

    # The in-process timer too (it would fire the sleep without the row).

    monkeypatch.setattr(Engine, "fire_armed_timer", broken_timer)
    # and its resumption of the cached run in this process, which answers it too
    monkeypatch.setattr(Worker, "_wake_in_process", broken_timer)
    options: dict[str, Any] = (
        {"dsn": test_dsn(), "drop_on_close": True} if backend == "postgres" else {}
    )
    mf = await MemFlow.init(app_id=f"dl{uuid.uuid4().hex[:10]}", backend=backend, **options)
    worker = Worker(mf.backend, "q", workflows=[naps], lease=0.3, max_task_attempts=2)
    await worker.start()
    try:
        yield mf
    finally:
        await worker.stop()
        await mf.shutdown()


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_a_poison_task_fails_its_job_with_the_cause(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with broken_timers(backend, monkeypatch) as mf:
        handle = await mf.workflow.start("t", "naps", "poisoned", [], "q")
        with pytest.raises(WorkflowFailed) as caught:
            await handle.result(timeout=15)
        assert caught.value.type_name == "TaskDeadLettered"
        assert "failed 2 times on the timer task" in str(caught.value)
        assert "RuntimeError: the timer path is broken" in str(caught.value)
        assert await handle.status() == "failed"
        (letter,) = await mf.workflow.dead_letters("poisoned")
        assert (letter.task.kind, letter.task.attempts) == ("timer", 2)
        assert letter.error.type_name == "RuntimeError"


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_a_dead_lettered_job_resumes_once_the_cause_is_fixed(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with broken_timers(backend, monkeypatch) as mf:
        handle = await mf.workflow.start("t", "naps", "poisoned", [], "q")
        with pytest.raises(WorkflowFailed):
            await handle.result(timeout=15)
        monkeypatch.undo()  # the fix is deployed
        await handle.resume()
        assert await handle.result(timeout=15) == "rested"
        sleeps = [e for e in (await handle.export()).timeline if e.kind == "sleep"]
        assert [(e.index, e.status) for e in sleeps] == [(0, "done")]
