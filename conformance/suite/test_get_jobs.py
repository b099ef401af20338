"""``Store.get_jobs``: many jobs in one read (the safety poll of waiting results)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import workflow

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio


async def doubler(x: int) -> int:
    return x * 2


async def parked(signal_id: str) -> Any:
    return await workflow.wait_for(signal_id)


async def test_get_jobs_reads_the_jobs_that_exist_each_once(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[doubler, parked])
    done = [await mf.workflow.start("t", "doubler", f"d{i}", [i], "q") for i in range(3)]
    for i, handle in enumerate(done):
        assert await handle.result(timeout=10) == i * 2
    waiting = await mf.workflow.start("t", "parked", "p", ["never"], "q")
    # Compared field by field below, read by two statements: let it settle
    # (a worker moves it from pending to running) before reading it twice.
    for _ in range(500):
        if await waiting.status() == "running":
            break
        await asyncio.sleep(0.01)
    ids = ["d0", "d1", "missing", "d2", "p", "d1"]
    async with mf.backend.transaction(readonly=True) as tx:
        jobs = await tx.store.get_jobs(ids)
        one_by_one = {i: await tx.store.get_job(i) for i in ("d0", "d1", "d2", "p")}
        nothing = await tx.store.get_jobs([])
        none_found = await tx.store.get_jobs(["missing", "also-missing"])
    assert sorted(job.id for job in jobs) == ["d0", "d1", "d2", "p"]  # each once, no missing
    by_id = {job.id: job for job in jobs}
    for job_id, job in one_by_one.items():
        assert by_id[job_id] == job  # the same job get_job reads, every field
    assert by_id["d1"].status == "completed" and by_id["d1"].result == 2
    assert by_id["p"].status not in ("completed", "failed")
    assert nothing == [] and none_found == []
    assert waiting.workflow_id == "p"


async def test_a_job_from_get_jobs_is_the_callers_copy(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.workflow.start("t", "doubler", "c1", [1], "q", search={"tag": {"n": [1]}})
    async with mf.backend.transaction(readonly=True) as tx:
        (job,) = await tx.store.get_jobs(["c1"])
    job.args.append(99)
    job.search["tag"]["n"].append(2)
    job.status = "completed"
    async with mf.backend.transaction(readonly=True) as tx:
        (again,) = await tx.store.get_jobs(["c1"])
    assert again.args == [1]
    assert again.search["tag"] == {"n": [1]}
    assert again.status != "completed"


async def test_get_awaited_job_reads_the_job_and_changes_nothing_seen(hm: Harness) -> None:
    """A ``result()`` that did not start its job reads it with ``get_awaited_job``:
    the job as ``get_job`` reads it, whatever the backend records to announce
    its end; None for an id that does not exist."""
    mf = await hm.memflow()
    await mf.worker("q", workflows=[doubler, parked])
    done = await mf.workflow.start("t", "doubler", "a1", [4], "q")
    assert await done.result(timeout=10) == 8
    waiting = await mf.workflow.start("t", "parked", "a2", ["a2-go"], "q")
    for _ in range(500):
        if await waiting.status() == "running":
            break
        await asyncio.sleep(0.01)
    for job_id in ("a1", "a2"):
        async with mf.backend.transaction() as tx:
            asked = await tx.store.get_awaited_job(job_id)
        async with mf.backend.transaction() as tx:
            again = await tx.store.get_awaited_job(job_id)
        async with mf.backend.transaction(readonly=True) as tx:
            read = await tx.store.get_job(job_id)
        assert asked == again == read
    async with mf.backend.transaction() as tx:
        assert await tx.store.get_awaited_job("missing") is None
    remote = await mf.workflow.get_handle("a2")
    await mf.workflow.signal("a2-go", 5)
    assert await remote.result(timeout=10) == 5
