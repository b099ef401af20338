"""Workers coordinate only through the backend: one claim at a time, leases taken over."""

from __future__ import annotations

import asyncio

import pytest

from conformance.plugin import Harness
from hotmesh_core import workflow
from hotmesh_core.models import Task
from hotmesh_core.worker import Worker

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio

ACTIVE: dict[str, int] = {}
RUNS: dict[str, int] = {}


async def exclusive(key: str) -> int:
    ACTIVE[key] = ACTIVE.get(key, 0) + 1
    RUNS[key] = RUNS.get(key, 0) + 1
    try:
        assert ACTIVE[key] == 1, "two workers ran the same task at once"
        await asyncio.sleep(0.01)
    finally:
        ACTIVE[key] -= 1
    return RUNS[key]


async def uses_exclusive(key: str) -> list[int]:
    acts = workflow.proxy_activities(activities=[exclusive])
    return [await acts.exclusive(f"{key}-a"), await acts.exclusive(f"{key}-b")]


async def test_two_workers_never_run_the_same_task(hm: Harness) -> None:
    mf = await hm.memflow()
    other = await hm.memflow(mf.app_id)
    await mf.worker("q", workflows=[uses_exclusive], activities=[exclusive], concurrency=4)
    await other.worker("q", workflows=[uses_exclusive], activities=[exclusive], concurrency=4)
    handles = [
        await mf.workflow.start("t", "uses_exclusive", f"x{i}", [f"{mf.app_id}-{i}"], "q")
        for i in range(30)
    ]
    results = [await handle.result(timeout=30) for handle in handles]
    assert results == [[1, 1]] * 30


async def slow_once(key: str) -> str:
    RUNS[key] = RUNS.get(key, 0) + 1
    return f"run {RUNS[key]}"


async def uses_slow(key: str) -> str:
    acts = workflow.proxy_activities(activities=[slow_once])
    return await acts.slow_once(key)  # type: ignore[no-any-return]


async def test_a_lost_lease_is_taken_over(hm: Harness) -> None:
    mf = await hm.memflow(virtual_clock="virtual_clock" in hm.capabilities)
    key = f"lease-{mf.app_id}"
    # A worker that serves only the workflow dispatches the activity...
    flow_worker = await mf.worker("q", workflows=[uses_slow])
    handle = await mf.workflow.start("t", "uses_slow", "lease", [key], "q")
    await asyncio.sleep(0.2)
    await flow_worker.stop()
    # ...a worker claims it and dies without acking (a SIGKILL, as the backend sees it)...
    async with mf.backend.transaction() as tx:
        claimed: list[Task] = await tx.stream.claim(
            "q",
            owner="doomed-worker",
            lease=1.0,
            workflow_names=[],
            activity_names=["slow_once"],
            limit=1,
        )
    assert [t.name for t in claimed] == ["slow_once"]
    # ...and a live worker takes the task over once the lease has run out.
    await mf.worker("q", workflows=[uses_slow], activities=[slow_once], lease=1.0)
    await asyncio.sleep(0.1)
    assert RUNS.get(key, 0) == 0  # not before the lease ends
    clock = mf.clock
    if clock is not None and getattr(clock, "virtual", False):
        clock.advance(1.5)
    assert await handle.result(timeout=10) == "run 1"
    (step,) = (await handle.export()).timeline
    assert step.attempts == 2


async def test_stop_drains_work_in_hand(hm: Harness) -> None:
    mf = await hm.memflow()
    key = f"drain-{mf.app_id}"

    async def slow(k: str) -> str:
        await asyncio.sleep(0.3)
        RUNS[k] = RUNS.get(k, 0) + 1
        return "finished"

    async def wf(k: str) -> str:
        acts = workflow.proxy_activities(activities={"slow": slow})
        return await acts.slow(k)  # type: ignore[no-any-return]

    worker = await mf.worker("q", workflows={"wf": wf}, activities={"slow": slow})
    handle = await mf.workflow.start("t", "wf", "d", [key], "q")
    await asyncio.sleep(0.15)
    await worker.stop()
    assert RUNS[key] == 1
    await mf.worker("q", workflows={"wf": wf}, activities={"slow": slow})
    assert await handle.result(timeout=10) == "finished"
    assert RUNS[key] == 1


@pytest.mark.requires("virtual_clock")
async def test_finished_jobs_expire(hm: Harness) -> None:
    mf = await hm.memflow(virtual_clock=True)
    await mf.worker("q", workflows=[uses_slow], activities=[slow_once])
    handle = await mf.workflow.start(
        "t", "uses_slow", "exp", [f"exp-{mf.app_id}"], "q", expire="1 hour"
    )
    await handle.result(timeout=10)
    assert await mf.backend.maintain() == 0  # what every worker runs once a minute
    mf.clock.advance("2 hours")
    assert await mf.backend.maintain() == 1
    assert await mf.workflow.search(entity="t") == []


@pytest.mark.requires("virtual_clock")
async def test_an_inline_activity_that_lost_its_lease_is_recorded_once(hm: Harness) -> None:
    """The dispatching worker runs the activity itself; its lease runs out, another
    worker answers first. The job completes once, with the recorded answer."""
    mf = await hm.memflow(virtual_clock=True)
    started, release = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def slow_on_a() -> str:
        ran.append("a")
        started.set()
        await release.wait()
        return "from a"

    async def quick_on_b() -> str:
        ran.append("b")
        return "from b"

    async def warm() -> str:
        return "warm"

    async def flow() -> str:
        # A job's first steps run under its run's lease, before anything of
        # them commits (no task another worker could take: a lapse runs the
        # run again); a step after a signal is the inline chain's, its task
        # leased to the worker that dispatched it.
        acts = workflow.proxy_activities(activities=["warm", "value"])
        await acts.warm()
        await workflow.wait_for("race-go")
        return await acts.value()  # type: ignore[no-any-return]

    await mf.worker(
        "q", workflows={"flow": flow}, activities={"value": slow_on_a, "warm": warm}, lease=1.0
    )
    handle = await mf.workflow.start("t", "flow", "race", [], "q")
    while await handle.status() != "running":
        await asyncio.sleep(0.01)
    await mf.workflow.signal("race-go", None)
    await asyncio.wait_for(started.wait(), 5)
    await mf.worker("q", activities={"value": quick_on_b}, lease=1.0)
    mf.clock.advance(2.0)  # worker a's lease on the activity runs out
    assert await handle.result(timeout=10) == "from b"
    release.set()  # a's late answer must change nothing
    await asyncio.sleep(0.1)
    assert ran == ["a", "b"]
    (first, _, step) = (await handle.export()).timeline
    assert (first.result, step.result, step.attempts) == ("warm", "from b", 2)
    assert await handle.result(timeout=1) == "from b"


@pytest.mark.requires("virtual_clock")
async def test_a_deferred_step_whose_run_lost_its_lease_runs_again_recorded_once(
    hm: Harness,
) -> None:
    """A job's chain of inline activities runs under its run task's lease, no
    task row for any step; that lease runs out mid-step (the worker stalled),
    the run is replayed from the steps committed and the step runs again. The
    job completes once, with the second run's answer; the late one is dropped."""
    mf = await hm.memflow(virtual_clock=True)
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    async def value() -> str:
        calls.append(len(calls))
        if len(calls) == 1:
            started.set()
            await release.wait()
            return "late"
        return "again"

    async def warm() -> str:
        return "warm"

    async def flow() -> str:
        acts = workflow.proxy_activities(activities=["warm", "value"])
        await acts.warm()
        return await acts.value()  # type: ignore[no-any-return]

    await mf.worker(
        "q", workflows={"flow": flow}, activities={"value": value, "warm": warm}, lease=1.0
    )
    handle = await mf.workflow.start("t", "flow", "stall", [], "q")
    await asyncio.wait_for(started.wait(), 5)
    mf.clock.advance(2.0)  # the run task's lease runs out under the step
    assert await handle.result(timeout=10) == "again"
    release.set()  # the first attempt's late answer must change nothing
    await asyncio.sleep(0.1)
    assert len(calls) == 2
    (first, step) = (await handle.export()).timeline
    assert (first.result, step.result) == ("warm", "again")
    assert await handle.result(timeout=1) == "again"


async def test_an_answer_arriving_during_an_inline_activity_is_not_missed(hm: Harness) -> None:
    mf = await hm.memflow()
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "done"

    async def both() -> list[str]:
        acts = workflow.proxy_activities(activities=["slow"])
        return list(await asyncio.gather(acts.slow(), workflow.wait_for("meanwhile")))

    await mf.worker("q", workflows={"both": both}, activities={"slow": slow})
    handle = await mf.workflow.start("t", "both", "both", [], "q")
    await asyncio.wait_for(started.wait(), 5)
    assert await mf.workflow.signal("meanwhile", "signalled") is True
    await asyncio.sleep(0.2)  # the run the signal woke sees the activity still pending
    release.set()
    assert await handle.result(timeout=10) == ["done", "signalled"]


async def test_a_worker_started_again_under_its_id_takes_its_work_back_at_once(
    hm: Harness,
) -> None:
    """What a worker held when it died is taken back by the next worker with its
    ``worker_id`` without waiting out the lease; any other worker waits."""
    mf = await hm.memflow()
    key = f"stable-{mf.app_id}"
    started = asyncio.Event()

    async def hold(k: str) -> str:
        RUNS[k] = RUNS.get(k, 0) + 1
        if RUNS[k] == 1:
            started.set()
            await asyncio.sleep(3600)  # the worker dies in here
        return f"run {RUNS[k]}"

    async def wf(k: str) -> str:
        acts = workflow.proxy_activities(activities={"hold": hold})
        return await acts.hold(k)  # type: ignore[no-any-return]

    async def worker(name: str) -> Worker:
        return await mf.worker(
            "q", workflows={"wf": wf}, activities={"hold": hold}, lease=600, worker_id=name
        )

    first = await worker("node-1")
    handle = await mf.workflow.start("t", "wf", "s", [key], "q")
    await asyncio.wait_for(started.wait(), 10)
    await first.stop(drain=False)  # like a process killed mid-activity
    await worker("node-2")
    await asyncio.sleep(0.5)
    assert RUNS[key] == 1  # a stranger waits for the 600 s lease
    await worker("node-1")
    assert await handle.result(timeout=10) == "run 2"
