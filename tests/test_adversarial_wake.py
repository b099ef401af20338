"""Adversarial tests of the wake-ups (Wakeup: cancels kept, waiters woken, none
left), the lease keeper (kept, lost, failing extends, nothing left running),
an activity's own task (start_to_close, its contextvars its own, a swallowed
cancel of a lost lease or a stop answers nothing), revise, and the memory
undo log (values and queue order restored)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

from hotmesh_core import ActivityFailed, MemFlow, RetryPolicy, workflow
from hotmesh_core.changes import ChangeQueue
from hotmesh_core.event_wait import Wakeup, _expire
from hotmesh_core.interceptors import Interceptor, WorkerEvent
from hotmesh_core.records import revise
from hotmesh_core.worker import Worker, _LeaseKeeper

pytestmark = pytest.mark.asyncio

CALLS: dict[str, int] = {}
SEEN: dict[str, list[Any]] = {}


def counted(key: str) -> int:
    CALLS[key] = CALLS.get(key, 0) + 1
    return CALLS[key]


def app_id(prefix: str = "adv") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def memory_app() -> AsyncIterator[MemFlow]:
    """A fresh app on the memory backend, shut down after."""
    mf = await MemFlow.init(app_id=app_id(), backend="memory")
    try:
        yield mf
    finally:
        await mf.shutdown()


async def start_one(mf: MemFlow, workflow_fn: Any, activities: list[Any], key: str) -> Any:
    """A worker of queue ``q`` for ``workflow_fn`` and the job started with ``key``."""
    await mf.worker("q", workflows=[workflow_fn], activities=activities)
    return await mf.workflow.start("job", workflow_fn.__name__, key, [key], "q")


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------
# 1. Wakeup
# ---------------------------------------------------------------------------


async def test_wakeup_cancel_in_the_turn_the_timer_fires_is_kept() -> None:
    wakeup = Wakeup()
    task = asyncio.ensure_future(wakeup.wait(30))
    await settle()
    [waiter] = list(wakeup._waiters)
    _expire(waiter)  # what the timer does, in the turn of the cancel
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert not wakeup._waiters


async def test_wakeup_cancel_in_the_turn_of_set_and_clear_is_kept() -> None:
    wakeup = Wakeup()
    task = asyncio.ensure_future(wakeup.wait(30))
    await settle()
    wakeup.set()
    wakeup.clear()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert not wakeup._waiters


async def test_wakeup_cancel_before_the_wait_starts() -> None:
    wakeup = Wakeup()
    task = asyncio.ensure_future(wakeup.wait(30))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not wakeup._waiters


async def test_wakeup_a_real_timer_and_cancel_due_together() -> None:
    """The timer of the wait and a cancel scheduled for the same moment: whichever
    runs first, the cancel is never lost."""
    for _ in range(50):
        wakeup = Wakeup()
        task = asyncio.ensure_future(wakeup.wait(0.005))
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)
        loop.call_later(0.005, task.cancel)
        try:
            await asyncio.wait_for(task, 5)
        except asyncio.CancelledError:
            pass
        else:
            # The timer fired, woke the waiter, and it ran to its end before the
            # cancel was called: legitimate only when the task is done by then.
            assert task.done()
        assert not wakeup._waiters


async def test_wakeup_many_waiters_mixed_endings_no_leak_and_timeouts_honoured() -> None:
    wakeup = Wakeup()
    rng = random.Random(7)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def one(timeout: float | None) -> tuple[bool, float]:
        t0 = loop.time()
        flag = await wakeup.wait(timeout)
        return flag, loop.time() - t0

    timeouts = [rng.choice([None, 0.0, -1.0, 0.01, 0.05, 0.2, 5.0]) for _ in range(300)]
    tasks = [asyncio.ensure_future(one(t)) for t in timeouts]
    await asyncio.sleep(0.1)
    to_cancel = [t for i, t in enumerate(tasks) if i % 7 == 3 and not t.done()]
    for t in to_cancel:
        t.cancel()
    wakeup.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert loop.time() - started < 2
    for timeout, task, result in zip(timeouts, tasks, results, strict=True):
        if task in to_cancel:
            assert isinstance(result, asyncio.CancelledError)
            continue
        assert not isinstance(result, BaseException), result
        flag, took = result
        if timeout is not None and timeout <= 0.05:
            assert flag is False, (timeout, took)
            assert took >= max(timeout, 0.0) - 0.002
        else:
            assert flag is True, (timeout, took)
    assert not wakeup._waiters


async def test_wakeup_set_wakes_every_waiter_even_if_one_clears_at_once() -> None:
    """A woken waiter that clears the flag at once (a job watch does) must not
    keep the other waiters of the same set() asleep."""
    wakeup = Wakeup()
    woke: list[int] = []

    async def one(i: int) -> None:
        await wakeup.wait(10)
        woke.append(i)
        wakeup.clear()

    tasks = [asyncio.ensure_future(one(i)) for i in range(10)]
    await settle()
    wakeup.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert sorted(woke) == list(range(10))


async def test_change_queue_timeout_and_notes() -> None:
    feed = ChangeQueue()
    t0 = time.monotonic()
    assert await feed.wait(0.05) == []
    assert time.monotonic() - t0 >= 0.045
    waiting = asyncio.ensure_future(feed.wait(10))
    await settle()
    feed.put(("j", 1))
    feed.put(("j", 2))
    assert await asyncio.wait_for(waiting, 2) == [("j", 1), ("j", 2)]
    feed.put(None)
    assert await feed.wait(10) is None
    assert not feed._event._waiters


async def test_memory_watchers_leave_nothing_behind() -> None:
    from hotmesh_memory.backend import MemoryBackend

    backend = MemoryBackend(app_id(), {})
    await backend.open()
    for i in range(20):
        async with backend.watch_job("job") as watch:
            waiting = asyncio.ensure_future(watch.wait(10 if i % 2 else 0.001))
            await settle()
            if i % 3 == 0:
                waiting.cancel()
            else:
                backend.state.wake_jobs(["job"])
            await asyncio.gather(waiting, return_exceptions=True)
        task = asyncio.ensure_future(backend.wait_for_tasks(["q1", "q2"], 10 if i % 2 else 0.001))
        await settle()
        if i % 3 == 0:
            task.cancel()
        else:
            backend.state.wake_queues(["q2"])
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 2)
    assert not any(backend.state.job_watchers.values())
    assert not any(backend.state.queue_waiters.values())


async def test_memory_result_timeout_is_honoured() -> None:
    async with memory_app() as mf:
        handle = await mf.workflow.start("e", "nobody-runs-this", "wf", [], "nowhere")
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await handle.result(timeout=0.3)
        took = time.monotonic() - t0
        assert 0.25 <= took < 2, took
        assert not any(mf.backend.state.job_watchers.values())  # type: ignore[attr-defined]


async def test_postgres_single_queue_wait_keeps_cancel_and_timeout() -> None:
    from hotmesh_postgres.backend import PostgresBackend

    backend = PostgresBackend(app_id(), {})
    # A fresh claim said nothing is due: the wait asks the database nothing.
    backend.note_next_due("q", None)
    task = asyncio.ensure_future(backend.wait_for_tasks(["q"], 30))
    await settle()
    assert not task.done()
    backend.queue_event("q").set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert not backend.queue_event("q")._waiters
    # Timeout honoured, and a due time shortens it.
    backend.queue_event("q").clear()
    backend.note_next_due("q", 0.05)
    t0 = time.monotonic()
    await asyncio.wait_for(backend.wait_for_tasks(["q"], 30), 5)
    assert 0.03 <= time.monotonic() - t0 < 1
    backend.note_next_due("q", None)
    t0 = time.monotonic()
    await backend.wait_for_tasks(["q"], 0.05)
    assert 0.04 <= time.monotonic() - t0 < 1
    assert not backend.queue_event("q")._waiters
    # Two workers of one process wait on the same queue event: one set wakes both.
    backend.note_next_due("q", None)
    first = asyncio.ensure_future(backend.wait_for_tasks(["q"], 30))
    await settle()
    backend.note_next_due("q", None)
    second = asyncio.ensure_future(backend.wait_for_tasks(["q"], 30))
    await settle()
    backend.queue_event("q").set()
    await asyncio.wait_for(asyncio.gather(first, second), 2)


# ---------------------------------------------------------------------------
# 2. The lease keeper
# ---------------------------------------------------------------------------


class _DownBackend:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def transaction(self, **_: Any) -> Any:
        backend = self

        class _Tx:
            async def __aenter__(self) -> Any:
                backend.calls.append(time.monotonic())
                raise ConnectionError("the database is down")

            async def __aexit__(self, *exc: Any) -> None:
                return None

        return _Tx()


class _LeaseBackend:
    """extend_lease answers from ``answers`` in turn (True, False, or an exception)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[float] = []

    def transaction(self, **_: Any) -> Any:
        backend = self

        class _Stream:
            async def extend_lease(self, task_id: str, *, owner: str, lease: float) -> bool:
                backend.calls.append(time.monotonic())
                answer = backend.answers.pop(0) if backend.answers else True
                if isinstance(answer, BaseException):
                    raise answer
                return bool(answer)

        class _Tx:
            stream = _Stream()

            async def __aenter__(self) -> Any:
                return self

            async def __aexit__(self, *exc: Any) -> None:
                return None

        return _Tx()


def _bare_worker(backend: Any, lease: float) -> Worker:
    worker = object.__new__(Worker)
    worker.backend = backend
    worker.lease = lease
    worker.id = "w-adv"
    worker.task_queue = "q"
    worker.interceptors = []
    return worker


def _task() -> Any:
    from hotmesh_core.models import Task

    return Task(queue="q", kind="activity", job_id="j", dimension="", name="a", id="t1", index=0)


async def test_lease_keeper_failing_extend_retries_every_third_and_does_not_spin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = _DownBackend()
    worker = _bare_worker(backend, lease=0.3)
    t0 = time.monotonic()
    with caplog.at_level(logging.CRITICAL):
        keeper = worker._keep_lease(_task())
        await asyncio.sleep(1.0)
        keeper.cancel()
        await settle()
    # First try at lease/3 (0.1 s), then every 0.1 s: about 9, never hundreds.
    assert 6 <= len(backend.calls) <= 12, len(backend.calls)
    assert backend.calls[0] - t0 >= 0.09
    gaps = [b - a for a, b in itertools.pairwise(backend.calls)]
    assert min(gaps) >= 0.09, gaps
    count = len(backend.calls)
    await asyncio.sleep(0.3)
    assert len(backend.calls) == count  # cancelled: no more tries
    assert not [t for t in asyncio.all_tasks() if "_heartbeat" in repr(t.get_coro())]


async def test_lease_keeper_detects_loss_once_and_stops() -> None:
    backend = _LeaseBackend([True, ConnectionError("blip"), True, False])
    worker = _bare_worker(backend, lease=0.15)
    lost: list[float] = []
    keeper = worker._keep_lease(_task(), lambda: lost.append(time.monotonic()))
    await asyncio.sleep(1.0)
    assert len(lost) == 1
    assert len(backend.calls) == 4  # kept, failed (retried), kept, lost: then it stopped
    keeper.cancel()


async def test_lease_keeper_cancelled_before_its_timer_never_beats() -> None:
    started: list[int] = []

    async def beat() -> None:
        started.append(1)
        await asyncio.sleep(10)

    keeper = _LeaseKeeper(0.05, beat)
    keeper.cancel()
    await asyncio.sleep(0.1)
    assert not started
    keeper = _LeaseKeeper(0.01, beat)
    await asyncio.sleep(0.05)
    assert started == [1]
    beating = keeper._beating
    assert beating is not None and not beating.done()
    keeper.cancel()
    await settle()
    assert beating.cancelled()


async def long_activity(key: str, seconds: float) -> str:
    counted(key)
    await asyncio.sleep(seconds)
    return key


def long_sync_activity(key: str, seconds: float) -> str:
    counted(key)
    time.sleep(seconds)
    return key


async def two_long_steps(key: str, seconds: float) -> list[str]:
    acts = workflow.proxy_activities(activities=[long_activity, long_sync_activity])
    a = await acts.long_activity(f"{key}:a", seconds)
    b = await acts.long_sync_activity(f"{key}:b", seconds)
    c, d = await asyncio.gather(
        acts.long_activity(f"{key}:c", seconds), acts.long_activity(f"{key}:d", seconds)
    )
    return [a, b, c, d]


async def _two_workers_keep_leases(mf: MemFlow, queue: str) -> None:
    key = f"lease-{mf.app_id}"
    for _ in range(2):
        await mf.worker(
            queue,
            workflows=[two_long_steps],
            activities=[long_activity, long_sync_activity],
            lease=0.45,
            poll_interval=0.05,
        )
    handle = await mf.workflow.start("job", "two_long_steps", "lease", [key, 1.2], queue)
    assert await handle.result(timeout=30) == [f"{key}:{x}" for x in "abcd"]
    assert {x: CALLS.get(f"{key}:{x}") for x in "abcd"} == {x: 1 for x in "abcd"}
    await asyncio.sleep(0.2)
    live = [t for t in asyncio.all_tasks() if "_heartbeat" in repr(t.get_coro()) and not t.done()]
    assert not live, live
    loop: Any = asyncio.get_running_loop()
    timers = [
        h for h in loop._scheduled if not h.cancelled() and "_LeaseKeeper" in repr(h._callback)
    ]
    assert not timers, timers


async def test_long_activities_keep_their_leases_memory() -> None:
    async with memory_app() as mf:
        await _two_workers_keep_leases(mf, "q")


@pytest.fixture
async def pg() -> AsyncIterator[MemFlow]:
    from hotmesh_postgres.testing import test_dsn

    mf = await MemFlow.init(
        app_id=app_id("advpg"), backend="postgres", dsn=test_dsn(), drop_on_close=True
    )
    try:
        yield mf
    finally:
        await mf.shutdown()


async def test_long_activities_keep_their_leases_postgres(pg: MemFlow) -> None:
    await _two_workers_keep_leases(pg, "q")


CANCELLED: dict[str, asyncio.Event] = {}
STARTED: dict[str, asyncio.Event] = {}


async def interruptible(key: str) -> str:
    STARTED.setdefault(key, asyncio.Event()).set()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        CANCELLED.setdefault(key, asyncio.Event()).set()
        raise
    return "finished"


async def runs_interruptible(key: str) -> str:
    acts = workflow.proxy_activities(activities=[interruptible], start_to_close="1 minute")
    first = await acts.interruptible(f"{key}:first")
    return str(first)


async def _interrupt_stops_activity(mf: MemFlow) -> None:
    key = f"int-{mf.app_id}"
    await mf.worker("q", workflows=[runs_interruptible], activities=[interruptible], lease=0.6)
    handle = await mf.workflow.start("job", "runs_interruptible", "int", [key], "q")
    started = STARTED.setdefault(f"{key}:first", asyncio.Event())
    await asyncio.wait_for(started.wait(), 10)
    assert await handle.interrupt()
    cancelled = CANCELLED.setdefault(f"{key}:first", asyncio.Event())
    await asyncio.wait_for(cancelled.wait(), 3)  # the lease keeper saw the loss


async def test_interrupt_stops_a_running_activity_memory() -> None:
    async with memory_app() as mf:
        await _interrupt_stops_activity(mf)


async def test_interrupt_stops_a_running_activity_postgres(pg: MemFlow) -> None:
    await _interrupt_stops_activity(pg)


# ---------------------------------------------------------------------------
# 3. start_to_close by asyncio.timeout
# ---------------------------------------------------------------------------


async def slow_then_fast(key: str) -> int:
    attempt = counted(key)
    if attempt == 1:
        await asyncio.sleep(5)
    return attempt


async def uses_slow_then_fast(key: str) -> int:
    acts = workflow.proxy_activities(
        activities=[slow_then_fast],
        start_to_close=0.3,
        retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=0.01),
    )
    return await acts.slow_then_fast(key)  # type: ignore[no-any-return]


ONCE = RetryPolicy(maximum_attempts=1)


async def _outcome_of(activity: Any, key: str, **options: Any) -> Any:
    """The activity's result, or the type of its error (inside a workflow)."""
    acts = workflow.proxy_activities(activities=[activity], **options)
    try:
        return await getattr(acts, activity.__name__)(key)
    except ActivityFailed as failure:
        return failure.type_name


async def own_cancelled(key: str) -> str:
    counted(key)
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    await future  # CancelledError of its own: an ordinary failure
    return "unreachable"


async def uses_own_cancelled(key: str) -> Any:
    retry = RetryPolicy(maximum_attempts=2, initial_interval=0.01)
    return await _outcome_of(own_cancelled, key, start_to_close=5, retry_policy=retry)


def sync_sleeper(key: str) -> str:
    counted(key)
    time.sleep(3)
    return "late"


async def uses_sync_sleeper(key: str) -> Any:
    return await _outcome_of(sync_sleeper, key, start_to_close=0.2, retry_policy=ONCE)


VAR: contextvars.ContextVar[str | None] = contextvars.ContextVar("adv_var", default=None)


async def sets_a_var(key: str) -> str:
    counted(key)
    VAR.set(f"set-by-activity-{key}")
    raise ValueError("after setting the var")


async def uses_sets_a_var(key: str) -> Any:
    return await _outcome_of(sets_a_var, key, retry_policy=ONCE)


class _Observer(Interceptor):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def worker_event(self, event: WorkerEvent) -> None:
        self.seen.append((event.kind, VAR.get()))


async def test_timed_out_activity_is_retried() -> None:
    async with memory_app() as mf:
        key = f"slow-{mf.app_id}"
        handle = await start_one(mf, uses_slow_then_fast, [slow_then_fast], key)
        t0 = time.monotonic()
        assert await handle.result(timeout=10) == 2
        assert time.monotonic() - t0 < 3
        assert CALLS[key] == 2


async def test_activity_own_cancelled_error_is_an_ordinary_failure() -> None:
    async with memory_app() as mf:
        key = f"own-{mf.app_id}"
        handle = await start_one(mf, uses_own_cancelled, [own_cancelled], key)
        assert await handle.result(timeout=10) == "CancelledError"
        assert CALLS[key] == 2


async def test_sync_activity_times_out() -> None:
    async with memory_app() as mf:
        key = f"sync-{mf.app_id}"
        handle = await start_one(mf, uses_sync_sleeper, [sync_sleeper], key)
        t0 = time.monotonic()
        assert await handle.result(timeout=10) == "TimeoutError"
        assert time.monotonic() - t0 < 2


async def test_activity_set_contextvar_does_not_leak_into_the_worker() -> None:
    """A ContextVar an activity sets stays the activity's: the worker's own code
    after it (its events to interceptors, its logs, its commits) runs in the
    worker's context, as it did with wait_for's task."""
    observer = _Observer()
    async with memory_app() as mf:
        key = f"var-{mf.app_id}"
        await mf.worker(
            "q", workflows=[uses_sets_a_var], activities=[sets_a_var], interceptors=[observer]
        )
        handle = await mf.workflow.start("job", "uses_sets_a_var", "var", [key], "q")
        assert await handle.result(timeout=10) == "ValueError"
        failed = [value for kind, value in observer.seen if kind == "failed"]
        assert failed, observer.seen
        assert failed == [None] * len(failed), observer.seen


async def test_activity_set_contextvar_does_not_leak_direct() -> None:
    """The same, at the worker's _activity_outcome: the caller's context after it."""
    from hotmesh_memory.backend import MemoryBackend

    async def setter() -> str:
        VAR.set("leaked")
        return "ok"

    backend = MemoryBackend(app_id(), {})
    await backend.open()
    worker = Worker(backend, "q", activities={"setter": setter})
    task = _task()
    task = revise(
        task,
        name="setter",
        payload={"args": [], "retry": RetryPolicy().to_record(), "start_to_close": 5},
    )

    async def caller() -> tuple[str | None, str | None]:
        before = VAR.get()
        outcome = await worker._activity_outcome(task, keep_lease=False)
        assert outcome.result == "ok"
        return before, VAR.get()

    before, after = await asyncio.create_task(caller())
    assert (before, after) == (None, None)


async def swallows_cancel(key: str) -> str:
    attempt = counted(key)
    if attempt == 1:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "from-the-abandoned-attempt"
    return f"attempt-{attempt}"


async def uses_swallows_cancel(key: str) -> str:
    acts = workflow.proxy_activities(
        activities=["swallows_cancel"], task_queue="acts", start_to_close="1 minute"
    )
    return await acts.swallows_cancel(key)  # type: ignore[no-any-return]


async def test_abandoned_activity_that_swallows_the_cancel_answers_nothing() -> None:
    """Lease lost (simulated: the keeper reports it as a lapse would): the attempt
    is abandoned. An activity that catches the CancelledError and returns must
    not have that abandoned outcome recorded (with wait_for it could not: the
    worker's await raised CancelledError whatever the inner task did)."""
    async with memory_app() as mf:
        key = f"swallow-{mf.app_id}"
        await mf.worker("q", workflows=[uses_swallows_cancel])
        worker = await mf.worker("acts", activities=[swallows_cancel], lease=0.6)
        original = worker._heartbeat
        reported: list[str] = []

        async def lapsing(task: Any, lost: Any = None) -> None:
            if task.kind == "activity" and lost is not None and not reported:
                reported.append(task.id)
                lost()  # as when extend_lease finds another owner
                return
            await original(task, lost)

        worker._heartbeat = lapsing  # type: ignore[method-assign]
        handle = await mf.workflow.start("job", "uses_swallows_cancel", "sw", [key], "q")
        result = await handle.result(timeout=15)
        assert reported, "the lease keeper never ran"
        assert result != "from-the-abandoned-attempt", result


async def test_worker_stop_without_drain_ends_running_activity_promptly() -> None:
    async with memory_app() as mf:
        key = f"stop-{mf.app_id}"
        worker = await mf.worker(
            "q", workflows=[runs_interruptible], activities=[interruptible], lease=5
        )
        await mf.workflow.start("job", "runs_interruptible", "stop", [key], "q")
        await asyncio.wait_for(STARTED.setdefault(f"{key}:first", asyncio.Event()).wait(), 10)
        t0 = time.monotonic()
        await asyncio.wait_for(worker.stop(drain=False), 5)
        assert time.monotonic() - t0 < 2
        assert CANCELLED.setdefault(f"{key}:first", asyncio.Event()).is_set()
        assert not [
            t for t in asyncio.all_tasks() if "_heartbeat" in repr(t.get_coro()) and not t.done()
        ]


async def nested_timeouts(key: str) -> str:
    counted(key)
    try:  # the activity's own, longer timeout: start_to_close wins
        await asyncio.wait_for(asyncio.sleep(5), 10)
    except asyncio.TimeoutError:
        return "inner"
    return "slept"


async def uses_nested_timeouts(key: str) -> Any:
    return await _outcome_of(nested_timeouts, key, start_to_close=0.2, retry_policy=ONCE)


async def test_start_to_close_wins_over_an_activity_own_longer_timeout() -> None:
    async with memory_app() as mf:
        key = f"nest-{mf.app_id}"
        handle = await start_one(mf, uses_nested_timeouts, [nested_timeouts], key)
        assert await handle.result(timeout=10) == "TimeoutError"


# ---------------------------------------------------------------------------
# 4. revise == attrs.evolve
# ---------------------------------------------------------------------------


def _record_classes() -> list[type]:
    from hotmesh_core import advance, engine, models, replay, worker

    found: list[type] = []
    for module in (models, advance, replay, worker, engine):
        for value in vars(module).values():
            if isinstance(value, type) and attrs.has(value) and value.__module__ == module.__name__:
                found.append(value)
    return found


@pytest.mark.parametrize("cls", _record_classes(), ids=lambda c: c.__name__)
async def test_revise_equals_evolve_for_every_record(cls: type) -> None:
    fields = attrs.fields(cls)
    kwargs: dict[str, Any] = {}
    for f in fields:
        if not f.init:
            continue
        kwargs[f.alias or f.name] = object()
    original = cls(**kwargs)
    for f in fields:
        if not f.init:
            continue
        new = object()
        revised = revise(original, **{f.name: new})
        evolved = attrs.evolve(original, **{f.alias or f.name: new})
        assert type(revised) is type(evolved)
        for g in fields:
            assert getattr(revised, g.name) is getattr(evolved, g.name), (f.name, g.name)
        assert revised == evolved
    plain = revise(original)
    assert plain == original and plain is not original
    if attrs.fields(cls) and getattr(cls, "__hash__", None) is not None:
        with contextlib.suppress(TypeError):
            assert hash(plain) == hash(attrs.evolve(original))


# ---------------------------------------------------------------------------
# 5. The memory undo log
# ---------------------------------------------------------------------------


def _snapshot(tables: list[dict[Any, Any]], logs: list[list[Any]]) -> Any:
    return [list(t.items()) for t in tables], [list(log) for log in logs]


@pytest.mark.parametrize("seed", range(40))
async def test_memory_undo_restores_values_exactly(seed: int) -> None:
    from hotmesh_memory.state import _MISSING, MemoryState, MemoryTx

    rng = random.Random(seed)
    state = MemoryState(None)  # type: ignore[arg-type]
    tables: list[dict[Any, Any]] = [{k: f"v{k}" for k in range(5)} for _ in range(3)]
    logs: list[list[Any]] = [[1, 2], []]
    tx = MemoryTx(state)
    marks: list[tuple[Any, Any]] = []

    def values(snap: Any) -> Any:
        return [sorted(t, key=repr) for t in snap[0]], snap[1]

    for _ in range(200):
        op = rng.random()
        table = rng.choice(tables)
        key = rng.randrange(8)
        if op < 0.3:
            tx.put(table, key, rng.choice([None, _MISSING if False else 0, f"n{rng.random()}"]))
        elif op < 0.5:
            tx.pop(table, key)
        elif op < 0.6:
            tx.append(rng.choice(logs), rng.random())
        elif op < 0.75:
            marks.append((tx.savepoint(), _snapshot(tables, logs)))
        elif op < 0.9 and marks:
            mark, snap = marks.pop(rng.randrange(len(marks)))
            # rolling back to an older mark drops the newer ones
            marks = [m for m in marks if m[0][0] <= mark[0]]
            tx.rollback_to(mark)
            assert values(_snapshot(tables, logs)) == values(snap)
    before = _snapshot([{k: f"v{k}" for k in range(5)} for _ in range(3)], [[1, 2], []])
    tx.rollback()
    assert values(_snapshot(tables, logs)) == values(before)


async def test_memory_undo_restores_queue_order() -> None:
    """The memory queues serve in insertion order (stream.claim: first come,
    first served); a rolled-back removal puts the task back where it was."""
    from hotmesh_memory.state import MemoryState, MemoryTx
    from hotmesh_memory.stream import task_order

    state = MemoryState(None)  # type: ignore[arg-type]
    queue = {"m1": 1, "m2": 2, "m10": 3}
    tx = MemoryTx(state)
    tx.pop(queue, "m1", order=task_order)
    tx.pop(queue, "m10", order=task_order)
    tx.rollback()
    assert list(queue) == ["m1", "m2", "m10"]


async def test_a_rolled_back_ack_keeps_the_task_first_in_line() -> None:
    """Through the backend: an ack undone by a failing transaction leaves its
    task the first to be claimed, as it was."""
    from hotmesh_core.models import Task
    from hotmesh_memory.backend import MemoryBackend

    backend = MemoryBackend(f"order-{uuid.uuid4().hex[:8]}", {})
    await backend.open()
    ids = []
    async with backend.transaction() as tx:
        for i in range(3):
            task = Task(queue="q", kind="activity", job_id=f"j{i}", dimension="", name="a")
            ids.append(await tx.stream.enqueue(task))
    with pytest.raises(RuntimeError):
        async with backend.transaction() as tx:
            assert await tx.stream.ack(ids[0])
            raise RuntimeError("the transaction fails after the ack")
    async with backend.transaction() as tx:
        claimed = await tx.stream.claim(
            "q", owner="w", lease=30, workflow_names=[], activity_names=["a"], limit=1
        )
    assert [t.id for t in claimed] == [ids[0]]


async def takeover_swallows(key: str) -> str:
    attempt = counted(key)
    if attempt == 1:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "from-the-abandoned-attempt"
    await asyncio.sleep(2)
    return f"attempt-{attempt}"


async def uses_takeover_swallows(key: str) -> str:
    acts = workflow.proxy_activities(
        activities=["takeover_swallows"], task_queue="acts", start_to_close="1 minute"
    )
    return await acts.takeover_swallows(key)  # type: ignore[no-any-return]


async def _taken_over_swallower(mf: MemFlow) -> None:
    """A real lapse: worker A stalls its heartbeat past the lease, worker B takes
    the task over; A's next extend finds B's lease and cancels its attempt. An
    attempt that catches that CancelledError and returns must not answer the
    step (B's attempt is the one that counts)."""
    key = f"take-{mf.app_id}"
    await mf.worker("q", workflows=[uses_takeover_swallows])
    a = await mf.worker("acts", activities=[takeover_swallows], lease=0.5, poll_interval=0.05)
    original = a._heartbeat
    stalls: list[str] = []

    async def stalled(task: Any, lost: Any = None) -> None:
        if not stalls:
            stalls.append(task.id)
            await asyncio.sleep(1.5)  # a stall: the lease (0.5 s) lapses meanwhile
        await original(task, lost)

    a._heartbeat = stalled  # type: ignore[method-assign]
    handle = await mf.workflow.start("job", "uses_takeover_swallows", "take", [key], "q")
    for _ in range(500):
        if CALLS.get(key):
            break
        await asyncio.sleep(0.01)
    await mf.worker("acts", activities=[takeover_swallows], lease=0.5, poll_interval=0.05)
    result = await handle.result(timeout=15)
    assert CALLS[key] == 2  # B took it over
    assert result == "attempt-2", result


async def test_taken_over_activity_that_swallows_the_cancel_answers_nothing() -> None:
    async with memory_app() as mf:
        await _taken_over_swallower(mf)


async def test_taken_over_activity_that_swallows_the_cancel_answers_nothing_postgres(
    pg: MemFlow,
) -> None:
    await _taken_over_swallower(pg)


async def stop_swallows(key: str) -> str:
    attempt = counted(key)
    if attempt == 1:
        STARTED.setdefault(key, asyncio.Event()).set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "from-the-stopped-worker"
    return f"attempt-{attempt}"


async def uses_stop_swallows(key: str) -> str:
    acts = workflow.proxy_activities(activities=["stop_swallows"], task_queue="acts")
    return await acts.stop_swallows(key)  # type: ignore[no-any-return]


async def test_stop_without_drain_acks_nothing_even_if_the_activity_swallows() -> None:
    """stop(drain=False) is "like a process dying: nothing is acked"; an
    activity that catches the CancelledError and returns must not get its
    outcome committed by the stopping worker."""
    async with memory_app() as mf:
        key = f"stopsw-{mf.app_id}"
        await mf.worker("q", workflows=[uses_stop_swallows])
        a = await mf.worker("acts", activities=[stop_swallows], lease=0.5, poll_interval=0.05)
        handle = await mf.workflow.start("job", "uses_stop_swallows", "stopsw", [key], "q")
        await asyncio.wait_for(STARTED.setdefault(key, asyncio.Event()).wait(), 10)
        await a.stop(drain=False)
        await mf.worker("acts", activities=[stop_swallows], lease=0.5, poll_interval=0.05)
        assert await handle.result(timeout=15) == "attempt-2"


async def napping(x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return x


async def uses_quick(x: int, seconds: float = 1.0) -> int:
    acts = workflow.proxy_activities(activities=[napping])
    return await acts.napping(x, seconds)  # type: ignore[no-any-return]


async def _many_result_waiters(mf: MemFlow) -> None:
    await mf.worker("q", workflows=[uses_quick], activities=[napping])
    handle = await mf.workflow.start("job", "uses_quick", "many", [7], "q")
    handles = [handle] + [await mf.workflow.get_handle("many") for _ in range(29)]
    waiters = [asyncio.ensure_future(h.result(timeout=10)) for h in handles]
    await asyncio.sleep(0.05)
    cancelled = [w for w in waiters[::5] if w.cancel()]  # True: not done yet
    assert cancelled
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 10)
    for w, r in zip(waiters, results, strict=True):
        if w in cancelled:
            assert isinstance(r, asyncio.CancelledError)
        else:
            assert r == 7
    # A result() that times out on postgres: honoured and nothing left behind.
    other = await mf.workflow.start("job", "nobody-runs-this", "never", [], "nowhere")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await other.result(timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 3


async def test_many_result_waiters_memory() -> None:
    async with memory_app() as mf:
        await _many_result_waiters(mf)
        assert not any(mf.backend.state.job_watchers.values())  # type: ignore[attr-defined]


async def test_many_result_waiters_postgres(pg: MemFlow) -> None:
    await _many_result_waiters(pg)
    backend: Any = pg.backend
    assert not any(backend._job_watchers.values())


async def _cancels_around_completion(mf: MemFlow) -> None:
    """result() waiters cancelled at moments spread around the job's end: a
    cancel that reached a waiter still running always raises, never a result."""
    await mf.worker("q", workflows=[uses_quick], activities=[napping])
    for round_ in range(3):
        wid = f"around-{round_}"
        handle = await mf.workflow.start("job", "uses_quick", wid, [round_, 0.3], "q")
        handles = [await mf.workflow.get_handle(wid) for _ in range(60)]
        waiters = [asyncio.ensure_future(h.result(timeout=10)) for h in handles]
        loop = asyncio.get_running_loop()
        accepted: list[asyncio.Future[Any]] = []

        def cancel(w: asyncio.Future[Any], accepted: list[Any] = accepted) -> None:
            if w.cancel():
                accepted.append(w)

        for i, w in enumerate(waiters):
            loop.call_later(0.2 + i * 0.004, cancel, w)
        results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 10)
        for w, r in zip(waiters, results, strict=True):
            if w in accepted:
                assert isinstance(r, asyncio.CancelledError), (round_, r)
            else:
                assert r == round_
        assert await handle.result(timeout=5) == round_


async def test_result_cancels_around_completion_memory() -> None:
    async with memory_app() as mf:
        await _cancels_around_completion(mf)


async def test_result_cancels_around_completion_postgres(pg: MemFlow) -> None:
    await _cancels_around_completion(pg)
