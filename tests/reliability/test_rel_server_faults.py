"""The server goes away under running work: restarts (fast and immediate) and
``pg_terminate_backend`` of every connection of the app. Nothing may fail or be lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from harness import (
    PrivateServer,
    Workers,
    clock,
    diagnose,
    diagnose_entity,
    export_checks,
    outcomes,
    report,
    stored_integrity,
)

from hotmesh_core import MemFlow

ROUNDS = 6
LEASE = 60.0


def expected(job: str) -> dict[str, Any]:
    return {
        "job": job,
        "n": ROUNDS,
        "seen": [f"{job}:{i}" for i in range(ROUNDS)],
        "last": ROUNDS - 1,
    }


async def fault_scenario(
    title: str,
    private_pg: PrivateServer,
    client: MemFlow,
    workers: Workers,
    *,
    count: int,
    faults: list[Callable[[], Awaitable[Any]]],
    pause: float,
) -> None:
    # A long lease: work held up until a lease runs out shows as a stall.
    workers.lease = LEASE
    began = time.monotonic()
    workers.start(2)
    jobs = [f"w-{i}" for i in range(count)]
    handles = [
        await client.workflow.start("acct", "entity_heavy", job, [job, ROUNDS], workers.queue)
        for job in jobs
    ]
    injected = []
    for fault in faults:
        await asyncio.sleep(pause)
        injected.append(f"{clock()} {await fault()}")
    results = await outcomes(handles, timeout=90)
    wall = time.monotonic() - began
    integrity = stored_integrity(private_pg, client.app_id)
    problems: list[str] = []
    for job in jobs:
        problems += await export_checks(client, job)
    started, finished = workers.executions()
    keys = [f"{job}:{i}" for job in jobs for i in range(ROUNDS)]
    failed = [(job, got) for job, got in zip(jobs, results, strict=True) if got[0] == "failed"]
    lost = [job for job, got in zip(jobs, results, strict=True) if got[0] == "timeout"]
    wrong = [
        (job, got)
        for job, got in zip(jobs, results, strict=True)
        if got != ("completed", expected(job))
    ]
    died = workers.dead()
    report(
        title,
        {
            "workflows run": count,
            "faults injected": injected,
            "completed": sum(1 for got in results if got[0] == "completed"),
            "failed": len(failed),
            "lost (not finished in 90 s)": len(lost),
            "wrong result": len(wrong) - len(failed) - len(lost),
            "activities ran twice (or more)": sum(1 for key in keys if started[key] > 1),
            "activities never finished": sum(1 for key in keys if finished[key] == 0),
            "steps recorded twice": integrity["duplicate_steps"],
            "entity version gaps/dups": integrity["entities_with_version_gaps"]
            + integrity["duplicate_entity_versions"],
            "audit problems": len(problems),
            "workers that died on their own": died,
            "wall time (s)": f"{wall:.1f} (lease {LEASE:.0f} s)",
        },
    )
    for job, _got in failed[:3]:
        print("  failed:", diagnose(private_pg, client.app_id, job))
    for job in lost[:3]:
        print("  lost:", diagnose(private_pg, client.app_id, job))
    for job, got in wrong[:3]:
        if got[0] == "completed":
            print("  wrong:", got[1], "\n", diagnose_entity(private_pg, client.app_id, job))
    assert not died, workers.stderr()
    assert not failed, failed[:5]
    assert not wrong, wrong[:5]
    assert integrity["duplicate_steps"] == 0
    assert integrity["duplicate_entity_versions"] == 0
    assert integrity["entities_with_version_gaps"] == 0
    assert not problems, problems[:10]
    assert all(finished[key] >= 1 for key in keys)
    assert wall < LEASE * 0.75, f"a {LEASE:.0f} s lease was waited out: {wall:.1f} s"


def restart(private_pg: PrivateServer, mode: str) -> Callable[[], Awaitable[str]]:
    async def fault() -> str:
        await asyncio.to_thread(private_pg.restart, mode)
        return f"restart -m {mode}"

    return fault


def cut(private_pg: PrivateServer, app_id: str) -> Callable[[], Awaitable[str]]:
    async def fault() -> str:
        return f"{await asyncio.to_thread(private_pg.terminate_app, app_id)} cut"

    return fault


async def test_cut_connections_fail_nothing_quick(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    await fault_scenario(
        "pg_terminate_backend (quick)",
        private_pg,
        client,
        workers,
        count=20,
        faults=[cut(private_pg, client.app_id)] * 2,
        pause=0.5,
    )


@pytest.mark.reliability
async def test_server_restarts_fast_and_immediate_lose_nothing(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    await fault_scenario(
        "server restarts mid-run",
        private_pg,
        client,
        workers,
        count=100,
        faults=[restart(private_pg, "fast"), restart(private_pg, "immediate")] * 2,
        pause=1.5,
    )


@pytest.mark.reliability
async def test_every_connection_cut_repeatedly_fails_nothing(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    await fault_scenario(
        "pg_terminate_backend of every app connection, repeatedly",
        private_pg,
        client,
        workers,
        count=100,
        faults=[cut(private_pg, client.app_id)] * 8,
        pause=0.6,
    )
