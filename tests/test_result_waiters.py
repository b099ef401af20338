"""Waiting ``result()`` calls share one safety poll per backend.

When wake-ups are lost, a waiting handle still returns: the backend's poller
reads the jobs of every waiting handle in one ``Store.get_jobs`` per interval
and wakes those whose job finished. Before, each handle re-read its own job
every second (2,000 waiting handles: 2,000 reads a second). A handle that is
cancelled or times out leaves the poll.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_core.codec import AesGcmCodec
from hotmesh_core.models import Job
from hotmesh_core.result_waiters import poller_for
from hotmesh_memory.backend import _MemoryWatch
from hotmesh_memory.store import MemoryStore

pytestmark = pytest.mark.asyncio


async def parked(signal_id: str) -> Any:
    return await workflow.wait_for(signal_id)


class Reads:
    def __init__(self) -> None:
        self.one: Counter[str] = Counter()  # get_job, by job id
        self.batches: list[list[str]] = []  # get_jobs, the ids of each call


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    counted = Reads()
    get_job, get_jobs = MemoryStore.get_job, MemoryStore.get_jobs

    async def one(self: MemoryStore, job_id: str) -> Job | None:
        counted.one[job_id] += 1
        return await get_job(self, job_id)

    async def many(self: MemoryStore, job_ids: Sequence[str]) -> list[Job]:
        counted.batches.append(list(job_ids))
        return await get_jobs(self, job_ids)

    monkeypatch.setattr(MemoryStore, "get_job", one)
    monkeypatch.setattr(MemoryStore, "get_jobs", many)
    return counted


@pytest.fixture
def lost_wakeups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every wake-up of a waiting result() is lost: it only ever times out."""

    async def never_woken(self: _MemoryWatch, timeout: float) -> None:
        await asyncio.sleep(timeout)

    monkeypatch.setattr(_MemoryWatch, "wait", never_woken)


@pytest.fixture
async def mf() -> AsyncIterator[MemFlow]:
    flow = await MemFlow.init(app_id=f"rw{uuid.uuid4().hex[:8]}", backend="memory")
    try:
        yield flow
    finally:
        await flow.shutdown()


async def until_waiting(mf: MemFlow, count: int) -> None:
    for _ in range(500):
        runs = await mf.workflow.list_runs(status="running", limit=count + 1)
        if len(runs) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the workflows never started waiting")


@pytest.mark.usefixtures("lost_wakeups")
async def test_lost_wakeups_are_caught_by_one_batched_poll(mf: MemFlow, reads: Reads) -> None:
    await mf.worker("q", workflows=[parked])
    handles = [await mf.workflow.start("t", "parked", f"p{i}", [f"go{i}"], "q") for i in range(40)]
    await until_waiting(mf, 40)
    reads.one.clear()
    results = [asyncio.ensure_future(h.result(timeout=30)) for h in handles]
    # Past the first wait of each handle: now they wait on the poller.
    while len(poller_for(mf.backend)) < 40:
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.5)  # two polls or more
    # Each handle read its job twice by itself (at first, after its first
    # wait); every later look was one read for all of them.
    assert {h.workflow_id: reads.one[h.workflow_id] for h in handles} == {
        h.workflow_id: 2 for h in handles
    }
    assert len(reads.batches) >= 2
    assert all(sorted(batch) == sorted(h.workflow_id for h in handles) for batch in reads.batches)

    for i in range(40):
        assert await mf.workflow.signal(f"go{i}", i) is True
    assert await asyncio.gather(*results) == list(range(40))  # found by the poll
    assert len(poller_for(mf.backend)) == 0


@pytest.mark.usefixtures("lost_wakeups")
async def test_a_handle_cancelled_or_timing_out_leaves_the_poll(mf: MemFlow) -> None:
    await mf.worker("q", workflows=[parked])
    one = await mf.workflow.start("t", "parked", "a", ["go-a"], "q")
    two = await mf.workflow.start("t", "parked", "b", ["go-b"], "q")
    await until_waiting(mf, 2)
    poller = poller_for(mf.backend)
    cancelled = asyncio.ensure_future(one.result())
    with pytest.raises(TimeoutError):
        await two.result(timeout=1.5)  # past its first wait: it was in the poll
    assert len(poller) == 1  # only the other one
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert len(poller) == 0
    assert await one.status() == "running"  # cancelling the wait left the job alone


async def test_a_wakeup_still_returns_without_waiting_for_the_poll(mf: MemFlow) -> None:
    await mf.worker("q", workflows=[parked])
    handle = await mf.workflow.start("t", "parked", "w", ["go"], "q")
    await until_waiting(mf, 1)
    waiting = asyncio.ensure_future(handle.result(timeout=30))
    while len(poller_for(mf.backend)) < 1:
        await asyncio.sleep(0.05)
    polls = poller_for(mf.backend).polls
    assert await mf.workflow.signal("go", "done") is True
    assert await waiting == "done"
    assert poller_for(mf.backend).polls <= polls + 1  # woken, not found by the poll


@pytest.mark.usefixtures("lost_wakeups")
async def test_the_poll_reads_through_the_codec() -> None:
    codec = AesGcmCodec({"k1": AesGcmCodec.new_key()})
    async with MemFlow.init(
        app_id=f"rw{uuid.uuid4().hex[:8]}", backend="memory", codec=codec
    ) as mf:
        await mf.worker("q", workflows=[parked])
        handle = await mf.workflow.start("t", "parked", "c", ["go"], "q")
        await until_waiting(mf, 1)
        waiting = asyncio.ensure_future(handle.result(timeout=30))
        while len(poller_for(mf.backend)) < 1:
            await asyncio.sleep(0.05)
        assert await mf.workflow.signal("go", {"secret": [1, 2]}) is True
        assert await waiting == {"secret": [1, 2]}
