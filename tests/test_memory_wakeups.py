"""The memory backend wakes only who a commit concerns, and never lets a caller
alias what it stores.

A commit wakes the ``result()`` callers of the jobs it notified and the
workers of the queues it touched; one event for everybody made every commit
wake every waiting ``result()``, which then re-read its job (O(N^2) reads).
Every record and JSON value that goes in or comes out is a copy where a caller
could mutate it: mutating what you passed or got never changes what is stored.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hotmesh_core import MemFlow, VirtualClock, workflow
from hotmesh_core.models import EntityOp, ErrorInfo, Job, Step, Task, Waiter, WorkerPresence
from hotmesh_memory.store import MemoryStore
from hotmesh_memory.stream import MemoryStream

pytestmark = pytest.mark.asyncio


async def waits(signal_id: str) -> Any:
    return await workflow.wait_for(signal_id)


async def quick(x: int) -> int:
    return x + 1


async def naps(seconds: float) -> str:
    await workflow.sleep_for(seconds)
    return "rested"


@pytest.fixture
async def mf() -> AsyncIterator[MemFlow]:
    flow = await MemFlow.init(app_id=f"wake{uuid.uuid4().hex[:8]}", backend="memory")
    try:
        yield flow
    finally:
        await flow.shutdown()


@pytest.fixture
def job_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each job was read with ``Store.get_job``."""
    reads: Counter[str] = Counter()
    original = MemoryStore.get_job

    async def counting(self: MemoryStore, job_id: str) -> Job | None:
        reads[job_id] += 1
        return await original(self, job_id)

    monkeypatch.setattr(MemoryStore, "get_job", counting)
    return reads


async def until(predicate: Any, what: str) -> None:
    for _ in range(500):
        if await predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_a_waiting_result_is_not_woken_by_other_jobs(
    mf: MemFlow, job_reads: Counter[str]
) -> None:
    await mf.worker("q", workflows=[waits, quick])
    waiting = [await mf.workflow.start("t", "waits", f"w{i}", [f"go{i}"], "q") for i in range(5)]
    for handle in waiting:
        await until(lambda h=handle: _is_waiting(h), f"{handle} waits")
    job_reads.clear()
    results = [asyncio.ensure_future(h.result(timeout=30)) for h in waiting]
    await until(lambda: _read_all(job_reads, waiting), "every result() read its job once")
    job_reads.clear()

    # Thirty other workflows start, run and finish: many commits, none about the five.
    others = [await mf.workflow.start("t", "quick", f"o{i}", [i], "q") for i in range(30)]
    assert [await h.result(timeout=30) for h in others] == [i + 1 for i in range(30)]
    assert sum(job_reads[h.workflow_id] for h in waiting) == 0

    for i in range(5):
        assert await mf.workflow.signal(f"go{i}", i) is True
    assert await asyncio.gather(*results) == list(range(5))


async def _is_waiting(handle: Any) -> bool:
    export = await handle.export()
    return any(e.kind == "wait" and e.status == "pending" for e in export.timeline)


async def _read_all(reads: Counter[str], handles: list[Any]) -> bool:
    return all(reads[h.workflow_id] >= 1 for h in handles)


async def test_an_idle_worker_is_not_woken_by_another_queue(
    mf: MemFlow, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims: Counter[str] = Counter()
    original = MemoryStream.claim

    async def counting(self: MemoryStream, queue: str, **options: Any) -> list[Task]:
        claims[queue] += 1
        return await original(self, queue, **options)

    monkeypatch.setattr(MemoryStream, "claim", counting)
    await mf.worker("idle", workflows=[quick], poll_interval=60)
    await mf.worker("busy", workflows=[quick])
    await until(lambda: _claimed(claims, "idle"), "the idle worker's first claim")
    before = claims["idle"]
    handles = [await mf.workflow.start("t", "quick", f"b{i}", [i], "busy") for i in range(20)]
    assert [await h.result(timeout=30) for h in handles] == [i + 1 for i in range(20)]
    assert claims["idle"] == before  # asleep: nothing it serves was committed

    # Work on its own queue wakes it at once, not after its 60 s poll.
    handle = await mf.workflow.start("t", "quick", "mine", [41], "idle")
    assert await handle.result(timeout=10) == 42


async def _claimed(claims: Counter[str], queue: str) -> bool:
    return claims[queue] >= 1


async def test_a_delayed_task_wakes_its_worker_when_due(mf: MemFlow) -> None:
    # The worker polls once a minute: only its wait for the sleep's due time
    # makes the workflow finish well within the result's timeout.
    await mf.worker("q", workflows=[naps], poll_interval=60)
    handle = await mf.workflow.start("t", "naps", "nap", [0.3], "q")
    assert await handle.result(timeout=20) == "rested"


async def test_moving_the_virtual_clock_wakes_the_workers() -> None:
    clock = VirtualClock(auto_skip=False)
    async with MemFlow.init(
        app_id=f"wake{uuid.uuid4().hex[:8]}", backend="memory", clock=clock
    ) as mf:
        await mf.worker("q", workflows=[naps], poll_interval=60)
        handle = await mf.workflow.start("t", "naps", "nap", [3600], "q")

        async def sleeping() -> bool:
            export = await handle.export()
            return any(e.kind == "sleep" for e in export.timeline)

        await until(sleeping, "the workflow sleeps")
        clock.advance(3600)
        assert await handle.result(timeout=20) == "rested"


# -- isolation: nothing handed in or out aliases what is stored ----------------


async def test_mutating_what_went_in_or_came_out_never_changes_what_is_stored(
    mf: MemFlow,
) -> None:
    backend: Any = mf.backend
    job = Job(
        id="iso",
        entity="t",
        workflow_name="w",
        task_queue="q",
        args=[{"a": [1, 2]}],
        context={"doc": {"list": [1, {"deep": "x"}]}},
        search={"s": {"t": [1]}},
    )
    step = Step(job_id="iso", dimension="", index=0, kind="activity", name="a", args=[{"k": [1]}])
    task = Task(queue="q", kind="activity", job_id="iso", dimension="", name="a", index=0)
    task.payload = {"args": [{"k": [1]}]}
    presence = WorkerPresence(worker_id="w1", queue="q", workflows=["w"], activities=["a"])
    waiter = Waiter(signal_id="sig", job_id="iso", dimension="", index=1)
    async with backend.transaction() as tx:
        created, _ = await tx.store.create_job(job)
        await tx.store.insert_step(step)
        await tx.stream.enqueue(task)
        await tx.store.announce_worker(presence)
        await tx.signal.add_waiter(waiter)
        await tx.signal.buffer("early", {"data": [1]}, expire=60)
        op = EntityOp(op="set_if_not_exists", path="doc.extra", value={"v": [1]})
        await tx.store.apply_entity("iso", op, dimension=None, index=None)

    # What went in, mutated after the call.
    job.args[0]["a"].append(3)
    job.context["doc"]["list"][1]["deep"] = "changed"
    job.search["s"]["t"].append(2)
    step.args[0]["k"].append(2)
    task.payload["args"][0]["k"].append(2)
    presence.workflows.append("other")
    waiter.index = 99
    op.value["v"].append(2)
    # What came out, mutated.
    created.args[0]["a"].append(4)
    created.status = "completed"

    async with backend.transaction() as tx:
        got = await tx.store.get_job("iso")
        many = await tx.store.get_jobs(["iso"])
        steps = await tx.store.load_steps("iso", "")
        changes = await tx.store.entity_changes("iso")
        workers = await tx.store.workers("q", seen_within=60)
        claimed = await tx.stream.claim(
            "q", owner="me", lease=30, workflow_names=[], activity_names=["a"], limit=10
        )
    for item in (got, many[0]):
        assert item.args == [{"a": [1, 2]}]
        assert item.status == "pending"
        assert item.context["doc"] == {"list": [1, {"deep": "x"}], "extra": {"v": [1]}}
        assert item.search == {"s": {"t": [1]}}
    assert steps[0].args == [{"k": [1]}]
    assert changes[0].value == {"v": [1]}
    assert workers[0].workflows == ["w"]
    assert claimed[0].payload == {"args": [{"k": [1]}]}

    # Mutate every read, deeply, then read again.
    got.context["doc"]["list"].append("x")
    got.search["s"]["t"].clear()
    many[0].args.clear()
    steps[0].args[0]["k"].clear()
    changes[0].value["v"].clear()
    workers[0].workflows.clear()
    claimed[0].payload["args"].clear()
    async with backend.transaction() as tx:
        again = await tx.store.get_job("iso")
        assert again is not None
        assert again.args == [{"a": [1, 2]}]
        assert again.context["doc"] == {"list": [1, {"deep": "x"}], "extra": {"v": [1]}}
        assert again.search == {"s": {"t": [1]}}
        assert (await tx.store.load_steps("iso", ""))[0].args == [{"k": [1]}]
        assert (await tx.store.entity_changes("iso"))[0].value == {"v": [1]}
        assert (await tx.store.workers("q", seen_within=60))[0].workflows == ["w"]
        taken = await tx.signal.take_waiter("sig")
        assert taken is not None and taken.index == 1
        found, data = await tx.signal.take_buffered("early")
        assert found and data == {"data": [1]}
        data["data"].append(2)
        await tx.stream.dead_letter(claimed[0].id, ErrorInfo("E", "m"))
    async with backend.transaction() as tx:
        letters = await tx.stream.dead_letters(job_id="iso")
        letters[0].task.payload["args"].append("x")
        assert (await tx.stream.dead_letters(job_id="iso"))[0].task.payload == {
            "args": [{"k": [1]}]
        }

    # A result: what set_job_status stored is not the caller's value.
    result = {"r": [1]}
    async with backend.transaction() as tx:
        finished = await tx.store.set_job_status("iso", "completed", result=result)
    assert finished is not None
    result["r"].append(2)
    finished.result["r"].append(3)
    async with backend.transaction() as tx:
        final = await tx.store.get_job("iso")
    assert final is not None and final.result == {"r": [1]}
