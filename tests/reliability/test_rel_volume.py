"""Volume: thousands of short workflows on three worker processes; wall time and
peak RSS of each worker are printed (never asserted)."""

from __future__ import annotations

import asyncio
import time

import pytest
from harness import PrivateServer, Workers, outcomes, report, stored_integrity

from hotmesh_core import MemFlow, WorkflowHandle


async def volume(private_pg: PrivateServer, client: MemFlow, workers: Workers, count: int) -> None:
    pids = workers.start(3)
    began = time.monotonic()
    gate = asyncio.Semaphore(20)

    async def start(i: int) -> WorkflowHandle:
        async with gate:
            return await client.workflow.start("v", "short", f"v-{i}", [f"v-{i}"], workers.queue)

    handles = await asyncio.gather(*(start(i) for i in range(count)))
    started_in = time.monotonic() - began
    results = await outcomes(handles, timeout=600, limit=100)
    wall = time.monotonic() - began
    workers.stop_all()  # reads each worker's peak RSS (VmHWM) before it exits
    executions, _ = workers.executions()
    integrity = stored_integrity(private_pg, client.app_id)
    wrong = [
        (i, got) for i, got in enumerate(results) if got != ("completed", [f"v-{i}:1", f"v-{i}:2"])
    ]
    per_worker = {}
    for log in workers.log_dir.glob("acts-*.log"):
        per_worker[int(log.stem.split("-")[1])] = len(log.read_text().splitlines()) // 2
    report(
        f"{count} short workflows (2 activities each) on 3 worker processes",
        {
            "workflows run": count,
            "completed": sum(1 for got in results if got[0] == "completed"),
            "wrong, failed or lost": len(wrong),
            "activities ran twice (or more)": sum(1 for n in executions.values() if n > 1),
            "steps recorded twice": integrity["duplicate_steps"],
            "starting them took (s)": round(started_in, 1),
            "wall time, first start to last result (s)": round(wall, 1),
            "workflows/s": round(count / wall, 1),
            "activities run per worker pid": per_worker,
            "peak RSS per worker pid (MiB)": {
                pid: round(workers.peak_rss.get(pid, 0) / 1024, 1) for pid in pids
            },
        },
    )
    assert not wrong, wrong[:5]
    assert integrity["duplicate_steps"] == 0
    assert len(executions) == 2 * count
    assert all(n == 1 for n in executions.values())  # nobody died: nothing ran twice


async def test_500_short_workflows_on_3_processes_quick(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    await volume(private_pg, client, workers, 500)


@pytest.mark.reliability
async def test_5000_short_workflows_on_3_processes(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    await volume(private_pg, client, workers, 5000)
