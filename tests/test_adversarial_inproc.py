"""Adversarial tests of the in-process shortcuts (issue #11): eager start, local
results, armed timers that resume the cached run in process.

Each test says what a user does and what they must see, on both backends where
it applies; narrow races are driven by hand (a patched backend call that waits
for the test), never left to timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_core.errors import WorkflowInterrupted
from hotmesh_postgres.testing import test_dsn

BACKENDS = ["memory", "postgres"]


@asynccontextmanager
async def app(backend: str, app_id: str | None = None, **extra: Any) -> AsyncIterator[MemFlow]:
    options: dict[str, Any] = dict(extra)
    if backend == "postgres":
        options.update(dsn=test_dsn(), drop_on_close=app_id is None)
    async with MemFlow.init(
        app_id=app_id or f"advip{uuid.uuid4().hex[:10]}", backend=backend, **options
    ) as mf:
        yield mf


async def until(condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- activities and workflows ---------------------------------------------------

CALLS: dict[str, int] = {}
RUNNING: dict[str, int] = {}
PEAK: dict[str, int] = {}


async def count(key: str) -> str:
    CALLS[key] = CALLS.get(key, 0) + 1
    return key


async def slow(key: str, seconds: float) -> str:
    RUNNING[key] = RUNNING.get(key, 0) + 1
    PEAK[key] = max(PEAK.get(key, 0), RUNNING[key])
    try:
        await asyncio.sleep(seconds)
    finally:
        RUNNING[key] -= 1
    return key


async def one_count(key: str) -> str:
    acts = workflow.proxy_activities(activities=[count])
    return await acts.count(key)


async def one_slow(key: str, seconds: float) -> str:
    acts = workflow.proxy_activities(activities=[slow])
    return await acts.slow(key, seconds)


async def plain(value: Any) -> Any:
    return value


# -- eager start ------------------------------------------------------------------


def gate_finish_run(worker: Any) -> asyncio.Event:
    """Hold the worker's next run commits until the returned event is set: a
    plain run's (finish_run) and a deferred first step's (its steps recorded,
    or the run's start committed with them: record_deferred, continue_deferred,
    hold_deferred)."""
    gate = asyncio.Event()
    for name in ("finish_run", "record_deferred", "continue_deferred", "hold_deferred"):
        original = getattr(worker.engine, name)

        async def held(*args: Any, original: Any = original, **kwargs: Any) -> Any:
            await gate.wait()
            return await original(*args, **kwargs)

        setattr(worker.engine, name, held)
    return gate


@pytest.mark.parametrize("backend", BACKENDS)
async def test_interrupt_right_after_an_eager_start_runs_nothing(backend: str) -> None:
    """A job interrupted as soon as start() returns (before its first run, handed
    to the worker without a read, commits) takes no step. Its first activity may
    have run already (a job's first inline step runs before anything commits,
    Worker._run_deferred), as an activity under way when an interrupt comes may;
    nothing of it is recorded, and nothing runs after."""
    async with app(backend) as mf:
        worker = await mf.worker("q", workflows=[one_count], activities=[count], poll_interval=0.05)
        gate = gate_finish_run(worker)
        key = f"int-{uuid.uuid4().hex[:6]}"
        handle = await mf.workflow.start("t", "one_count", key, [key], "q")
        assert await handle.interrupt()
        gate.set()
        with pytest.raises(WorkflowInterrupted):
            await handle.result(timeout=5)
        await asyncio.sleep(0.5)
        assert CALLS.get(key, 0) <= 1
        assert await handle.status() == "interrupted"
        assert (await handle.export()).timeline == []


class ClaimGate:
    """Stands in for a worker's backend: once ``armed``, its claim loop's next
    transaction waits (outside any transaction) until ``release`` is set."""

    def __init__(self, worker: Any) -> None:
        self.backend, self.worker = worker.backend, worker
        self.armed = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        worker.backend = self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    @asynccontextmanager
    async def transaction(self, **kwargs: Any) -> AsyncIterator[Any]:
        task = asyncio.current_task()
        if self.armed and task is not None and task.get_name() == f"hotmesh:{self.worker.id}":
            self.armed = False
            self.entered.set()
            await self.release.wait()
        async with self.backend.transaction(**kwargs) as tx:
            yield tx


@pytest.mark.parametrize("backend", BACKENDS)
async def test_eager_starts_during_a_claim_respect_concurrency(backend: str) -> None:
    """concurrency=2 bounds the runs in hand, however they came: eager starts that
    take a slot while a claim for the free slots is in flight must not add to
    what the claim brings back."""
    key = f"conc-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        worker = await mf.worker(
            "q", workflows=[one_slow], activities=[slow], concurrency=2, poll_interval=0.05
        )
        gate = ClaimGate(worker)
        handles = [
            await mf.workflow.start("t", "one_slow", f"{key}-{i}", [key, 0.6], "q")
            for i in range(4)
        ]  # two eager, two queued
        gate.armed = True
        await asyncio.wait_for(gate.entered.wait(), 10)  # the first two ended: a claim
        handles += [
            await mf.workflow.start("t", "one_slow", f"{key}-{i}", [key, 0.6], "q")
            for i in range(4, 6)
        ]
        gate.release.set()
        assert [await h.result(timeout=20) for h in handles] == [key] * 6
        assert PEAK[key] <= 2


WHO: dict[str, list[str]] = {}


def counted_as(worker_name: str) -> Any:
    async def count(key: str) -> str:
        WHO.setdefault(key, []).append(worker_name)
        return key

    return count


class StartGate:
    """Stands in for a client's backend: once ``armed``, its next transaction (a
    start's create_job) waits until ``release`` is set. Eager starts still
    find the real backend's workers."""

    def __init__(self, mf: MemFlow, monkeypatch: pytest.MonkeyPatch) -> None:
        from hotmesh_core import engine as engine_module
        from hotmesh_core.engine import Engine

        self.backend = mf.backend
        self.armed = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        mf.workflow._engine = Engine(self)  # type: ignore[arg-type]
        original = engine_module.eager_taker
        monkeypatch.setattr(
            engine_module,
            "eager_taker",
            lambda backend, queue, name: original(
                getattr(backend, "backend", backend), queue, name
            ),
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    @asynccontextmanager
    async def transaction(self, **kwargs: Any) -> AsyncIterator[Any]:
        if self.armed:
            self.armed = False
            self.entered.set()
            await self.release.wait()
        async with self.backend.transaction(**kwargs) as tx:
            yield tx


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("drain", [True, False])
async def test_a_worker_stopped_while_an_eager_start_commits_runs_nothing(
    backend: str, drain: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that chose a worker for its first run, and commits after that
    worker stopped: the stopped worker runs nothing, and another worker runs
    the job at once (not a lease later)."""
    async with app(backend) as mf:
        first = await mf.worker(
            "q", workflows=[one_count], activities={"count": counted_as("first")},
            poll_interval=1.0, lease=30,
        )  # fmt: skip
        await asyncio.sleep(0.3)  # idle (no claim in flight): it takes starts eagerly
        gate = StartGate(mf, monkeypatch)
        gate.armed = True
        key = f"stop-{uuid.uuid4().hex[:6]}"
        starting = asyncio.ensure_future(mf.workflow.start("t", "one_count", key, [key], "q"))
        await asyncio.wait_for(gate.entered.wait(), 10)
        await first.stop(drain=drain)
        await mf.worker(
            "q", workflows=[one_count], activities={"count": counted_as("second")},
            poll_interval=0.05,
        )  # fmt: skip
        gate.release.set()
        handle = await starting
        assert await handle.result(timeout=10) == key
        assert WHO[key] == ["second"]


# -- local results ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_result_of_an_id_started_again_after_expiry_is_the_new_jobs(backend: str) -> None:
    """A handle kept from the first job of an id (never asked for its result)
    must not make the second job of that id, started after the first expired,
    answer with the first one's result."""
    async with app(backend) as mf:
        await mf.worker("q", workflows=[plain], poll_interval=0.05)
        key = f"exp-{uuid.uuid4().hex[:6]}"
        first = await mf.workflow.start("t", "plain", key, ["first"], "q", expire=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while await first.status() != "completed":  # its result is never asked for
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.2)
        deadline = loop.time() + 10
        while True:
            await mf.backend.maintain()
            try:
                await mf.workflow.get_handle(key)
            except Exception:
                break
            assert loop.time() < deadline, "the first job did not expire"
            await asyncio.sleep(0.2)
        second = await mf.workflow.start("t", "plain", key, ["second"], "q", strict=True)
        assert await second.result(timeout=10) == "second"
        assert await first.status() == "completed"


async def test_local_result_still_needs_no_second_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above keeps the shortcut: a job started and completed here gives
    its result() from the commit (one read at most, the one before waiting)."""
    from hotmesh_memory.store import MemoryStore

    reads: list[str] = []
    original = MemoryStore.get_job

    async def counted(self: Any, job_id: str) -> Any:
        reads.append(job_id)
        return await original(self, job_id)

    async with app("memory") as mf:
        await mf.worker("q", workflows=[plain], poll_interval=0.05)
        monkeypatch.setattr(MemoryStore, "get_job", counted)
        handle = await mf.workflow.start("t", "plain", f"loc-{uuid.uuid4().hex[:6]}", [7], "q")
        assert await handle.result(timeout=10) == 7
        assert reads.count(handle.workflow_id) <= 1


async def nap_or_not(seconds: float, value: str) -> str:
    if seconds > 0:
        await workflow.sleep_for(seconds)
    return value


async def wait_for_expiry(mf: MemFlow, key: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        await mf.backend.maintain()
        try:
            await mf.workflow.get_handle(key)
        except Exception:
            return
        assert loop.time() < deadline, f"{key} did not expire"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_id_started_again_does_not_resume_the_cached_run_of_its_last_job(
    backend: str,
) -> None:
    """An interrupted job whose suspended run a worker still caches expires, and
    its id is started again with other arguments: the new job runs its own
    code path (it must not resume the old run, which waits for a sleep the new
    job never asked for: the new job would be stuck)."""
    async with app(backend) as mf:
        await mf.worker("q", workflows=[nap_or_not], poll_interval=0.05)
        key = f"again-{uuid.uuid4().hex[:6]}"
        first = await mf.workflow.start("t", "nap_or_not", key, [600, "old"], "q", expire=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not [e for e in (await first.export()).timeline if e.kind == "sleep"]:
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # its run is cached, suspended
        assert await first.interrupt()
        await asyncio.sleep(1.1)
        await wait_for_expiry(mf, key)
        second = await mf.workflow.start("t", "nap_or_not", key, [0, "new"], "q", strict=True)
        assert await second.result(timeout=10) == "new"


# -- every shape: result() equals what is stored, on both backends -----------------


async def echo(value: Any) -> Any:
    return value


async def napping_hook(tag: str, config: dict[str, Any]) -> None:
    await workflow.sleep_for(0.05)
    await workflow.signal(config["signal"], {"hook": tag, "at": 1.5})


async def mixed(n: int) -> Any:
    acts = workflow.proxy_activities(activities=[echo])
    branches = await asyncio.gather(
        workflow.sleep_for(0.05),
        acts.echo({"b": n, "a": [n, (n, "t")]}),
        workflow.sleep_for(0.1),
        acts.echo(-0.0),
    )
    hooked = await workflow.exec_hook(None, "napping_hook", [f"h{n}"])
    child = await workflow.exec_child("t", "plain", None, [{"child": n}])
    await workflow.sleep_for(0.02)
    return {"z": branches, "hook": hooked, "child": child, "n": n}


async def again(left: int, total: int) -> Any:
    await workflow.sleep_for(0.01)
    if left > 0:
        await workflow.continue_as_new(left - 1, total + left)
    return {"total": total}


async def shapes(mf: MemFlow, tag: str, count: int) -> list[Any]:
    for _ in range(2):  # two workers in one process
        await mf.worker(
            "q", workflows=[mixed, again, plain, napping_hook], activities=[echo],
            poll_interval=0.05, concurrency=4,
        )  # fmt: skip
    handles = []
    for i in range(count):
        handles.append(await mf.workflow.start("t", "mixed", f"{tag}-m{i}", [i], "q"))
        handles.append(await mf.workflow.start("t", "again", f"{tag}-a{i}", [3, 0], "q"))
    results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    twice = [await h.result(timeout=5) for h in handles]  # a second result() reads
    assert twice == results
    return results


def expected_shapes(count: int) -> list[Any]:
    out: list[Any] = []
    for n in range(count):
        out.append(
            {
                "z": [None, {"b": n, "a": [n, [n, "t"]]}, None, 0.0],
                "hook": {"hook": f"h{n}", "at": 1.5},
                "child": {"child": n},
                "n": n,
            }
        )
        out.append({"total": 6})
    return out


@pytest.mark.parametrize("codec", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_results_of_every_shape_equal_what_is_stored(backend: str, codec: bool) -> None:
    from hotmesh_core.codec import AesGcmCodec

    extra: dict[str, Any] = {}
    if codec:
        extra["codec"] = AesGcmCodec({"k1": AesGcmCodec.new_key()})
    app_id = f"advsh{uuid.uuid4().hex[:10]}"
    count = 6
    async with app(backend, app_id=app_id if backend == "postgres" else None, **extra) as mf:
        tag = uuid.uuid4().hex[:6]
        results = await shapes(mf, tag, count)
        assert results == expected_shapes(count)
        if backend == "postgres":
            # A second client of the app, in its own MemFlow: it reads the tables.
            async with app(backend, app_id=app_id, **extra) as reader:
                stored = [
                    await (await reader.workflow.get_handle(f"{tag}-{kind}{i}")).result(timeout=5)
                    for i in range(count)
                    for kind in ("m", "a")
                ]
            assert stored == results
            mf.backend.options["drop_on_close"] = True  # type: ignore[attr-defined]


# -- armed timers ---------------------------------------------------------------------


async def nap_then_slow(key: str, seconds: float) -> str:
    acts = workflow.proxy_activities(activities=[slow])
    await workflow.sleep_for(0.3)
    return await acts.slow(key, seconds)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_sleeps_resumed_in_process_respect_concurrency(backend: str) -> None:
    """concurrency=2: six jobs asleep on one worker wake at the same time; the
    runs they resume in process (and the activities those run inline) must not
    exceed two at once."""
    key = f"tconc-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        await mf.worker(
            "q", workflows=[nap_then_slow], activities=[slow], concurrency=2, poll_interval=0.05
        )
        handles = await asyncio.gather(
            *(
                mf.workflow.start("t", "nap_then_slow", f"{key}-{i}", [key, 0.4], "q")
                for i in range(6)
            )
        )
        assert [await h.result(timeout=30) for h in handles] == [key] * 6
        assert PEAK[key] <= 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("same_id", [False, True])
async def test_eager_start_abandoned_by_a_crash_is_run_by_another_worker(
    backend: str, same_id: bool
) -> None:
    """stop(drain=False) (a crash) before the eager first run commits: the job is
    run by another worker once the lease runs out (at once by a worker started
    again under the same id); its activity runs, its result is stored."""
    async with app(backend) as mf:
        first = await mf.worker(
            "q", workflows=[one_count], activities=[count], poll_interval=0.05, lease=1.0,
            worker_id="crashy" if same_id else None,
        )  # fmt: skip
        gate_finish_run(first)  # never opened: the first run never commits
        key = f"crash-{uuid.uuid4().hex[:6]}"
        handle = await mf.workflow.start("t", "one_count", key, [key], "q")
        await asyncio.sleep(0.1)
        await first.stop(drain=False)
        await mf.worker(
            "q", workflows=[one_count], activities=[count], poll_interval=0.05,
            worker_id="crashy" if same_id else None,
        )  # fmt: skip
        assert await handle.result(timeout=15) == key
        assert CALLS[key] >= 1


async def nap_or_signal(tag: str) -> Any:
    acts = workflow.proxy_activities(activities=[echo])
    _slept, got = await asyncio.gather(workflow.sleep_for(0.2), workflow.wait_for(f"go-{tag}"))
    await workflow.sleep_for(0.05)
    echoed = await acts.echo(got)
    return {"got": echoed, "tag": tag}


async def nap_cancellable(tag: str) -> str:
    try:
        await workflow.sleep_for(0.2)
        await workflow.sleep_for(0.2)
    except asyncio.CancelledError:
        return f"cancelled-{tag}"
    return f"slept-{tag}"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_signals_cancels_and_interrupts_racing_in_process_timer_resumes(
    backend: str,
) -> None:
    """Signals, cancels and interrupts that land around the moment a sleep's
    armed timer resumes the cached run: every job ends, with the answer it
    was given, and what result() says is what is stored."""
    app_id = f"advrc{uuid.uuid4().hex[:10]}"
    n = 12
    async with app(backend, app_id=app_id if backend == "postgres" else None) as mf:
        for _ in range(2):
            await mf.worker(
                "q", workflows=[nap_or_signal, nap_cancellable], activities=[echo],
                poll_interval=0.05, sticky_wait=0.2,
            )  # fmt: skip
        tag = uuid.uuid4().hex[:6]
        signalled = [
            await mf.workflow.start("t", "nap_or_signal", f"{tag}-s{i}", [f"{tag}{i}"], "q")
            for i in range(n)
        ]
        cancelled = [
            await mf.workflow.start("t", "nap_cancellable", f"{tag}-c{i}", [f"{tag}{i}"], "q")
            for i in range(n)
        ]
        interrupted = [
            await mf.workflow.start("t", "nap_cancellable", f"{tag}-i{i}", [f"{tag}{i}"], "q")
            for i in range(n)
        ]

        async def poke(i: int) -> bool:
            await asyncio.sleep(0.15 + i * 0.01)  # around the first timer, and the second
            await mf.workflow.signal(f"go-{tag}{i}", {"i": i})
            await cancelled[i].cancel()
            return await interrupted[i].interrupt()

        # On a busy machine an interrupt can come after its job ended (False).
        stopped = await asyncio.gather(*(poke(i) for i in range(n)))
        got = [await h.result(timeout=20) for h in signalled]
        assert got == [{"got": {"i": i}, "tag": f"{tag}{i}"} for i in range(n)]
        ended = [await h.result(timeout=20) for h in cancelled]
        assert all(e in (f"cancelled-{tag}{i}", f"slept-{tag}{i}") for i, e in enumerate(ended))
        for i, h in enumerate(interrupted):
            if not stopped[i]:
                assert await h.result(timeout=20) == f"slept-{tag}{i}"
                continue
            with pytest.raises(WorkflowInterrupted):
                await h.result(timeout=20)
        if backend == "postgres":
            async with app(backend, app_id=app_id) as reader:
                stored = [
                    await (await reader.workflow.get_handle(h.workflow_id)).result(timeout=5)
                    for h in signalled + cancelled
                ]
            assert stored == got + ended
            mf.backend.options["drop_on_close"] = True  # type: ignore[attr-defined]


FLAKY: dict[str, int] = {}


async def flaky(key: str) -> str:
    FLAKY[key] = FLAKY.get(key, 0) + 1
    if FLAKY[key] == 1:
        raise ValueError("first attempt fails")
    return f"ok-{key}"


async def fails_once(key: str) -> str:
    from hotmesh_core import RetryPolicy

    acts = workflow.proxy_activities(
        activities=[flaky], retry_policy=RetryPolicy(maximum_attempts=1)
    )
    await workflow.sleep_for(0.05)
    return await acts.flaky(key)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_failed_job_resumed_gives_its_new_result_to_every_handle(backend: str) -> None:
    """A job that failed, then is resumed and completes: the handle from start,
    a second handle, and the same handle asked twice all see the completion
    (never the failure, never a stale value), as a separate client does."""
    from hotmesh_core.errors import WorkflowFailed

    app_id = f"advrs{uuid.uuid4().hex[:10]}"
    async with app(backend, app_id=app_id if backend == "postgres" else None) as mf:
        await mf.worker("q", workflows=[fails_once], activities=[flaky], poll_interval=0.05)
        key = f"res-{uuid.uuid4().hex[:6]}"
        handle = await mf.workflow.start("t", "fails_once", key, [key], "q")
        with pytest.raises(WorkflowFailed):
            await handle.result(timeout=10)
        other = await mf.workflow.get_handle(key)
        waiting = asyncio.ensure_future(other.result(timeout=10))
        await handle.resume()
        assert await handle.result(timeout=10) == f"ok-{key}"
        assert await handle.result(timeout=10) == f"ok-{key}"
        # It may have read the failure before the resume: that was true then.
        with contextlib.suppress(WorkflowFailed):
            assert await waiting == f"ok-{key}"
        if backend == "postgres":
            async with app(backend, app_id=app_id) as reader:
                stored = await (await reader.workflow.get_handle(key)).result(timeout=5)
            assert stored == f"ok-{key}"
            mf.backend.options["drop_on_close"] = True  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_shapes_without_a_workflow_cache(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_cached_workflows=0 (every run replays): eager starts, armed timers
    and local results give the same results."""
    from hotmesh_core import memflow

    original = memflow.MemFlow.worker

    async def uncached(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["max_cached_workflows"] = 0
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(memflow.MemFlow, "worker", uncached)
    async with app(backend) as mf:
        assert await shapes(mf, uuid.uuid4().hex[:6], 4) == expected_shapes(4)


# -- starts that must not be eager, and duplicate ids ------------------------------------


async def test_a_start_in_a_rolled_back_user_transaction_runs_nothing() -> None:
    """start(connection=) in the caller's transaction, rolled back: the job never
    existed, so no worker of this process ran it (an eager start would have);
    started again and committed, it runs once."""
    import psycopg

    async with app("postgres") as mf:
        await mf.worker("q", workflows=[one_count], activities=[count], poll_interval=0.05)
        key = f"conn-{uuid.uuid4().hex[:6]}"
        async with await psycopg.AsyncConnection.connect(test_dsn()) as conn:
            async with conn.transaction(force_rollback=True):
                await mf.workflow.start("t", "one_count", key, [key], "q", connection=conn)
                await asyncio.sleep(0.3)
            await asyncio.sleep(0.3)
            assert CALLS.get(key, 0) == 0
            async with conn.transaction():
                handle = await mf.workflow.start("t", "one_count", key, [key], "q", connection=conn)
        assert await handle.result(timeout=10) == key
        assert CALLS[key] == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("expire", [None, 60])
async def test_duplicate_eager_starts_of_one_id(backend: str, expire: int | None) -> None:
    """Ten concurrent starts of one id in the process that serves it: one job,
    run once; strict starts but one raise DuplicateWorkflow; every handle gets
    its result; the slots the losers were given come back (more jobs run)."""
    from hotmesh_core.errors import DuplicateWorkflow

    async with app(backend) as mf:
        await mf.worker(
            "q", workflows=[one_count], activities=[count], poll_interval=0.05, concurrency=3
        )
        key = f"dup-{uuid.uuid4().hex[:6]}"
        starts = [
            mf.workflow.start("t", "one_count", key, [key], "q", expire=expire, strict=i % 2 == 1)
            for i in range(10)
        ]
        outcomes = await asyncio.gather(*starts, return_exceptions=True)
        handles = [o for o in outcomes if not isinstance(o, BaseException)]
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(e, DuplicateWorkflow) for e in errors)
        assert len(errors) in (4, 5)  # five strict starts, one of which may be the first
        assert [await h.result(timeout=10) for h in handles] == [key] * len(handles)
        assert CALLS[key] == 1
        more = [
            await mf.workflow.start("t", "one_count", f"{key}-{i}", [f"{key}-{i}"], "q")
            for i in range(6)
        ]
        assert [await h.result(timeout=10) for h in more] == [f"{key}-{i}" for i in range(6)]


async def test_sync_facade_results_of_jobs_run_by_an_async_worker() -> None:
    """The blocking client (its own loop and backend) starts jobs that a worker
    of this loop runs: not eager (another backend), results as stored, a
    handle dropped by the blocking side leaves no trouble behind."""
    import gc

    from hotmesh_core.sync import connect

    app_id = f"advsy{uuid.uuid4().hex[:10]}"
    async with app("postgres", app_id=app_id) as mf:
        await mf.worker("q", workflows=[nap_or_not], poll_interval=0.05)
        client = await asyncio.to_thread(connect, app_id, "postgres", dsn=test_dsn())
        try:

            def blocking() -> list[Any]:
                handles = [
                    client.workflow.start("t", "nap_or_not", None, [0.05, f"v{i}"], "q")
                    for i in range(5)
                ]
                out = [h.result(timeout=10) for h in handles]
                out.append(client.workflow.get_handle(handles[0].workflow_id).result(timeout=5))
                del handles
                gc.collect()
                return out

            assert await asyncio.to_thread(blocking) == [f"v{i}" for i in range(5)] + ["v0"]
        finally:
            await asyncio.to_thread(client.close)
        mf.backend.options["drop_on_close"] = True  # type: ignore[attr-defined]


REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST", default="none")


async def request_seen() -> str:
    return REQUEST.get()


async def what_activity_sees() -> list[str]:
    acts = workflow.proxy_activities(activities=[request_seen])
    return [await acts.request_seen(), await acts.request_seen()]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_eager_run_does_not_inherit_the_starting_callers_context(backend: str) -> None:
    """Code that starts a job (a web request, say, with its context variables set)
    and the worker that runs it are strangers: the activities of an eagerly
    started job see the worker's context, as those of any claimed job do, not
    the request's (whose session or tenant may be gone by then)."""

    async def start_in_request(mf: MemFlow, workflow_id: str) -> Any:
        REQUEST.set("request-42")
        return await mf.workflow.start("t", "what_activity_sees", workflow_id, [], "q")

    async with app(backend) as mf:
        await mf.worker(
            "q", workflows=[what_activity_sees], activities=[request_seen], poll_interval=1.0
        )
        await asyncio.sleep(0.3)  # its first claim is done: idle, it takes starts eagerly
        handle = await asyncio.ensure_future(start_in_request(mf, f"ctx-{uuid.uuid4().hex[:6]}"))
        assert await handle.result(timeout=10) == ["none", "none"]
