"""Adversarial tests of group commit (hotmesh_core/group_commit.py): the
scheduling of a worker's grouped commits (narrow races driven by hand), and
whole workloads on both backends with cut connections, cancels, interrupts,
shutdowns, two workers, failing / odd workflows mixed in the same groups.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conformance.suite.test_advance import _started
from hotmesh_core import MemFlow, RetryPolicy, workflow
from hotmesh_core.advance import Advance, Advanced
from hotmesh_core.errors import BackendUnavailable
from hotmesh_core.group_commit import ADVANCE_MANY, IN_FLIGHT, GroupCommit
from hotmesh_postgres.testing import test_dsn
from tests.test_adversarial_adv4 import BACKENDS, app, until
from tests.test_group_commit import _activations, _deliver_first, patient  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio

CALLS: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


# -- a fake backend: every advance held on an event, every applied plan recorded ---------


class _FakeStore:
    def __init__(self, backend: _FakeBackend) -> None:
        self.b = backend

    async def advance(self, plan: Advance) -> Advanced:
        gate = self.b.gates.get(plan.job_id)
        if gate is not None:
            await gate.wait()
        self.b.applied.append(plan.job_id)
        return Advanced([], False)

    async def advance_many(self, plans: list[Advance]) -> list[Advanced | None]:
        self.b.grouped.append([p.job_id for p in plans])
        if self.b.group_gate is not None:
            await self.b.group_gate.wait()
        if self.b.group_error is not None:
            raise self.b.group_error
        out: list[Advanced | None] = []
        for p in plans:
            if p.job_id in self.b.fail_in_group:
                out.append(None)
            else:
                self.b.applied.append(p.job_id)
                out.append(Advanced([], False))
        return out


class _FakeTx:
    def __init__(self, backend: _FakeBackend) -> None:
        self.store = _FakeStore(backend)


class _FakeBackend:
    capabilities = frozenset({ADVANCE_MANY})

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.group_gate: asyncio.Event | None = None
        self.group_error: BaseException | None = None
        self.fail_in_group: set[str] = set()
        self.applied: list[str] = []
        self.grouped: list[list[str]] = []

    @asynccontextmanager
    async def transaction(self, **_: Any) -> Any:
        yield _FakeTx(self)


async def _held_and_waiting(
    b: _FakeBackend, commits: GroupCommit, n: int
) -> tuple[list[asyncio.Future[Any]], list[asyncio.Future[Any]]]:
    """Flights "a" and "b" out, held on their gates; ``n`` commits (w0, w1, ...)
    waiting behind them."""
    b.gates = {"a": asyncio.Event(), "b": asyncio.Event()}
    held = [asyncio.ensure_future(commits.commit(b, _deliver_first(j))) for j in ("a", "b")]
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(commits.commit(b, _deliver_first(f"w{i}"))) for i in range(n)]
    await asyncio.sleep(0.01)
    return held, waiting


class _HookedCommits(GroupCommit):
    """A GroupCommit that runs ``on_land`` right after a flight lands (in the same
    loop step, before the task handed the lead runs): a cancel that arrives then."""

    def __init__(self) -> None:
        super().__init__()
        self.on_land: Any = None

    def _land(self) -> None:
        super()._land()
        hook, self.on_land = self.on_land, None
        if hook is not None:
            hook()


@pytest.mark.usefixtures("patient")
async def test_gc_cancelled_waiting_commit_is_never_applied_even_after_lead_handed() -> None:
    """Two flights held; W1 and W2 wait. Flight A lands (W1 handed the lead) and,
    in the same loop step before W1 resumes, W2's task is cancelled. W2's caller
    gets CancelledError; its plan must never be applied (contract: 'a waiting
    caller that is cancelled before being sent is removed from the queue')."""
    assert IN_FLIGHT == 2
    b = _FakeBackend()
    b.gates = {"a": asyncio.Event(), "b": asyncio.Event()}
    commits = _HookedCommits()
    fa = asyncio.ensure_future(commits.commit(b, _deliver_first("a")))
    fb = asyncio.ensure_future(commits.commit(b, _deliver_first("b")))
    await asyncio.sleep(0)
    w1 = asyncio.ensure_future(commits.commit(b, _deliver_first("w1")))
    w2 = asyncio.ensure_future(commits.commit(b, _deliver_first("w2")))
    await asyncio.sleep(0.01)
    commits.on_land = w2.cancel
    b.gates["a"].set()
    await fa
    b.gates["b"].set()
    results = await asyncio.gather(fb, w1, w2, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert "w2" not in b.applied, (b.applied, b.grouped)


@pytest.mark.usefixtures("patient")
async def test_gc_cancelled_waiting_commit_never_applied_postgres() -> None:
    """The same race on PostgreSQL, with real rows: the cancelled commit's job
    must stay at activation 0."""
    async with app("postgres") as mf:
        jobs = ["p0", "p1", "p2", "p3", "p4"]
        for job_id in jobs:
            await _started(mf, job_id)
        commits = _HookedCommits()
        lock = f'SELECT 1 FROM "{mf.app_id}".jobs WHERE id = %s FOR UPDATE'
        with psycopg.connect(test_dsn()) as l0, psycopg.connect(test_dsn()) as l1:
            l0.execute(lock, ["p0"])
            l1.execute(lock, ["p1"])
            out = [
                asyncio.ensure_future(commits.commit(mf.backend, _deliver_first(j))) for j in jobs
            ]
            await asyncio.sleep(0.3)
            commits.on_land = out[3].cancel  # p3: cancelled as p0 lands, p2 handed the lead
            l0.rollback()  # p0 lands alone; p1 stays in flight
            await until(lambda: out[0].done() and out[2].done(), what="p0 and p2's group")
            l1.rollback()
        results = await asyncio.gather(*out, return_exceptions=True)
        activations = await _activations(mf, jobs)
    assert isinstance(results[3], asyncio.CancelledError)
    assert activations["p3"] == 0, activations


@pytest.mark.usefixtures("patient")
async def test_gc_group_failing_as_a_whole_reaches_every_caller_and_flights_recover() -> None:
    b = _FakeBackend()
    b.group_error = BackendUnavailable("cut")
    commits = GroupCommit()
    held, waiting = await _held_and_waiting(b, commits, 5)
    b.gates["a"].set()
    res = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, BackendUnavailable) for r in res), res
    b.gates["b"].set()
    assert all(isinstance(r, Advanced) for r in await asyncio.gather(*held))
    assert commits._flights == 0 and not commits._waiting
    b.group_error = None
    assert isinstance(await commits.commit(b, _deliver_first("after")), Advanced)
    assert commits._flights == 0


@pytest.mark.usefixtures("patient")
async def test_gc_leader_cancelled_mid_group_followers_unavailable_no_leak() -> None:
    b = _FakeBackend()
    b.group_gate = asyncio.Event()
    commits = GroupCommit()
    held, waiting = await _held_and_waiting(b, commits, 4)
    b.gates["a"].set()
    await until(lambda: len(b.grouped) == 1, what="group sent")
    waiting[0].cancel()  # the leader, mid-send
    res = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(res[0], asyncio.CancelledError)
    assert all(isinstance(r, BackendUnavailable) for r in res[1:]), res
    b.gates["b"].set()
    await asyncio.gather(*held)
    assert commits._flights == 0 and not commits._waiting


@pytest.mark.usefixtures("patient")
async def test_gc_leader_cancelled_right_after_being_handed_the_lead_passes_it_on() -> None:
    b = _FakeBackend()
    commits = _HookedCommits()
    held, waiting = await _held_and_waiting(b, commits, 4)
    commits.on_land = waiting[0].cancel  # handed the lead in this very step: pass it on
    b.gates["a"].set()
    res = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
    assert isinstance(res[0], asyncio.CancelledError)
    assert all(isinstance(r, Advanced) for r in res[1:]), res
    assert "w0" not in b.applied
    b.gates["b"].set()
    await asyncio.gather(*held)
    assert commits._flights == 0 and not commits._waiting


@pytest.mark.usefixtures("patient")
async def test_gc_follower_failed_in_group_applied_alone_once() -> None:
    b = _FakeBackend()
    b.fail_in_group = {"w0", "w2"}
    commits = GroupCommit()
    held, waiting = await _held_and_waiting(b, commits, 4)
    b.gates["a"].set()
    b.gates["b"].set()
    await asyncio.gather(*held, *waiting)
    assert Counter(b.applied) == Counter(["a", "b", "w0", "w1", "w2", "w3"]), b.applied
    assert commits._flights == 0 and not commits._waiting


@pytest.mark.usefixtures("patient")
async def test_gc_many_waiting_more_than_max_group_all_applied_once() -> None:
    b = _FakeBackend()
    commits = GroupCommit()
    held, waiting = await _held_and_waiting(b, commits, 100)
    for i in range(0, 100, 7):
        waiting[i].cancel()
    b.gates["a"].set()
    b.gates["b"].set()
    res = await asyncio.gather(*held, *waiting, return_exceptions=True)
    cancelled = {f"w{i}" for i in range(0, 100, 7)}
    assert all(len(g) <= 32 for g in b.grouped)
    assert Counter(b.applied) == Counter(
        ["a", "b"] + [f"w{i}" for i in range(100) if f"w{i}" not in cancelled]
    )
    assert sum(isinstance(r, asyncio.CancelledError) for r in res) == len(cancelled)
    assert commits._flights == 0 and not commits._waiting


# -- whole workloads --------------------------------------------------------------------


RETRY = RetryPolicy(maximum_attempts=3, initial_interval=0.02, maximum_interval=0.05)


async def inc(key: str, x: int) -> int:
    CALLS[key] += 1
    return x + 1


async def boom(key: str) -> int:
    CALLS[key] += 1
    raise ValueError(f"boom {key}")


async def branch(key: str, start: int) -> int:
    acts = workflow.proxy_activities(activities=[inc], retry_policy=RETRY)
    a = await acts.inc(f"{key}-b0", start)
    b = await acts.inc(f"{key}-b1", a)
    return await acts.inc(f"{key}-b2", b)  # type: ignore[no-any-return]


async def kid(key: str, x: int) -> int:
    acts = workflow.proxy_activities(activities=[inc], retry_policy=RETRY)
    return await acts.inc(f"{key}-kid", x * 2)  # type: ignore[no-any-return]


async def mixed(key: str, i: int, gen: int = 0) -> Any:
    acts = workflow.proxy_activities(activities=[inc, boom], retry_policy=RETRY)
    kind = i % 6
    x = await acts.inc(f"{key}-s0", i)
    x = await acts.inc(f"{key}-s1", x)
    if kind == 0:
        parts = await asyncio.gather(*(branch(f"{key}-g{j}", x) for j in range(3)))
        return sum(parts)
    if kind == 1:
        await workflow.sleep_for(0.05)
        x = await acts.inc(f"{key}-s2", x)
        got = await workflow.wait_for(f"{key}-sig")
        return x + got["v"]
    if kind == 2:
        child = await workflow.exec_child("t", "kid", f"{key}-child", [key, x], "q")
        entity = await workflow.entity()
        await entity.merge({"child": child})
        return (await entity.get())["child"]
    if kind == 3:
        await acts.boom(f"{key}-boom")
        return "unreachable"
    if kind == 4:
        if gen < 2:
            await workflow.continue_as_new(key, i, gen + 1)
        return [gen, x]
    return x


def expect(i: int) -> Any:
    x = i + 2
    kind = i % 6
    if kind == 0:
        return 3 * (x + 3)
    if kind == 1:
        return x + 1 + 1000
    if kind == 2:
        return x * 2 + 1
    if kind == 4:
        return [2, x]
    return x


WFS = [mixed, branch, kid]
ACTS = [inc, boom]


async def _check_run(mf: Any, handles: list[Any], n: int, timeout: float = 90) -> None:
    from hotmesh_core.errors import WorkflowFailed

    async def send_signals() -> None:
        pending = {i for i in range(n) if i % 6 == 1}
        while pending:
            for i in list(pending):
                if await mf.workflow.signal(f"{handles[i].workflow_id}-sig", {"v": 1000}):
                    pending.discard(i)
            await asyncio.sleep(0.05)

    sig = asyncio.ensure_future(send_signals())
    try:
        for i, h in enumerate(handles):
            if i % 6 == 3:
                with pytest.raises(WorkflowFailed):
                    await h.result(timeout=timeout)
            else:
                assert await h.result(timeout=timeout) == expect(i), i
    finally:
        sig.cancel()
    for h in handles:
        async with mf.backend.transaction(readonly=True) as tx:
            steps = await tx.store.load_steps(h.workflow_id)
        keys = [(s.dimension, s.index) for s in steps]
        assert len(keys) == len(set(keys)), (h.workflow_id, keys)
        assert all(s.status != "pending" for s in steps if s.kind == "activity"), (
            h.workflow_id,
            [(s.index, s.kind, s.status) for s in steps],
        )


async def _start_all(mf: Any, n: int, prefix: str) -> list[Any]:
    return [
        await mf.workflow.start("t", "mixed", f"{prefix}-{i}", [f"{prefix}-{i}", i], "q")
        for i in range(n)
    ]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_gc_hundreds_of_mixed_workflows_one_worker(backend: str) -> None:
    n = 300
    prefix = f"mx{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        worker = await mf.worker("q", workflows=WFS, activities=ACTS, concurrency=40)
        handles = await _start_all(mf, n, prefix)
        await _check_run(mf, handles, n)
        # every inline activity ran exactly once (no failures, no crash)
        for i in range(n):
            key = f"{prefix}-{i}"
            assert CALLS[f"{key}-s0"] == (3 if i % 6 == 4 else 1), (key, CALLS[f"{key}-s0"])
            if i % 6 == 3:
                assert CALLS[f"{key}-boom"] == 3
        if backend == "postgres":
            assert worker._local.commits.groups > 0


# -- cut connections while groups are in flight -----------------------------------------


async def _killer(app_id: str, stop: asyncio.Event, only_groups: bool, every: float) -> int:
    """Terminate the app's connections (only those running a group, with
    ``only_groups``) until ``stop`` is set and at least one was (20 s at most).

    A group statement runs for about a millisecond: on a loaded machine, 2 ms
    looks at pg_stat_activity caught none in 20 s (the workflows had finished).
    So, for groups, the app's jobs table is locked for 0.1 s (its writers queue
    behind the lock, a group among them) and the groups waiting are terminated
    while they wait."""
    killed = 0
    cond = "AND query LIKE '%%hm_advance_many%%' AND state = 'active'" if only_groups else ""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 20.0
    async with (
        await psycopg.AsyncConnection.connect(test_dsn(), autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(test_dsn()) as locker,
    ):
        while not (stop.is_set() and killed) and loop.time() < give_up:
            if only_groups:
                await locker.execute(
                    sql.SQL("LOCK TABLE {}.jobs IN EXCLUSIVE MODE").format(sql.Identifier(app_id))
                )
                await asyncio.sleep(0.1)
            cur = await conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                f" AND application_name = %s {cond}",
                [f"hotmesh:{app_id}"],
            )
            row = await cur.fetchone()
            killed += row[0] if row else 0
            await locker.rollback()  # the lock, if taken
            await asyncio.sleep(every)
    return killed


async def _result(handle: Any, timeout: float) -> Any:
    """result(), retried across a cut connection of the client itself."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await handle.result(timeout=max(0.1, deadline - loop.time()))
        except BackendUnavailable:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("only_groups", [True, False])
async def test_gc_connections_killed_while_groups_in_flight(only_groups: bool) -> None:
    from hotmesh_core.errors import WorkflowFailed

    n = 240
    prefix = f"kl{uuid.uuid4().hex[:6]}"
    async with app("postgres") as mf:
        await mf.worker("q", workflows=WFS, activities=ACTS, concurrency=40, lease=1.0)
        handles = await _start_all(mf, n, prefix)
        stop = asyncio.Event()
        killer = asyncio.ensure_future(
            _killer(mf.app_id, stop, only_groups, 0.002 if only_groups else 0.15)
        )
        await asyncio.sleep(2.0)
        stop.set()
        killed = await killer
        for i in range(n):
            if i % 6 == 1:
                while not await mf.workflow.signal(f"{prefix}-{i}-sig", {"v": 1000}):
                    await asyncio.sleep(0.05)
        for i, h in enumerate(handles):
            if i % 6 == 3:
                with pytest.raises(WorkflowFailed):
                    await _result(h, 90)
            else:
                assert await _result(h, 90) == expect(i), i
        for h in handles:
            async with mf.backend.transaction(readonly=True) as tx:
                steps = await tx.store.load_steps(h.workflow_id)
            keys = [(s.dimension, s.index) for s in steps]
            assert len(keys) == len(set(keys)), (h.workflow_id, keys)
        assert killed > 0, "no connection was terminated"


# -- cancel and interrupt while commits are grouped --------------------------------------


async def long_chain(key: str, n: int) -> Any:
    acts = workflow.proxy_activities(activities=[inc], retry_policy=RETRY)
    x = 0
    try:
        for i in range(n):
            x = await acts.inc(f"{key}-{i}", x)
            if i % 5 == 4:
                await workflow.sleep_for(0.01)
    except asyncio.CancelledError:
        return ["cleaned", await acts.inc(f"{key}-cleanup", -1)]
    return x


@pytest.mark.parametrize("backend", BACKENDS)
async def test_gc_cancel_and_interrupt_while_grouped(backend: str) -> None:
    from hotmesh_core.errors import WorkflowInterrupted

    n = 150
    steps = 40
    prefix = f"ci{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        await mf.worker("q", workflows=[long_chain], activities=[inc], concurrency=30)
        handles = [
            await mf.workflow.start(
                "t", "long_chain", f"{prefix}-{i}", [f"{prefix}-{i}", steps], "q"
            )
            for i in range(n)
        ]
        await until(lambda: sum(CALLS.values()) > n * 5, timeout=30, what="progress")
        asked = {}
        for i, h in enumerate(handles):
            if i % 3 == 0:
                asked[i] = await h.cancel("stop")
            elif i % 3 == 1:
                asked[i] = await h.interrupt("halt")
        for i, h in enumerate(handles):
            key = f"{prefix}-{i}"
            if i % 3 == 2 or not asked.get(i, True):
                assert await h.result(timeout=60) == steps, i
            elif i % 3 == 0:
                assert await h.result(timeout=60) == ["cleaned", 0], i
                assert CALLS[f"{key}-cleanup"] == 1
            else:
                with pytest.raises(WorkflowInterrupted):
                    await h.result(timeout=60)
        await asyncio.sleep(0.3)
        for i, h in enumerate(handles):
            async with mf.backend.transaction(readonly=True) as tx:
                st = await tx.store.load_steps(h.workflow_id)
            keys = [(s.dimension, s.index) for s in st]
            assert len(keys) == len(set(keys)), (i, keys)
            if i % 3 == 1 and asked[i]:
                assert await h.status() == "interrupted"
                # nothing recorded after the interrupt, no pending left
        for k, v in CALLS.items():
            assert v == 1, (k, v)


# -- a worker shut down mid-run; another takes over ---------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_gc_worker_stopped_mid_run_new_worker_finishes_all(backend: str) -> None:
    n = 240
    prefix = f"sd{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        w1 = await mf.worker("q", workflows=WFS, activities=ACTS, concurrency=40, lease=0.5)
        handles = await _start_all(mf, n, prefix)
        await until(lambda: sum(CALLS.values()) > n, timeout=30, what="progress")
        await w1.stop(drain=False)
        await mf.worker("q", workflows=WFS, activities=ACTS, concurrency=40, lease=0.5)
        await _check_run(mf, handles, n)


async def test_gc_memflow_shut_down_mid_run_new_memflow_same_app() -> None:
    n = 240
    prefix = f"sm{uuid.uuid4().hex[:6]}"
    app_id = f"advgc{uuid.uuid4().hex[:10]}"
    mf1 = await MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn())
    try:
        await mf1.worker("q", workflows=WFS, activities=ACTS, concurrency=40, lease=0.5)
        handles = await _start_all(mf1, n, prefix)
        await until(lambda: sum(CALLS.values()) > n, timeout=30, what="progress")
    finally:
        await mf1.shutdown()
    async with MemFlow.init(
        app_id=app_id, backend="postgres", dsn=test_dsn(), drop_on_close=True
    ) as mf2:
        await mf2.worker("q", workflows=WFS, activities=ACTS, concurrency=40, lease=0.5)
        handles = [await mf2.workflow.get_handle(h.workflow_id) for h in handles]
        await _check_run(mf2, handles, n)


# -- two workers of two MemFlows racing on one queue -------------------------------------


async def test_gc_two_memflows_two_workers_race_one_queue() -> None:
    n = 300
    prefix = f"tw{uuid.uuid4().hex[:6]}"
    async with (
        app("postgres") as mf,
        MemFlow.init(app_id=mf.app_id, backend="postgres", dsn=test_dsn()) as mf2,
    ):
        await mf.worker("q", workflows=WFS, activities=ACTS, concurrency=25)
        await mf2.worker("q", workflows=WFS, activities=ACTS, concurrency=25)
        handles = await _start_all(mf, n, prefix)
        await _check_run(mf, handles, n)
        for i in range(n):
            key = f"{prefix}-{i}"
            assert CALLS[f"{key}-s0"] == (3 if i % 6 == 4 else 1), key


# -- a whole group's commit fails, or commits and its answer is lost ----------------------


def _store_class(backend: str) -> Any:
    if backend == "postgres":
        from hotmesh_postgres.store import PgStore

        return PgStore
    from hotmesh_memory.store import MemoryStore

    return MemoryStore


def _slow_memory_advances(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory's commits never overlap as they are (no await inside): a commit
    that yields once makes them overlap, so that groups form there too."""
    from hotmesh_memory.store import MemoryStore

    plain = MemoryStore.advance

    async def advance(self: Any, plan: Any) -> Any:
        await asyncio.sleep(0.002)
        return await plain(self, plan)

    monkeypatch.setattr(MemoryStore, "advance", advance)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_gc_memory_forced_groups_mixed_workload(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "memory":
        _slow_memory_advances(monkeypatch)
    n = 240
    prefix = f"fg{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        worker = await mf.worker("q", workflows=WFS, activities=ACTS, concurrency=40)
        handles = await _start_all(mf, n, prefix)
        await _check_run(mf, handles, n)
        assert worker._local.commits.groups > 0


@pytest.mark.parametrize("mode", ["fails", "lost_after_commit"])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_gc_every_third_group_fails_or_loses_its_answer(
    backend: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 240
    prefix = f"gf{uuid.uuid4().hex[:6]}"
    if backend == "memory":
        _slow_memory_advances(monkeypatch)
    cls = _store_class(backend)
    original = cls.advance_many
    seen = {"calls": 0, "hit": 0}
    marked: set[Any] = set()

    async def advance_many(self: Any, plans: Any) -> Any:
        seen["calls"] += 1
        hit = seen["calls"] % 3 == 0
        if hit and mode == "fails" and backend == "postgres":
            seen["hit"] += 1
            raise BackendUnavailable("injected: the group's statement failed")
        done = await original(self, plans)
        if hit:
            seen["hit"] += 1
            if mode == "fails":  # memory: raised inside the transaction, rolled back
                raise BackendUnavailable("injected: the group's statement failed")
            marked.add(asyncio.current_task())
        return done

    monkeypatch.setattr(cls, "advance_many", advance_many)
    async with app(backend) as mf:
        inner = mf.backend.transaction

        @asynccontextmanager
        async def transaction(*args: Any, **kwargs: Any) -> Any:
            async with inner(*args, **kwargs) as tx:
                yield tx
            task = asyncio.current_task()
            if task in marked:
                marked.discard(task)
                raise BackendUnavailable("injected: committed, the answer lost")

        monkeypatch.setattr(mf.backend, "transaction", transaction)
        await mf.worker("q", workflows=WFS, activities=ACTS, concurrency=40, lease=0.5)
        handles = await _start_all(mf, n, prefix)
        await _check_run(mf, handles, n)
    assert seen["hit"] > 0


# -- odd input in the same groups as good ones --------------------------------------------


async def echo_value(key: str, value: Any) -> Any:
    CALLS[key] += 1
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(ODD_VALUES):
        return ODD_VALUES[value]  # made by the activity: never validated at start
    return value


async def odd(key: str, value: Any, rounds: int) -> Any:
    acts = workflow.proxy_activities(
        activities=[echo_value], retry_policy=RetryPolicy(maximum_attempts=1)
    )
    out = []
    for r in range(rounds):
        out.append(await acts.echo_value(f"{key}-{r}", value))
    return out


BIG = "x" * 2_000_000
NESTED: Any = {"a": [1, {"b": "ü∂ 漢字 🎉", "c": None, "d": 1.5e300}]}
for _ in range(60):
    NESTED = {"n": NESTED, "l": [NESTED] if False else [1]}
ODD_VALUES = [BIG, "ü∂ 漢字 🎉\u2028\u2029", NESTED, "nul\u0000inside", {"k\u0000": 1}, "\ud800"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_gc_odd_values_in_groups_good_ones_unaffected(backend: str) -> None:
    """Workflows carrying odd values (huge, unicode, deep nesting, NUL, a lone
    surrogate) run beside 200 good ones on one busy worker. Whatever the odd ones
    end as, every good one is correct, and the odd ones end the same way on
    both backends."""
    prefix = f"od{uuid.uuid4().hex[:6]}"
    outcomes: dict[int, str] = {}
    async with app(backend) as mf:
        await mf.worker("q", workflows=[odd, three], activities=[echo_value, inc], concurrency=40)
        good = [
            await mf.workflow.start("t", "three", f"{prefix}-g{i}", [f"{prefix}-g{i}", i], "q")
            for i in range(200)
        ]
        odds = []
        for j, _value in enumerate(ODD_VALUES):
            try:
                odds.append(
                    await mf.workflow.start(
                        "t", "odd", f"{prefix}-o{j}", [f"{prefix}-o{j}", j, 4], "q"
                    )
                )
            except Exception as error:  # refused at start: fine, but must match across backends
                outcomes[j] = f"start:{type(error).__name__}"
                odds.append(None)
        for i, h in enumerate(good):
            assert await h.result(timeout=60) == i + 3, i
        for j, h in enumerate(odds):
            if h is None:
                continue
            try:
                got = await h.result(timeout=30)
                outcomes[j] = "ok" if got == [ODD_VALUES[j]] * 4 else f"different:{str(got)[:60]}"
            except Exception as error:
                outcomes[j] = f"result:{type(error).__name__}:{str(error).split(':')[0]}"
            async with mf.backend.transaction(readonly=True) as tx:
                st = await tx.store.load_steps(h.workflow_id)
            keys = [(s.dimension, s.index) for s in st]
            assert len(keys) == len(set(keys)), (j, keys)
    assert outcomes == ODD_OUTCOMES


# How each odd value ends, on either backend: an activity result with a NUL or a
# lone surrogate is refused (the workflow fails); the rest are stored as given.
REFUSED = "result:WorkflowFailed:SerializationError"
ODD_OUTCOMES = {0: "ok", 1: "ok", 2: "ok", 3: REFUSED, 4: REFUSED, 5: REFUSED}


async def three(key: str, x: int) -> int:
    acts = workflow.proxy_activities(activities=[inc], retry_policy=RETRY)
    a = await acts.inc(f"{key}-0", x)
    b = await acts.inc(f"{key}-1", a)
    return await acts.inc(f"{key}-2", b)  # type: ignore[no-any-return]


# -- a non-determinism error and failures mixed with good ones ---------------------------

FLIP: Counter[str] = Counter()
SWITCHED: set[str] = set()


async def nondet(key: str) -> Any:
    acts = workflow.proxy_activities(activities=[inc, echo_value], retry_policy=RETRY)
    FLIP[key] += 1
    await acts.inc(f"{key}-a", 0)
    if key in SWITCHED:  # switched on during the sleep: the replay diverges
        await acts.echo_value(f"{key}-x", "other")
    await workflow.sleep_for(0.5)  # a real suspension: the next run replays
    await acts.inc(f"{key}-b", 0)
    await acts.inc(f"{key}-c", 0)
    return "done"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_gc_nondeterminism_and_failures_beside_good_ones(backend: str) -> None:
    prefix = f"nd{uuid.uuid4().hex[:6]}"
    FLIP.clear()
    async with app(backend) as mf:
        await mf.worker(
            "q",
            workflows=[nondet, three, mixed, branch, kid],
            activities=[inc, echo_value, boom],
            concurrency=40,
            max_cached_workflows=0,
        )
        good = [
            await mf.workflow.start("t", "three", f"{prefix}-g{i}", [f"{prefix}-g{i}", i], "q")
            for i in range(150)
        ]
        bad = [
            await mf.workflow.start("t", "nondet", f"{prefix}-n{i}", [f"{prefix}-n{i}"], "q")
            for i in range(20)
        ]
        failing = [
            await mf.workflow.start("t", "mixed", f"{prefix}-f{i}", [f"{prefix}-f{i}", 3], "q")
            for i in range(20)
        ]
        await until(
            lambda: all(CALLS[f"{prefix}-n{i}-a"] == 1 for i in range(20)), what="nondet at a"
        )
        await asyncio.sleep(0.1)
        SWITCHED.update(f"{prefix}-n{i}" for i in range(20))
        for i, h in enumerate(good):
            assert await h.result(timeout=60) == i + 3, i
        from hotmesh_core.errors import WorkflowFailed

        for h in failing:
            with pytest.raises(WorkflowFailed):
                await h.result(timeout=60)
        statuses = Counter()
        for h in bad:
            try:
                await h.result(timeout=10)
                statuses["completed"] += 1
            except Exception as error:
                statuses[type(error).__name__] += 1
        assert statuses["completed"] == 0, statuses
        for h in good + bad + failing:
            async with mf.backend.transaction(readonly=True) as tx:
                st = await tx.store.load_steps(h.workflow_id)
            keys = [(s.dimension, s.index) for s in st]
            assert len(keys) == len(set(keys)), (h.workflow_id, keys)
        for i in range(150):
            for s in range(3):
                assert CALLS[f"{prefix}-g{i}-{s}"] == 1


# -- one job's several threads (hooks) committing in the same groups ---------------------


async def hook_work(key: str, config: dict[str, Any]) -> None:
    acts = workflow.proxy_activities(activities=[inc], retry_policy=RETRY)
    x = await acts.inc(f"{key}-h0", 0)
    x = await acts.inc(f"{key}-h1", x)
    entity = await workflow.entity()
    await entity.append("hooks", key)
    x = await acts.inc(f"{key}-h2", x)
    await workflow.signal(config["signal"], {"hook": key, "x": x})


async def many_hooks(key: str, count: int) -> dict[str, Any]:
    answers = await asyncio.gather(
        *(workflow.exec_hook("q", "hook_work", [f"{key}-{i}"]) for i in range(count))
    )
    entity = await workflow.entity()
    return {"answers": list(answers), "hooks": sorted((await entity.get())["hooks"])}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_gc_hooks_of_one_job_grouped_together(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "memory":
        _slow_memory_advances(monkeypatch)
    prefix = f"hk{uuid.uuid4().hex[:6]}"
    n, count = 40, 8
    cls = _store_class(backend)
    original = cls.advance_many
    shared = Counter()

    async def advance_many(self: Any, plans: Any) -> Any:
        ids = Counter(p.job_id for p in plans)
        shared["groups"] += 1
        shared["same_job"] += any(v > 1 for v in ids.values())
        return await original(self, plans)

    monkeypatch.setattr(cls, "advance_many", advance_many)
    async with app(backend) as mf:
        await mf.worker("q", workflows=[many_hooks, hook_work], activities=[inc], concurrency=40)
        handles = [
            await mf.workflow.start(
                "t", "many_hooks", f"{prefix}-{i}", [f"{prefix}-{i}", count], "q"
            )
            for i in range(n)
        ]
        for i, h in enumerate(handles):
            names = [f"{prefix}-{i}-{j}" for j in range(count)]
            got = await h.result(timeout=90)
            assert got == {
                "answers": [{"hook": nm, "x": 3} for nm in names],
                "hooks": sorted(names),
            }, i
            async with mf.backend.transaction(readonly=True) as tx:
                st = await tx.store.load_steps(h.workflow_id)
            keys = [(s.dimension, s.index) for s in st]
            assert len(keys) == len(set(keys)), keys
        for k, v in CALLS.items():
            assert v == 1, (k, v)
        assert shared["same_job"] > 0


# -- head-of-line: two commits blocked on locks held elsewhere stall the whole worker? ----


@pytest.mark.parametrize("grouping", [True, False])
async def test_gc_two_blocked_commits_do_not_stall_the_other_workflows(
    grouping: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another transaction holds the rows of two jobs for a while (a long
    operator/report transaction, or any slow lock holder). Their commits wait
    on the lock (alone: no lock_timeout), and they are the worker's two
    flights: the worker's other workflows still go on meanwhile (commits that
    waited LONGEST_WAIT lead groups of their own), as they do ungrouped."""
    prefix = f"hol{uuid.uuid4().hex[:6]}"
    async with app("postgres") as mf:
        if not grouping:
            monkeypatch.setattr(
                type(mf.backend),
                "capabilities",
                frozenset(c for c in mf.backend.capabilities if c != ADVANCE_MANY),
            )
        await mf.worker("q", workflows=[three], activities=[inc], concurrency=20)
        # two workflows whose job rows another transaction locks before they commit
        with psycopg.connect(test_dsn()) as locker:
            blocked_ids = [f"{prefix}-b{i}" for i in range(2)]
            # create them through the client, then lock their rows at once
            blocked = []
            for wid in blocked_ids:
                blocked.append(await mf.workflow.start("t", "three", wid, [wid, 0], "q"))
            locker.execute(
                f'SELECT 1 FROM "{mf.app_id}".jobs WHERE id = ANY(%s) FOR UPDATE', [blocked_ids]
            )
            await asyncio.sleep(0.2)
            statuses = [await h.status() for h in blocked]
            others = [
                await mf.workflow.start("t", "three", f"{prefix}-o{i}", [f"{prefix}-o{i}", i], "q")
                for i in range(30)
            ]
            try:
                done = 0
                for i, h in enumerate(others):
                    assert await h.result(timeout=8) == i + 3
                    done += 1
            finally:
                locker.rollback()
            assert done == 30
            assert all(status in ("pending", "running") for status in statuses)
        for h in blocked:
            assert await h.result(timeout=20) == 3
