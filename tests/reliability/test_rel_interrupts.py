"""Interrupting jobs whose activities are running on worker processes: nothing of
an interrupted job runs afterwards, and the other jobs are not disturbed."""

from __future__ import annotations

import asyncio
import time

import pytest
from harness import PrivateServer, Workers, outcomes, report, stored_integrity

from hotmesh_core import MemFlow

STEPS, SECONDS = 2, 4.0


async def interrupts(
    private_pg: PrivateServer, client: MemFlow, workers: Workers, count: int, kill: bool
) -> None:
    workers.start(2)
    jobs = [f"loop-{i}" for i in range(count)]
    handles = [
        await client.workflow.start("l", "slow_loop", job, [job, STEPS, SECONDS], workers.queue)
        for job in jobs
    ]
    await asyncio.sleep(SECONDS * 1.25)  # every job is 1 s into its second slow activity
    stopped = jobs[::2]
    if kill:  # a worker dies too: its leases run out while the jobs are interrupted
        workers.kill(workers.alive()[0])
        workers.start(1)
    at = time.time()
    for job in stopped:
        assert await (await client.workflow.get_handle(job)).interrupt("test") is True
    versions = {
        job: (await (await client.workflow.get_handle(job)).export()).version for job in stopped
    }
    results = await outcomes(handles, timeout=90)
    await asyncio.sleep(SECONDS + 1)  # anything still running would have finished now
    started, finished = workers.timed_executions()
    late_starts = [
        k
        for k, times in started.items()
        if k.rsplit(":", 1)[0] in stopped and any(t > at + 0.5 for t in times)
    ]
    late_ends = [
        k
        for k, times in finished.items()
        if k.rsplit(":", 1)[0] in stopped and any(t > at + workers.lease / 3 + 1.0 for t in times)
    ]
    changed = [
        job
        for job in stopped
        if (await (await client.workflow.get_handle(job)).export()).version != versions[job]
    ]
    left = private_pg.query(
        client.app_id, "SELECT count(*) FROM tasks WHERE job_id = ANY(%s)", [stopped]
    )[0][0]
    expected = [("interrupted", "test") if job in stopped else ("completed", STEPS) for job in jobs]
    got = [(s, "test" if s == "interrupted" and "test" in str(r) else r) for s, r in results]
    integrity = stored_integrity(private_pg, client.app_id)
    report(
        f"interrupting {len(stopped)} of {count} jobs mid-activity"
        + (" with a kill" if kill else ""),
        {
            "outcomes": {s: sum(1 for o, _ in got if o == s) for s in {o for o, _ in got}},
            "activities of interrupted jobs started after the interrupt": len(late_starts),
            "... finished 2 s after it (not abandoned)": len(late_ends),
            "interrupted entities changed afterwards": len(changed),
            "tasks left for interrupted jobs": left,
            "steps recorded twice": integrity["duplicate_steps"],
            "kills injected": workers.kills,
        },
    )
    assert got == expected, [(j, g) for j, g, e in zip(jobs, got, expected, strict=True) if g != e]
    assert not late_starts, late_starts[:5]
    assert not late_ends, late_ends[:5]
    assert not changed, changed[:5]
    assert left == 0
    assert integrity["duplicate_steps"] == 0
    assert not workers.dead(), workers.stderr()


async def test_interrupted_jobs_stop_running(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    await interrupts(private_pg, client, workers, 20, kill=False)


@pytest.mark.reliability
async def test_interrupted_jobs_stop_running_across_a_kill(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    await interrupts(private_pg, client, workers, 60, kill=True)
