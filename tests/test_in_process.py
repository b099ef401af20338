"""The in-process shortcuts (hotmesh_core/in_process.py) change how fast work
moves, never what is stored or who may take it: an eager start, a signal
handed to the worker that caches its run, a sleep's armed timer resuming the
cached run, and a result() answered by the commit that completed the job.
Each is checked for what a user sees, and for what happens when the worker
that took the shortcut dies before its commit."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_core.plugins import backend_test_options

BACKENDS = ["memory", "postgres"]

RUNNING: dict[str, int] = {"now": 0, "most": 0, "calls": 0}
GATE: dict[str, asyncio.Event] = {}


async def held(key: str) -> str:
    """An activity that runs until its test lets it go."""
    RUNNING["calls"] += 1
    RUNNING["now"] += 1
    RUNNING["most"] = max(RUNNING["most"], RUNNING["now"])
    try:
        await GATE[key].wait()
    finally:
        RUNNING["now"] -= 1
    return f"{key} done"


async def gated(key: str) -> str:
    acts = workflow.proxy_activities(activities=[held])
    return await acts.held(key)  # type: ignore[no-any-return]


async def tricky() -> Any:
    return {"b": [1, (2, 3)], "a": 1e16, "u": "ünï", "big": 2**62, "z": -0.0}


async def listens(signal_id: str, count: int) -> list[Any]:
    got = []
    for number in range(count):
        got.append(await workflow.wait_for(f"{signal_id}-{number}"))
    return got


async def naps(count: int) -> int:
    for _ in range(count):
        await workflow.sleep_for(0.05)
    return count


async def app(backend: str, app_id: str | None = None) -> MemFlow:
    return await MemFlow.init(
        app_id=app_id or f"inproc{uuid.uuid4().hex[:8]}",
        backend=backend,
        **backend_test_options(backend),
    )


async def waiting(handle: Any, signal_id: str, mf: MemFlow) -> None:
    """Until the job's run waits on ``signal_id`` (its waiter is stored)."""
    for _ in range(500):
        timeline = (await handle.export()).timeline
        if any(e.kind == "wait" and e.status == "pending" for e in timeline):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{handle.workflow_id} never waited on {signal_id}")


@pytest.fixture(autouse=True)
def reset() -> None:
    RUNNING.update(now=0, most=0, calls=0)
    GATE.clear()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_eager_start_keeps_the_workers_concurrency(backend: str) -> None:
    mf = await app(backend)
    try:
        await mf.worker("q", workflows=[gated], activities=[held], concurrency=2)
        keys = [f"k{i}" for i in range(6)]
        for key in keys:
            GATE[key] = asyncio.Event()
        handles = [await mf.workflow.start("t", "gated", key, [key], "q") for key in keys]
        await asyncio.sleep(0.3)
        assert RUNNING["now"] == 2  # two slots: two run, the rest wait their turn
        for key in keys:
            GATE[key].set()
        assert [await h.result(timeout=20) for h in handles] == [f"{k} done" for k in keys]
        assert RUNNING["most"] == 2
    finally:
        await mf.shutdown()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_eager_start_whose_worker_dies_is_run_by_another(backend: str) -> None:
    mf = await app(backend)
    try:
        first = await mf.worker("q", workflows=[gated], activities=[held], lease=0.5)
        GATE["k"] = asyncio.Event()
        handle = await mf.workflow.start("t", "gated", "eager-dies", ["k"], "q")
        while RUNNING["now"] == 0:  # taken at once, and running
            await asyncio.sleep(0.01)
        await first.stop(drain=False)  # as a crash: nothing acked, nothing handed back
        GATE["k"].set()
        await mf.worker("q", workflows=[gated], activities=[held], lease=0.5)
        assert await handle.result(timeout=20) == "k done"
        assert RUNNING["calls"] == 2  # at least once: the dead worker's try, then this one
    finally:
        await mf.shutdown()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_eager_start_of_an_existing_id_runs_nothing_twice(backend: str) -> None:
    mf = await app(backend)
    try:
        await mf.worker("q", workflows=[gated], activities=[held], lease=0.5)
        GATE["k"] = asyncio.Event()
        first = await mf.workflow.start("t", "gated", "twice", ["k"], "q")
        again = await mf.workflow.start("t", "gated", "twice", ["k"], "q")
        GATE["k"].set()
        assert await first.result(timeout=20) == await again.result(timeout=20) == "k done"
        assert RUNNING["calls"] == 1
        # The refused start leased nothing that would hold up the next job.
        GATE["n"] = asyncio.Event()
        GATE["n"].set()
        later = await mf.workflow.start("t", "gated", "next", ["n"], "q")
        assert await later.result(timeout=5) == "n done"
    finally:
        await mf.shutdown()


async def test_a_local_result_equals_what_another_process_reads() -> None:
    mf = await app("postgres")
    other = None
    try:
        await mf.worker("q", workflows=[tricky])
        handle = await mf.workflow.start("t", "tricky", "tricky", [], "q")
        here = await handle.result(timeout=20)
        # Another MemFlow is another backend: it reads the stored job.
        other = await app("postgres", app_id=mf.backend.app_id)
        stored = await (await other.workflow.get_handle("tricky")).result(timeout=20)
        assert here == stored
        assert [type(v) for v in here.values()] == [type(stored[k]) for k in here]
        assert here == {"b": [1, [2, 3]], "a": 1e16, "u": "ünï", "big": 2**62, "z": 0.0}
        # Asked again (the same handle, or another of this process): the same.
        assert await handle.result(timeout=5) == here
        assert await (await mf.workflow.get_handle("tricky")).result(timeout=5) == here
    finally:
        if other is not None:
            await other.shutdown()
        await mf.shutdown()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_signals_sent_here_resume_the_cached_run(backend: str) -> None:
    mf = await app(backend)
    try:
        worker = await mf.worker("q", workflows=[listens])
        handle = await mf.workflow.start("t", "listens", "sig", ["sig", 5], "q")
        for number in range(5):
            await waiting(handle, f"sig-{number}", mf)
            assert await mf.workflow.signal(f"sig-{number}", {"n": number}) is True
        assert await handle.result(timeout=20) == [{"n": n} for n in range(5)]
        assert worker._cache.stale == 0  # each resumed as it was, never replayed
    finally:
        await mf.shutdown()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_handed_signal_whose_worker_dies_is_not_lost(backend: str) -> None:
    mf = await app(backend)
    try:
        first = await mf.worker("q", workflows=[listens], lease=0.5)
        handle = await mf.workflow.start("t", "listens", "sig-dies", ["sd", 1], "q")
        await waiting(handle, "sd-0", mf)
        handed: list[str] = []

        def dies(owner: str, handoff: Any, data: Any, lost: bool) -> None:
            handed.append(owner)  # leased to this worker, which dies before it runs
            first._eager_pending -= 1

        first.take_signalled = dies  # type: ignore[method-assign]
        assert await mf.workflow.signal("sd-0", "kept") is True
        assert handed
        await first.stop(drain=False)
        await mf.worker("q", workflows=[listens], lease=0.5)
        assert await handle.result(timeout=20) == ["kept"]
    finally:
        await mf.shutdown()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_sleeps_resume_in_process_with_the_history_of_a_replay(backend: str) -> None:
    mf = await app(backend)
    try:
        await mf.worker("q", workflows=[naps])
        cached = await mf.workflow.start("t", "naps", "naps-cached", [3], "q")
        assert await cached.result(timeout=20) == 3
        await mf.worker("r", workflows=[naps], max_cached_workflows=0)
        replayed = await mf.workflow.start("t", "naps", "naps-replayed", [3], "r")
        assert await replayed.result(timeout=20) == 3

        def shape(export: Any) -> list[tuple[Any, ...]]:
            return [(e.kind, e.status, e.result, e.error) for e in export.timeline]

        assert shape(await cached.export()) == shape(await replayed.export())
    finally:
        await mf.shutdown()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_interrupt_abandons_a_first_step_running_before_its_commit(
    backend: str,
) -> None:
    """A job's first inline activity runs under its run's lease (nothing of it is
    committed yet): an interrupt takes that lease, and the activity is cancelled
    as an activity whose own lease is lost is."""
    mf = await app(backend)
    try:
        await mf.worker("q", workflows=[gated], activities=[held], lease=0.3)
        GATE["k"] = asyncio.Event()  # never set: only a cancel ends it
        handle = await mf.workflow.start("t", "gated", "first-interrupted", ["k"], "q")
        while RUNNING["now"] == 0:
            await asyncio.sleep(0.01)
        assert await handle.interrupt("enough") is True
        for _ in range(300):
            if RUNNING["now"] == 0:
                break
            await asyncio.sleep(0.01)
        assert RUNNING["now"] == 0  # abandoned within a heartbeat, not left running
        assert await handle.status() == "interrupted"
        assert (await handle.export()).timeline == []  # it recorded nothing
    finally:
        await mf.shutdown()
