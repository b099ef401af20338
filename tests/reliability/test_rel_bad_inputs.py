"""Bad inputs, driven as a user would against a private server and a real worker
process: the worker survives them, each job ends with a readable error, and
nothing stored before is lost or corrupted afterwards."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from harness import PrivateServer, Workers, outcome, outcomes, report, stored_integrity

from hotmesh_core import MemFlow

pytestmark = pytest.mark.reliability


async def canaries(client: MemFlow, workers: Workers, tag: str, n: int = 10) -> list[str]:
    """Short workflows that must complete (the worker still serves); their ids."""
    ids = [f"canary-{tag}-{i}" for i in range(n)]
    handles = [await client.workflow.start("c", "short", i, [i], workers.queue) for i in ids]
    results = await outcomes(handles, timeout=60)
    assert results == [("completed", [f"{i}:1", f"{i}:2"]) for i in ids], results
    return ids


async def still_intact(
    private_pg: PrivateServer, client: MemFlow, workers: Workers, before: list[str]
) -> dict[str, Any]:
    """What was stored before the bad input is unchanged; new work still completes."""
    for job in before:
        handle = await client.workflow.get_handle(job)
        assert await handle.status() == "completed"
        assert await handle.result(timeout=5) == [f"{job}:1", f"{job}:2"]
    after = await canaries(client, workers, "after")
    integrity = stored_integrity(private_pg, client.app_id)
    assert integrity["duplicate_steps"] == 0
    assert integrity["entities_with_version_gaps"] == 0
    assert not workers.dead(), f"a worker process died: {workers.dead()}\n{workers.stderr()}"
    return {"canaries before/after": f"{len(before)}/{len(after)} completed", **integrity}


async def test_a_workflow_raising_system_exit_or_keyboard_interrupt(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    workers.start(1)
    before = await canaries(client, workers, "before")
    handles = [
        await client.workflow.start("bad", name, name, [name], workers.queue)
        for name in ("wf_system_exit", "wf_keyboard_interrupt")
    ]
    results = await outcomes(handles, timeout=60)
    alive = workers.alive()
    report(
        "a workflow raising SystemExit / KeyboardInterrupt",
        {
            "outcomes": results,
            "worker processes alive": len(alive),
            "worker exits": workers.dead(),
        },
    )
    assert workers.dead() == [], workers.stderr()
    figures = await still_intact(private_pg, client, workers, before)
    print("  ", figures)
    assert [status for status, _ in results] == ["failed", "failed"]
    assert results[0][1].startswith("SystemExit")
    assert results[1][1].startswith("KeyboardInterrupt")


async def test_an_activity_raising_system_exit(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    workers.start(1)
    before = await canaries(client, workers, "before")
    handle = await client.workflow.start(
        "bad", "calls_raising", "sysexit", ["sysexit", "act_system_exit", 2], workers.queue
    )
    caught = await client.workflow.start(
        "bad",
        "calls",
        "sysexit-caught",
        ["sysexit-caught", "act_system_exit", 2, 10],
        workers.queue,
    )
    result = await outcome(handle, timeout=60)
    result_caught = await outcome(caught, timeout=60)
    started, _ = workers.executions()
    report(
        "an activity raising SystemExit (2 attempts)",
        {
            "outcome": result,
            "outcome when the workflow catches ActivityFailed": result_caught,
            "executions (each job)": (started["sysexit"], started["sysexit-caught"]),
            "worker exits": workers.dead(),
        },
    )
    assert workers.dead() == [], workers.stderr()
    await still_intact(private_pg, client, workers, before)
    assert result[0] == "failed"  # after its 2 attempts
    assert "SystemExit" in str(result[1])
    assert result_caught[0] == "completed"
    assert str(result_caught[1]).startswith("ActivityFailed SystemExit")
    assert started["sysexit"] == 2
    assert started["sysexit-caught"] == 2


async def test_sync_activities_that_never_return_do_not_starve_the_others(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    workers.concurrency = 80
    workers.start(1)
    before = await canaries(client, workers, "before")
    stuck = [
        await client.workflow.start(
            "bad", "calls", f"hang-{i}", [f"hang-{i}", "hang", 1, 1.0], workers.queue
        )
        for i in range(40)
    ]
    hung = await outcomes(stuck, timeout=60)
    began = time.monotonic()
    fine = [
        await client.workflow.start(
            "ok", "calls", f"sync-{i}", [f"sync-{i}", "sync_note", 1, 10], workers.queue
        )
        for i in range(10)
    ]
    served = await outcomes(fine, timeout=60)
    took = time.monotonic() - began
    report(
        "40 sync activities that never return (start_to_close 1 s), then 10 more",
        {
            "stuck ones": sorted({f"{s}: {str(r)[:60]}" for s, r in hung}),
            "later sync activities": sorted({f"{s}: {str(r)[:60]}" for s, r in served}),
            "later ones took (s)": round(took, 1),
        },
    )
    assert all(
        status == "completed" and str(text).startswith("ActivityFailed TimeoutError")
        for status, text in hung
    ), hung[:3]
    assert served == [("completed", f"sync-{i}") for i in range(10)], served[:3]
    await still_intact(private_pg, client, workers, before)


@pytest.mark.parametrize("where", ["workflow", "activity"])
@pytest.mark.parametrize("what", ["nul", "unprintable"])
async def test_an_exception_that_cannot_be_stored_as_is(
    private_pg: PrivateServer, client: MemFlow, workers: Workers, where: str, what: str
) -> None:
    workers.start(1)
    before = await canaries(client, workers, "before")
    job = f"{what}-{where}"
    if where == "workflow":
        handle = await client.workflow.start("bad", f"wf_{what}", job, [job], workers.queue)
    else:
        handle = await client.workflow.start(
            "bad", "calls_raising", job, [job, f"act_{what}"], workers.queue
        )
    began = time.monotonic()
    status, error = await outcome(handle, timeout=90)
    took = time.monotonic() - began
    dead = await client.workflow.dead_letters(job)
    report(
        f"an exception ({what}) raised by a {where}",
        {
            "status": status,
            "error": repr(error)[:200],
            "dead letters": [(d.task.kind, d.error.type_name) for d in dead],
            "took (s)": round(took, 1),
        },
    )
    await still_intact(private_pg, client, workers, before)
    assert status == "failed"
    assert not dead, "the job was dead-lettered instead of failing with its own error"
    name = "ValueError" if what == "nul" else "Unprintable"
    assert name in error
    if what == "nul":
        assert "message with a NUL" in error


async def test_a_name_no_worker_serves(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    workers.start(1)
    before = await canaries(client, workers, "before")
    nobody = await client.workflow.start("bad", "nobody_serves_this", "ghost-wf", [], workers.queue)
    ghost_act = await client.workflow.start(
        "bad", "calls", "ghost-act", ["ghost-act", "ghost_activity", 1, 5], workers.queue
    )
    # A worker's maintenance pass runs each minute: give it two chances to say so.
    began = time.monotonic()
    while time.monotonic() - began < 130:
        said = workers.stderr()
        if "nobody_serves_this" in said and "ghost_activity" in said:
            break
        await asyncio.sleep(1)
    waited = time.monotonic() - began
    statuses = {"ghost-wf": await nobody.status(), "ghost-act": await ghost_act.status()}
    audit = await ghost_act.export()
    said = workers.stderr()
    report(
        f"a workflow / activity name no worker serves (after {waited:.0f} s)",
        {
            "job statuses": statuses,
            "ghost-act steps": [(e.kind, e.name, e.status) for e in audit.timeline],
            "worker log mentions nobody_serves_this": "nobody_serves_this" in said,
            "worker log mentions ghost_activity": "ghost_activity" in said,
            "worker log lines about them": [
                line[:160]
                for line in said.splitlines()
                if "nobody_serves_this" in line or "ghost_activity" in line
            ],
        },
    )
    await still_intact(private_pg, client, workers, before)
    # Nothing is lost: both jobs are kept, waiting for a worker that serves them.
    assert statuses["ghost-wf"] in {"pending", "running"}
    assert statuses["ghost-act"] in {"pending", "running"}
    # ... and someone says so: a log line or a visible status.
    assert "nobody_serves_this" in said or statuses["ghost-wf"] not in {"pending", "running"}
    assert "ghost_activity" in said or statuses["ghost-act"] not in {"pending", "running"}
