"""Second adversarial round on the claim loop's fairness rule (``Worker._claim_first``,
``_waiting_firings``, ``_slot_for_firing``, ``_handed_owner``): what
tests/test_adversarial_fair.py and tests/test_adversarial_claim.py leave out.

Narrow races are driven by hand (a patched awaitable that makes, at the one
moment it matters, the move a busy process makes there).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

# The workflows, activities and helpers of the first round.
from test_adversarial_fair import (
    ACTIVITIES,
    ENTERED,
    PEAK,
    RELEASE,
    RUNNING,
    _event,
    app,
    nap_hold,
    until,
)
from test_adversarial_fair import WORKFLOWS as FIRST_ROUND

from hotmesh_core import workflow
from hotmesh_memory.stream import MemoryStream
from hotmesh_postgres.stream import PgStream

BACKENDS = ["memory", "postgres"]
WORKFLOWS: list[Callable[..., Any]] = [*FIRST_ROUND, nap_hold]


def slow_claims(monkeypatch: pytest.MonkeyPatch, worker: Any, seconds: float) -> None:
    """The worker's claims take ``seconds`` to come back (a round trip under load)."""
    for cls in (MemoryStream, PgStream):
        original = cls.claim

        async def claim(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if str(kwargs.get("owner", "")).startswith(worker.id):
                await asyncio.sleep(seconds)
            return await _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "claim", claim)


# -- findings -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("order", ["firing looks first", "claim in flight"])
async def test_a_waiting_sleep_resumes_when_the_owed_claim_finds_nothing(
    backend: str, order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """concurrency=2: a long activity A holds one slot for the whole test. N1's
    sleep wakes, takes the other slot and runs an activity for longer than the
    idle wait; N2's sleep wakes meanwhile and waits for a slot. The loop is owed
    one. N1 ends: the loop claims (nothing is queued) and the slot is free; N2
    should resume at once. But N2's firing, having looked while the loop was
    still owed the slot or while its claim was in flight, waits on the tasks
    *working* then (A only) and on nothing else: the claim coming back empty
    (``_claiming`` back to 0, ``_claim_first`` cleared) wakes nobody, and N2
    waits out its patience (ARMED_TIMER_GRACE / 2) and goes through the queue.
    Before c32a4ae the loop counted the waiting firing and did not claim: N2
    took the slot the moment N1 left it.

    The first round's test of this shape let the firing look 10 ms after the
    loop (its claim was back by then); here it looks before the loop wakes, or
    while the claim is in flight (20 ms: a round trip under load)."""
    key = f"owed-{uuid.uuid4().hex[:6]}"
    original_wait = asyncio.wait
    loop_name: list[str] = []

    async def wait(fs: Any, **kwargs: Any) -> Any:
        outcome = await original_wait(fs, **kwargs)
        task = asyncio.current_task()
        looped = task is not None and bool(loop_name) and task.get_name() == loop_name[0]
        if order == "firing looks first" and looped and outcome[0]:
            await asyncio.sleep(0.01)  # the firing, woken too, looks first
        return outcome

    monkeypatch.setattr(asyncio, "wait", wait)
    async with app(backend) as mf, app(backend, mf.app_id) as other:
        worker = await mf.worker(
            "q", workflows=WORKFLOWS, activities=ACTIVITIES, concurrency=2, poll_interval=0.05
        )
        loop_name.append(f"hotmesh:{worker.id}")
        if order == "claim in flight":
            slow_claims(monkeypatch, worker, 0.02)
        try:
            await other.workflow.start("t", "held", f"{key}-A", [f"{key}-A", key], "q")
            await asyncio.wait_for(_event(ENTERED, f"{key}-A").wait(), 10)
            first = await mf.workflow.start(
                "t", "nap_hold", f"{key}-N1", [f"{key}-N1", key, 0.3], "q"
            )
            await until(lambda: len(worker._armed) == 1 and len(worker._inflight) == 1)
            second = await mf.workflow.start(
                "t", "napper", f"{key}-N2", [f"{key}-N2", key, 0.6], "q"
            )
            await until(lambda: len(worker._armed) == 2 and len(worker._inflight) == 1)
            await asyncio.wait_for(_event(ENTERED, f"{key}-N1").wait(), 10)
            await until(lambda: len(worker._waiting_firings) == 1)  # N2's firing
            await until(lambda: worker._claim_first)
            loop = asyncio.get_running_loop()
            released = loop.time()
            _event(RELEASE, f"{key}-N1").set()
            assert await first.result(timeout=5) == f"{key}-N1"
            assert await second.result(timeout=5) == f"{key}-N2"
            late = loop.time() - released
            assert late < 0.25, f"the second sleep resumed {late:.2f} s after a slot freed"
        finally:
            _event(RELEASE, f"{key}-A").set()
        assert PEAK[key] <= 2


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_waiting_sleep_resumes_when_an_eager_start_hands_nothing_over(
    backend: str,
) -> None:
    """The same wait, without the loop's claim: concurrency=2, a long activity
    in one slot, an eager start (a duplicate id: it creates nothing) handed out
    and not yet back in the other. A sleep fires then and waits for a slot,
    on the tasks working (the long one only). The start comes back with
    nothing: the slot is free and nothing takes it (the loop, owed it, claims
    and finds nothing queued), but the firing waits out its patience and goes
    through the queue. (Older than c32a4ae: the firing never woke for
    ``_eager_pending`` dropping while a task was working.)"""
    key = f"dup-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf, app(backend, mf.app_id) as other:
        worker = await mf.worker(
            "q", workflows=WORKFLOWS, activities=ACTIVITIES, concurrency=2, poll_interval=0.05
        )
        try:
            done = await mf.workflow.start("t", "fast", f"{key}-D", [f"{key}-D", key], "q")
            assert await done.result(timeout=5) == f"{key}-D"
            await other.workflow.start("t", "held", f"{key}-A", [f"{key}-A", key], "q")
            await asyncio.wait_for(_event(ENTERED, f"{key}-A").wait(), 10)
            sleeper = await mf.workflow.start(
                "t", "napper", f"{key}-N", [f"{key}-N", key, 0.3], "q"
            )
            await until(lambda: len(worker._armed) == 1 and len(worker._inflight) == 1)
            gate = asyncio.Event()
            original = worker.take_started

            def take_started(owner: str, job: Any, run: Any) -> None:
                async def later() -> None:
                    await gate.wait()
                    original(owner, job, run)

                _KEEP.add(asyncio.get_running_loop().create_task(later()))

            worker.take_started = take_started
            # No claim in flight (its reserved slot would send the start through the queue).
            await until(lambda: worker._claiming == 0 and not worker._claim_first)
            await mf.workflow.start("t", "fast", f"{key}-D", [f"{key}-D", key], "q")  # duplicate
            assert worker._eager_pending == 1
            await until(lambda: len(worker._waiting_firings) == 1)
            await asyncio.sleep(0.02)
            loop = asyncio.get_running_loop()
            freed = loop.time()
            gate.set()
            assert await sleeper.result(timeout=5) == f"{key}-N"
            late = loop.time() - freed
            assert late < 0.25, f"the sleep resumed {late:.2f} s after a slot freed"
        finally:
            _event(RELEASE, f"{key}-A").set()
        assert PEAK[key] <= 2


_KEEP: set[asyncio.Task[Any]] = set()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_worker_restarted_while_owed_takes_starts_eagerly_at_once(
    backend: str,
) -> None:
    """stop() while the claim loop is owed a slot, then start(): the first
    start the process makes right after start() returns is eager (the worker
    is idle, every slot free). ``_claim_first`` and ``_no_slot_since`` outlive
    the loop that set them: until the new loop's first turn, handed-over work
    goes through the queue, and the stale ``_no_slot_since`` makes the new
    loop owed a slot the first time it finds none, with no idle wait."""
    key = f"restart2-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        worker = await mf.worker(
            "q", workflows=WORKFLOWS, activities=ACTIVITIES, concurrency=1, poll_interval=0.05
        )
        first = await mf.workflow.start("t", "held", f"{key}-A", [f"{key}-A", key], "q")
        await asyncio.wait_for(_event(ENTERED, f"{key}-A").wait(), 10)
        await until(lambda: worker._claim_first)
        _event(RELEASE, f"{key}-A").set()
        await worker.stop(drain=True)
        assert await first.result(timeout=5) == f"{key}-A"
        await worker.start()
        eager: list[str] = []
        original = worker.take_started

        def take_started(owner: str, job: Any, run: Any) -> None:
            if job is not None:
                eager.append(run.job_id)
            original(owner, job, run)

        worker.take_started = take_started
        handle = await mf.workflow.start("t", "fast", f"{key}-S", [f"{key}-S", key], "q")
        assert await handle.result(timeout=5) == f"{key}-S"
        assert eager == [f"{key}-S"], "the first start after a restart went through the queue"


# -- pinned -------------------------------------------------------------------------


async def looper(key: str, group: str, n: int) -> int:
    acts = workflow.proxy_activities(activities=[mark])
    for i in range(n):
        await workflow.wait_for(f"{key}-{i}")
        await acts.mark(f"{key}-{i}", group)
    return n


async def mark(key: str, group: str) -> str:
    RUNNING[group] = RUNNING.get(group, 0) + 1
    PEAK[group] = max(PEAK.get(group, 0), RUNNING[group])
    try:
        _event(ENTERED, key).set()
    finally:
        RUNNING[group] -= 1
    return key


@pytest.mark.parametrize("backend", BACKENDS)
async def test_queued_work_is_not_starved_by_a_stream_of_signals(backend: str) -> None:
    """concurrency=1: a cached run is signalled again the moment it has taken
    the last signal (each handed over in process: no queue, no claim). A job
    another client queues meanwhile runs within about the poll interval."""
    key = f"sigs-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf, app(backend, mf.app_id) as other:
        worker = await mf.worker(
            "q",
            workflows=[*WORKFLOWS, looper],
            activities=[*ACTIVITIES, mark],
            concurrency=1,
            poll_interval=0.05,
        )
        handed = 0
        original = worker.take_signalled

        def take_signalled(owner: str, handoff: Any, data: Any, lost: bool) -> None:
            nonlocal handed
            handed += handoff is not None and handoff.run_id is not None
            original(owner, handoff, data, lost)

        worker.take_signalled = take_signalled
        n = 10_000
        run = await mf.workflow.start("t", "looper", f"{key}-L", [key, key, n], "q")
        await until(lambda: worker._cache.size > 0 and not worker._inflight)
        stop = asyncio.Event()

        async def stream() -> int:
            i = 0
            while not stop.is_set():
                await mf.workflow.signal(f"{key}-{i}", i)
                await asyncio.wait_for(_event(ENTERED, f"{key}-{i}").wait(), 10)
                while worker._inflight:  # the run's commit: signal the moment it is back
                    await asyncio.sleep(0)
                i += 1
            return i

        streaming = asyncio.create_task(stream())
        try:
            await asyncio.sleep(0.4)
            queued = await other.workflow.start("t", "fast", f"{key}-Q", [f"{key}-Q", key], "q")
            assert await queued.result(timeout=3) == f"{key}-Q"
        finally:
            stop.set()
            sent = await asyncio.wait_for(streaming, 10)
        assert sent > 3
        assert handed > 0, "no signal was handed over in process"
        assert PEAK[key] <= 1
        await mf.workflow.get_handle(f"{key}-L")
        del run


@pytest.mark.parametrize("backend", BACKENDS)
async def test_queued_work_is_not_starved_by_eager_starts_without_a_cache(backend: str) -> None:
    """max_cached_workflows=0 (no cached runs, no handed signals, no armed
    firings that resume in process): a stream of eager starts at
    concurrency=1 still lets a job another client queues run promptly."""
    key = f"nocache-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf, app(backend, mf.app_id) as other:
        worker = await mf.worker(
            "q",
            workflows=WORKFLOWS,
            activities=ACTIVITIES,
            concurrency=1,
            poll_interval=0.05,
            max_cached_workflows=0,
        )
        assert worker.signal_owner() is None
        stop = asyncio.Event()

        async def stream() -> None:
            i = 0
            while not stop.is_set():
                job = f"{key}-{i}"
                handle = await mf.workflow.start("t", "fast", job, [job, key], "q")
                assert await handle.result(timeout=10) == job
                i += 1

        streaming = asyncio.create_task(stream())
        try:
            await asyncio.sleep(0.3)
            queued = await other.workflow.start("t", "fast", f"{key}-Q", [f"{key}-Q", key], "q")
            assert await queued.result(timeout=3) == f"{key}-Q"
        finally:
            stop.set()
            await asyncio.wait_for(streaming, 10)
        assert PEAK[key] <= 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_owed_claim_that_fails_still_serves_queued_work(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """concurrency=1, a stream of eager starts; the claim the loop makes when
    owed a slot fails (the connection is cut: BackendUnavailable), twice. The
    loop retries, becomes owed again, and a job queued by another client still
    runs within about a second; the slot is never exceeded."""
    from hotmesh_core.errors import BackendUnavailable

    key = f"cut-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf, app(backend, mf.app_id) as other:
        worker = await mf.worker(
            "q", workflows=WORKFLOWS, activities=ACTIVITIES, concurrency=1, poll_interval=0.05
        )
        failures = 0
        owed_claims = 0
        for cls in (MemoryStream, PgStream):
            original = cls.claim

            async def claim(self: Any, *args: Any, _original: Any = original, **kw: Any) -> Any:
                nonlocal failures, owed_claims
                owner = str(kw.get("owner", ""))
                if owner.startswith(worker.id) and streaming_started.is_set():
                    owed_claims += 1
                    if failures < 2:
                        failures += 1
                        raise BackendUnavailable("connection cut (test)")
                return await _original(self, *args, **kw)

            monkeypatch.setattr(cls, "claim", claim)
        streaming_started = asyncio.Event()
        stop = asyncio.Event()

        async def stream() -> None:
            i = 0
            while not stop.is_set():
                job = f"{key}-{i}"
                handle = await mf.workflow.start("t", "fast", job, [job, key], "q")
                streaming_started.set()
                assert await handle.result(timeout=10) == job
                i += 1

        streaming = asyncio.create_task(stream())
        try:
            await asyncio.sleep(0.3)
            queued = await other.workflow.start("t", "fast", f"{key}-Q", [f"{key}-Q", key], "q")
            assert await queued.result(timeout=3) == f"{key}-Q"
        finally:
            stop.set()
            await asyncio.wait_for(streaming, 10)
        assert failures == 2
        assert PEAK[key] <= 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("concurrency", [1, 2])
async def test_many_sleeps_due_together_at_low_concurrency_are_not_late(
    backend: str, concurrency: int
) -> None:
    """W4's shape at concurrency 1 and 2 (the loop is owed a slot while the
    firings queue for it): 40 sleeps of 0.5 s due together; none goes through
    the firing's patience (0.5 s) and the queue, and the slots hold."""
    key = f"w4-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        await mf.worker(
            "q",
            workflows=WORKFLOWS,
            activities=ACTIVITIES,
            concurrency=concurrency,
            poll_interval=0.05,
        )
        loop = asyncio.get_running_loop()
        handles = [
            await mf.workflow.start("t", "napper", f"{key}-{i}", [f"{key}-{i}", key, 0.5], "q")
            for i in range(40)
        ]
        began = loop.time()
        for i, handle in enumerate(handles):
            assert await handle.result(timeout=10) == f"{key}-{i}"
        took = loop.time() - began
        assert took < 0.5 + 0.4, f"40 sleeps of 0.5 s took {took:.2f} s"
        assert PEAK[key] <= concurrency
