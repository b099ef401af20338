"""Adversarial findings on armed timers: a sleep's row comes due
ARMED_TIMER_GRACE after the sleep when its worker arms it in process, and a
firing waits a moment for a slot."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_core.plugins import backend_test_options

BACKENDS = ["memory", "postgres"]


async def _open(backend: str) -> MemFlow:
    return await MemFlow.init(
        app_id=f"advt{uuid.uuid4().hex[:8]}", backend=backend, **backend_test_options(backend)
    )


async def quick_child() -> int:
    return 1


async def sleep_beside_child(seconds: float) -> float:
    started = workflow.now()
    await asyncio.gather(workflow.sleep_for(seconds), workflow.exec_child("e", "quick_child"))
    return (workflow.now() - started).total_seconds()


async def sleep_after_abandoned_wait(seconds: float) -> float:
    started = workflow.now()
    waiting = asyncio.ensure_future(workflow.wait_for("never"))
    napping = asyncio.ensure_future(workflow.sleep_for(0.05))
    await asyncio.wait([waiting, napping], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    # This run abandons the wait: it commits the next sleep on the general path.
    await workflow.sleep_for(seconds)
    return (workflow.now() - started).total_seconds()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_sleep_dispatched_on_the_general_path_is_not_a_grace_late(backend: str) -> None:
    """The general path (a child, an abandoned wait beside the sleep) arms no
    in-process timer: its sleep's row is its only way to fire, so the row must
    come due at the due time, not ARMED_TIMER_GRACE later (each of these took
    1.3 s for a 0.3 s sleep)."""
    mf = await _open(backend)
    try:
        await mf.worker(
            "q",
            workflows=[quick_child, sleep_beside_child, sleep_after_abandoned_wait],
            poll_interval=0.05,
        )
        beside = await mf.workflow.start("t", "sleep_beside_child", "beside", [0.3], "q")
        after = await mf.workflow.start("t", "sleep_after_abandoned_wait", "after", [0.3], "q")
        assert 0.3 <= await beside.result(timeout=10) < 0.9
        assert 0.35 <= await after.result(timeout=10) < 0.95
    finally:
        await mf.shutdown()


async def slow_step() -> int:
    await asyncio.sleep(0.5)
    return 1


async def step_then_sleep(seconds: float) -> float:
    await workflow.proxy_activities(activities=["slow_step"]).slow_step()
    started = workflow.now()
    await workflow.sleep_for(seconds)
    return (workflow.now() - started).total_seconds()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_draining_worker_leaves_no_grace_on_the_sleeps_it_dispatches(backend: str) -> None:
    """A run that a worker stopping with ``drain=True`` still finishes commits
    a sleep the stopping worker will never arm: its row is the only way it
    fires, and another worker serves the queue, so it fires at the due time
    (it fired ARMED_TIMER_GRACE late: 1.2 s for 0.2 s)."""
    mf = await _open(backend)
    try:
        functions = {"workflows": [step_then_sleep], "activities": [slow_step]}
        first = await mf.worker("q", poll_interval=0.05, **functions)  # type: ignore[arg-type]
        handle = await mf.workflow.start("t", "step_then_sleep", "drained", [0.2], "q")
        await asyncio.sleep(0.2)  # its activity runs on the first worker
        await mf.worker("q", poll_interval=0.05, **functions)  # type: ignore[arg-type]
        await first.stop(drain=True)
        assert first._armed == {}
        assert 0.2 <= await handle.result(timeout=10) < 0.8
        # Started again, it arms its sleeps once more (their rows a grace late).
        await first.start()
        assert first.engine.armed_grace > 0
    finally:
        await mf.shutdown()


async def hog() -> int:
    await asyncio.sleep(2.0)
    return 1


async def hogger() -> int:
    result: int = await workflow.proxy_activities(activities=["hog"]).hog()
    return result


async def nap_timed(seconds: float) -> float:
    started = workflow.now()
    await workflow.sleep_for(seconds)
    return (workflow.now() - started).total_seconds()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_firing_with_no_cached_run_does_not_wait_for_a_slot(backend: str) -> None:
    """With ``max_cached_workflows=0`` an armed timer never resumes a run in
    process, so waiting for a slot of its busy worker only holds back the run
    its answer wakes, which another, idle worker would take at once (the
    sleep took 0.8 s for 0.3 s)."""
    mf = await _open(backend)
    try:
        options = {
            "workflows": [nap_timed, hogger],
            "activities": [hog],
            "concurrency": 1,
            "poll_interval": 0.05,
            "max_cached_workflows": 0,
        }
        busy = await mf.worker("q", **options)  # type: ignore[arg-type]
        nap = await mf.workflow.start("t", "nap_timed", "nap", [0.3], "q")  # eagerly, on busy
        while not busy._armed:
            await asyncio.sleep(0.01)
        await mf.workflow.start("t", "hogger", "hog", [], "q")  # eagerly: holds busy's slot
        await mf.worker("q", **options)  # type: ignore[arg-type]
        assert 0.3 <= await nap.result(timeout=10) < 0.7
    finally:
        await mf.shutdown()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_after_a_crash_a_sleep_resumes_about_a_grace_late_not_a_sticky_wait_more(
    backend: str,
) -> None:
    """A worker that armed its sleeps dies (``stop(drain=False)``: like a
    process killed, nothing handed on). Their rows come due a grace late, and
    another worker fires them; the runs they wake were sticky to the dead
    worker and waited ``sticky_wait`` (2 s) more: 3 s late in all. An armed
    row that another worker fires after the grace says its worker is gone."""
    mf = await _open(backend)
    try:
        doomed = await mf.worker("q", workflows=[nap_timed], poll_interval=0.05)
        naps = [await mf.workflow.start("t", "nap_timed", f"nap-{i}", [0.5], "q") for i in range(3)]
        while len(doomed._armed) < 3:
            await asyncio.sleep(0.01)
        await mf.worker("q", workflows=[nap_timed], poll_interval=0.05)
        await doomed.stop(drain=False)
        for nap in naps:
            assert 0.5 <= await nap.result(timeout=10) < 2.0
            sleeps = [e for e in (await nap.export()).timeline if e.kind == "sleep"]
            assert [e.status for e in sleeps] == ["done"]
    finally:
        await mf.shutdown()
