"""Failures are logged through `logging` (loggers ``hotmesh.*``) at useful levels."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from hotmesh_core import MemFlow, RetryPolicy, VirtualClock, WorkflowFailed, workflow
from hotmesh_core.engine import Engine
from hotmesh_core.worker import Worker

calls: dict[str, int] = {}


async def flaky(key: str) -> str:
    calls[key] = calls.get(key, 0) + 1
    if calls[key] < 3:
        raise ConnectionError(f"the payment service said no (call {calls[key]})")
    return "paid"


async def pays(key: str, attempts: int) -> str:
    acts = workflow.proxy_activities(
        activities=[flaky],
        retry_policy=RetryPolicy(maximum_attempts=attempts, initial_interval="1 second"),
    )
    result: str = await acts.flaky(key)
    return result


async def naps() -> str:
    await workflow.sleep_for(0.05)
    return "rested"


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == level and r.name.startswith("hotmesh.")]


async def test_retries_are_warnings_with_the_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hotmesh")
    key = uuid.uuid4().hex
    async with MemFlow.init(app_id="logs", backend="memory", clock=VirtualClock()) as mf:
        await mf.worker("q", workflows=[pays], activities=[flaky])
        handle = await mf.workflow.start("p", "pays", f"ok-{key}", [key, 5], "q")
        assert await handle.result(timeout=10) == "paid"
    warnings = [r.getMessage() for r in records(caplog, logging.WARNING)]
    retried = [m for m in warnings if "activity flaky" in m and "retrying" in m]
    assert len(retried) == 2, warnings
    assert "attempt 1" in retried[0] and "attempt 2" in retried[1]
    assert "ConnectionError: the payment service said no (call 1)" in retried[0]
    assert records(caplog, logging.ERROR) == []


async def test_the_last_failure_is_an_error_and_the_job_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hotmesh")
    key = uuid.uuid4().hex
    async with MemFlow.init(app_id="logs", backend="memory", clock=VirtualClock()) as mf:
        await mf.worker("q", workflows=[pays], activities=[flaky])
        handle = await mf.workflow.start("p", "pays", f"no-{key}", [key, 2], "q")
        with pytest.raises(WorkflowFailed):
            await handle.result(timeout=10)
    (error,) = [r.getMessage() for r in records(caplog, logging.ERROR)]
    assert "activity flaky" in error and "no retry left" in error
    assert "(call 2)" in error
    assert any(f"job 'no-{key}' failed" in r.getMessage() for r in records(caplog, logging.WARNING))


async def test_dead_letters_are_errors(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_timer(self: Engine, task: Any) -> None:
        raise RuntimeError("the timer path is broken")

    monkeypatch.setattr(Engine, "fire_timer", broken_timer)

    # The in-process timer too (it would fire the sleep without the row).

    monkeypatch.setattr(Engine, "fire_armed_timer", broken_timer)
    # and its resumption of the cached run in this process, which answers it too
    monkeypatch.setattr(Worker, "_wake_in_process", broken_timer)
    caplog.set_level(logging.INFO, logger="hotmesh")
    async with MemFlow.init(app_id="logs", backend="memory") as mf:
        worker = Worker(mf.backend, "q", workflows=[naps], lease=0.3, max_task_attempts=2)
        await worker.start()
        try:
            handle = await mf.workflow.start("t", "naps", "poisoned", [], "q")
            with pytest.raises(WorkflowFailed):
                await handle.result(timeout=15)
        finally:
            await worker.stop()
    dead = [r for r in records(caplog, logging.ERROR) if "dead letter" in r.getMessage()]
    assert len(dead) == 1
    assert dead[0].name == "hotmesh.engine"
    assert "RuntimeError: the timer path is broken" in dead[0].getMessage()
