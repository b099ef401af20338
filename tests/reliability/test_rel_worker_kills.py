"""kill -9 of worker processes at random moments: every workflow still completes, once."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import pytest
from harness import (
    PrivateServer,
    Workers,
    clock,
    diagnose,
    export_checks,
    outcomes,
    patiently,
    report,
    stored_integrity,
)

from hotmesh_core import MemFlow

KINDS = ("slow", "sleep", "signal")


def expected(job: str, kind: str) -> dict[str, Any]:
    middle = {"slow": f"{job}:b", "sleep": "slept", "signal": f"v-{job}"}[kind]
    return {"job": job, "trail": [f"{job}:a", middle], "last": f"{job}:c"}


def activity_keys(job: str, kind: str) -> list[str]:
    return [f"{job}:a", f"{job}:c"] + ([f"{job}:b"] if kind == "slow" else [])


async def send(client: MemFlow, signal_id: str, data: Any) -> None:
    await patiently(lambda: client.workflow.signal(signal_id, data))


async def kill_scenario(
    private_pg: PrivateServer, client: MemFlow, workers: Workers, *, count: int, kills: int
) -> None:
    seed = int(os.environ.get("HOTMESH_RELIABILITY_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    began = time.monotonic()
    # Two workers with a stable id (restarted under it: they take back their
    # leases at once) and one without (its leases must run out first).
    ids: dict[int, str | None] = {}
    for worker_id in ("k0", "k1", None):
        for pid in workers.start(1, worker_id=worker_id):
            ids[pid] = worker_id
    jobs = [(f"job-{i}", KINDS[i % 3]) for i in range(count)]
    handles = [
        await client.workflow.start("order", "mixed", job, [job, kind], workers.queue)
        for job, kind in jobs
    ]
    kill_times: list[str] = []
    for n in range(kills):
        await asyncio.sleep(rng.uniform(0.3, 2.0))
        victim = rng.choice(workers.alive())
        workers.kill(victim)
        kill_times.append(clock())
        if n == 0:  # the signals arrive after the first kill
            for job, kind in jobs:
                if kind == "signal":
                    await send(client, f"go-{job}", {"v": f"v-{job}"})
        for pid in workers.start(1, worker_id=ids[victim]):
            ids[pid] = ids[victim]
    results = await outcomes(handles, timeout=90)
    wall = time.monotonic() - began
    died = workers.dead()
    integrity = stored_integrity(private_pg, client.app_id)
    problems: list[str] = []
    for job, _kind in jobs:
        problems += await export_checks(client, job)
    started, finished = workers.executions()
    keys = [key for job, kind in jobs for key in activity_keys(job, kind)]
    never_ran = [key for key in keys if finished[key] == 0]
    ran_twice = sum(1 for key in keys if started[key] > 1)
    wrong = [
        (job, got)
        for (job, kind), got in zip(jobs, results, strict=True)
        if got != ("completed", expected(job, kind))
    ]
    lost = [job for (job, _), got in zip(jobs, results, strict=True) if got[0] == "timeout"]
    report(
        f"kill -9 of workers: {count} workflows",
        {
            "seed (HOTMESH_RELIABILITY_SEED)": seed,
            "workflows run": count,
            "kills injected (SIGKILL)": f"{workers.kills} at {kill_times} UTC",
            "completed": sum(1 for got in results if got[0] == "completed"),
            "lost (not finished in 90 s)": len(lost),
            "wrong result or failed": len(wrong) - len(lost),
            "activity executions started": sum(started[key] for key in keys),
            "activities ran twice (or more)": ran_twice,
            "activities never finished": len(never_ran),
            "steps recorded twice": integrity["duplicate_steps"],
            "entity version gaps/dups": integrity["entities_with_version_gaps"]
            + integrity["duplicate_entity_versions"],
            "audit problems": len(problems),
            "workers that died on their own": died,
            "wall time (s)": round(wall, 1),
        },
    )
    for job in lost:
        print("  lost:", diagnose(private_pg, client.app_id, job))
    assert not died, workers.stderr()
    assert not wrong, wrong[:10]
    assert integrity == {
        "duplicate_steps": 0,
        "duplicate_entity_versions": 0,
        "entities_with_version_gaps": 0,
        "pending_steps": 0,
    }
    assert not problems, problems[:10]
    assert not never_ran, never_ran[:10]


async def test_a_killed_worker_loses_nothing_quick(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    await kill_scenario(private_pg, client, workers, count=24, kills=1)


@pytest.mark.reliability
async def test_200_workflows_survive_repeated_kill_9(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    await kill_scenario(private_pg, client, workers, count=200, kills=6)
