"""Workers announce what they serve; a job whose work nobody serves says so."""

from __future__ import annotations

import asyncio

import pytest

from conformance.plugin import Harness
from hotmesh_core import workflow
from hotmesh_core.models import WorkerPresence
from hotmesh_core.presence import waiting_reasons

pytestmark = pytest.mark.asyncio


async def pay(amount: int) -> int:
    return amount


async def billing(amount: int) -> int:
    acts = workflow.proxy_activities(activities=[pay])
    result: int = await acts.pay(amount)
    return result


async def shipping() -> None:
    await workflow.sleep_for("1 hour")


async def test_announcements_are_kept_refreshed_and_removed(hm: Harness) -> None:
    mf = await hm.memflow()
    async with mf.backend.transaction() as tx:
        await tx.store.announce_worker(WorkerPresence("w-b", "q", ["billing"], ["pay"]))
        await tx.store.announce_worker(WorkerPresence("w-a", "q", ["shipping"], []))
        await tx.store.announce_worker(WorkerPresence("w-c", "other", ["x"], []))
    async with mf.backend.transaction(readonly=True) as tx:
        seen = await tx.store.workers("q", seen_within=60)
    assert [(w.worker_id, w.workflows, w.activities) for w in seen] == [
        ("w-a", ["shipping"], []),
        ("w-b", ["billing"], ["pay"]),
    ]
    assert all(abs(w.last_seen - mf.backend.now()) < 30 for w in seen)
    async with mf.backend.transaction() as tx:  # announcing again replaces
        await tx.store.announce_worker(WorkerPresence("w-a", "q", ["shipping", "x"], ["y"]))
        await tx.store.remove_worker("q", "w-b")
    async with mf.backend.transaction(readonly=True) as tx:
        seen = await tx.store.workers("q", seen_within=60)
    assert [(w.worker_id, w.workflows, w.activities) for w in seen] == [
        ("w-a", ["shipping", "x"], ["y"])
    ]
    await asyncio.sleep(0.05)
    async with mf.backend.transaction(readonly=True) as tx:
        assert await tx.store.workers("q", seen_within=0.01) == []  # not heard from since


async def test_memflow_workers_announce_themselves(hm: Harness) -> None:
    mf = await hm.memflow()
    worker = await mf.worker("q", workflows=[billing], activities=[pay])
    async with mf.backend.transaction(readonly=True) as tx:
        (seen,) = await tx.store.workers("q", seen_within=60)
    assert (seen.worker_id, seen.workflows, seen.activities) == (worker.id, ["billing"], ["pay"])


async def test_a_waiting_job_names_what_no_worker_serves(hm: Harness) -> None:
    mf = await hm.memflow()
    worker = await mf.worker("q", workflows=[billing], activities=[pay])
    handle = await mf.workflow.start("order", "shipping", "o-1", [], "q")  # not served here
    await asyncio.sleep(0.05)
    (reason,) = await waiting_reasons(mf.backend, await handle.export())
    assert reason.startswith(
        "no worker has registered workflow 'shipping' on queue 'q' in the last 30 s"
    )
    assert f"workers seen: {worker.id}" in reason
    served = await mf.workflow.start("order", "billing", "o-2", [5], "q")
    assert await served.result(timeout=10) == 5
    assert await waiting_reasons(mf.backend, await served.export()) == []
    lonely = await mf.workflow.start("order", "billing", "o-3", [5], "nobody-here")
    (reason,) = await waiting_reasons(mf.backend, await lonely.export())
    assert "workflow 'billing' on queue 'nobody-here'" in reason
    assert "no worker at all was seen on it" in reason
