"""Adversarial regressions for the one-call transitions (``Store.advance`` /
``hm_advance``, ``create_job(run=)``, ``Signal.deliver`` / ``hm_deliver``, a
sleep fired through advance, the claim's next due time), on both backends.

Each test says what a user does and what they must see; the races are made
likely by numbers (many jobs, two workers) or driven by hand where the window
is too narrow to hit by chance.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from hotmesh_core import MemFlow, RetryPolicy, workflow
from hotmesh_core.errors import DuplicateWorkflow, WorkflowInterrupted
from hotmesh_core.worker import Worker
from hotmesh_postgres.testing import test_dsn

BACKENDS = ["memory", "postgres"]


@asynccontextmanager
async def app(backend: str, **extra: Any) -> AsyncIterator[MemFlow]:
    options: dict[str, Any] = dict(extra)
    if backend == "postgres":
        options.update(dsn=test_dsn(), drop_on_close=True)
    async with MemFlow.init(
        app_id=f"adv11{uuid.uuid4().hex[:10]}", backend=backend, **options
    ) as mf:
        yield mf


def drop_connections(app_id: str) -> int:
    """What a server restart (or an idle-connection killer) does to one app."""
    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [f"hotmesh:{app_id}"],
        ).fetchall()
    return len(rows)


def rows_of(mf: MemFlow, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Read the app's tables as an operator would (psql), outside the library."""
    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        conn.execute(f'SET search_path = "{mf.backend.schema}"')  # type: ignore[attr-defined]
        return conn.execute(query, params).fetchall()


# -- activities and workflows ---------------------------------------------------


async def add(a: int, b: int) -> int:
    return a + b


async def echo(value: Any) -> Any:
    return value


async def nothing() -> None:
    return None


async def chain(n: int) -> int:
    """W1-like: n activities one after another (the inline hot path)."""
    acts = workflow.proxy_activities(activities=[add])
    total = 0
    for i in range(n):
        total = await acts.add(total, i)
    return total


async def fan(n: int, rounds: int) -> list[int]:
    """n activities at once, ``rounds`` times: answers racing on one thread."""
    acts = workflow.proxy_activities(activities=[add])
    out = []
    for r in range(rounds):
        out.append(sum(await asyncio.gather(*(acts.add(r * 1000, i) for i in range(n)))))
    return out


async def float_then_sleep(value: float) -> list[Any]:
    acts = workflow.proxy_activities(activities=[echo])
    got = await acts.echo(value)
    await workflow.sleep_for(0.05)  # the run after the sleep replays the history
    return [type(got).__name__, repr(got)]


# -- 1. the server cuts the app's connections ----------------------------------


async def test_a_start_and_a_signal_right_after_the_server_cut_every_connection() -> None:
    """Found failing (fixed). After a server restart, a failover or an idle-connection
    killer, the pool holds dead connections. A start and a signal are now one
    autocommit statement (``transaction(single=True)``), which skips the
    BEGIN that used to find a dead connection and take another one: the user's
    ``start`` and ``signal`` raise ``BackendUnavailable`` once per dead pooled
    connection, though nothing was sent to a live server. Before the change
    both went through at once."""
    async with app("postgres") as mf:
        await mf.workflow.start("t", "chain", "warm", [1], "q")  # the pool has connections
        await mf.workflow.signal("warm-signal", 1)
        assert drop_connections(mf.app_id) > 0
        await asyncio.sleep(0.2)
        handle = await mf.workflow.start("t", "chain", "after-cut", [1], "q")
        assert await handle.status() == "pending"
        assert drop_connections(mf.app_id) > 0
        await asyncio.sleep(0.2)
        assert await mf.workflow.signal("after-cut-signal", {"x": 1}) is False


# -- 2. same id, with and without expire ----------------------------------------


async def test_concurrent_strict_starts_of_one_id_with_and_without_expire_create_one_job() -> None:
    """Found failing (fixed with this test). A start without ``expire`` goes to the
    'keep' bucket and takes no lock on the id; one with ``expire`` goes to its
    day's bucket under the id's advisory lock. Run together, each sees no job
    of that id, so both insert: two jobs with one id, both ``strict=True``
    starts succeed, and the workflow runs twice."""
    async with app("postgres") as mf:
        # The day partitions exist once an expire value is in use (maintenance).
        await mf.workflow.start("t", "chain", "warm", [1], "q", expire="3 days")
        await mf.backend.maintain()
        created_twice = []
        for attempt in range(20):
            workflow_id = f"dup-{attempt}"
            outcomes = await asyncio.gather(
                *(
                    mf.workflow.start(
                        "t", "chain", workflow_id, [i], "q", expire=expire, strict=True
                    )
                    for i, expire in enumerate([None, "3 days", None, "3 days"])
                ),
                return_exceptions=True,
            )
            started = [o for o in outcomes if not isinstance(o, DuplicateWorkflow)]
            assert not [o for o in started if isinstance(o, BaseException)], outcomes
            if len(started) != 1:
                created_twice.append(workflow_id)
        stored = rows_of(
            mf, "SELECT id FROM jobs WHERE id LIKE 'dup-%%' GROUP BY id HAVING count(*) > 1", []
        )
        assert created_twice == [] and stored == []


async def test_concurrent_starts_of_one_id_with_expire_create_one_job_memory_and_postgres() -> None:
    for backend in BACKENDS:
        async with app(backend) as mf:
            outcomes = await asyncio.gather(
                *(
                    mf.workflow.start("t", "chain", "same", [i], "q", expire=60, strict=True)
                    for i in range(8)
                ),
                return_exceptions=True,
            )
            assert sum(not isinstance(o, BaseException) for o in outcomes) == 1, backend
            assert [r.workflow_id for r in await mf.workflow.list_runs()] == ["same"]


# -- 3. odd JSON ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [1e20, 1.7976931348623157e308, -0.0, 1e16])
async def test_a_float_an_activity_returns_is_a_float_after_a_replay(
    backend: str, value: float
) -> None:
    """PostgreSQL jsonb keeps numbers as numeric and printed ``1e+20`` back as
    ``100000000000000000000``: an activity's float result, read back from the
    history, was an int (the inline run saw the float, the replay after the
    sleep an int). Fixed: whole floats are written out with ``.0``
    (serde.exact_json). -0.0 has no decimal form: every value is normalized
    to 0.0 (serde.ensure_json) on every backend, first run and replay alike."""
    expected = repr(0.0 if value == 0 else value)
    async with app(backend) as mf:
        await mf.worker("q", workflows=[float_then_sleep], activities=[echo])
        handle = await mf.workflow.start("t", "float_then_sleep", "f", [value], "q")
        assert await handle.result(timeout=30) == ["float", expected]


# -- 4. two workers racing on one thread's answers -------------------------------


@pytest.mark.parametrize("cache", [10_000, 0])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_two_workers_racing_on_one_threads_answers_finish_each_job_once(
    backend: str, cache: int
) -> None:
    """Parallel activities answered by two workers at once: runs of one thread
    race (Superseded), and the loser must change nothing. Every job completes
    with the right result, each activity step is recorded once, done, with its
    own answer, and none is left pending."""
    async with app(backend) as mf:
        for _ in range(2):
            await mf.worker(
                "q", workflows=[fan], activities=[add], concurrency=8, max_cached_workflows=cache
            )
        handles = [await mf.workflow.start("t", "fan", f"fan-{i}", [6, 3], "q") for i in range(8)]
        expected = [sum(r * 1000 + i for i in range(6)) for r in range(3)]
        for handle in handles:
            assert await handle.result(timeout=60) == expected
        for handle in handles:
            steps = [s for s in (await handle.export()).timeline if s.kind == "activity"]
            assert len(steps) == 18
            assert {(s.status, s.error) for s in steps} == {("done", None)}
            assert sorted(s.result for s in steps) == sorted(
                r * 1000 + i for r in range(3) for i in range(6)
            )
            assert all(s.result == sum(s.args) for s in steps)
            assert len({s.index for s in steps}) == 18


# -- 5. a worker killed between an inline activity and its commit ----------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_worker_killed_between_an_inline_activity_and_its_commit(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker ran the activity inline and dies (its tasks cancelled, as
    ``stop(drain=False)`` does) before the commit of the answer. Nothing was
    written; another worker takes the job over once the lease runs out and it
    completes with the right result, every step recorded once."""
    from hotmesh_core.engine import Engine

    stuck = asyncio.Event()
    calls = {"n": 0}

    def hang_once(original: Callable[..., Any]) -> Callable[..., Any]:
        async def hanging(self: Engine, *args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:  # the second inline answer: mid-chain
                stuck.set()
                await asyncio.Event().wait()  # until the worker is killed
            return await original(self, *args, **kwargs)

        return hanging

    # A chain's step commits with its run task kept (hold_deferred) or, on
    # the ordinary way, with the activity tasks' answers (continue_inline).
    for name in ("continue_inline", "hold_deferred"):
        monkeypatch.setattr(Engine, name, hang_once(getattr(Engine, name)))
    async with app(backend) as mf:
        doomed = await mf.worker("q", workflows=[chain], activities=[add], lease=1.0)
        handle = await mf.workflow.start("t", "chain", "killed", [5], "q")
        await asyncio.wait_for(stuck.wait(), 20)
        await doomed.stop(drain=False)
        mf.workers.remove(doomed)
        await mf.worker("q", workflows=[chain], activities=[add], lease=1.0)
        assert await handle.result(timeout=30) == sum(range(5))
        steps = [s for s in (await handle.export()).timeline if s.kind == "activity"]
        assert [s.index for s in steps] == sorted({s.index for s in steps})
        assert len(steps) == 5
        assert {(s.status, s.error) for s in steps} == {("done", None)}


# -- 6. signals racing the waits they are for --------------------------------------


async def waits_in_turn(job: str, n: int) -> list[Any]:
    acts = workflow.proxy_activities(activities=[echo])
    got = []
    for k in range(n):
        got.append(await workflow.wait_for(f"sig-{job}-{k}"))
        await acts.echo(k)  # something between waits: the next one registers later
    return got


async def waits_twice_on_one_id(job: str) -> list[Any]:
    first = await workflow.wait_for(f"twice-{job}")
    second = await workflow.wait_for(f"twice-{job}")
    return sorted([first, second], key=json.dumps)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_signals_sent_while_the_waits_register_are_each_delivered_once(
    backend: str,
) -> None:
    """Signals sent concurrently with the workflow reaching (or registering) its
    waits: each is buffered or delivered, exactly once, never lost."""
    async with app(backend) as mf:
        await mf.worker("q", workflows=[waits_in_turn, waits_twice_on_one_id], activities=[echo])
        jobs = [f"j{i}" for i in range(6)]
        handles = [
            await mf.workflow.start("t", "waits_in_turn", job, [job, 4], "q") for job in jobs
        ]
        twice = [
            await mf.workflow.start("t", "waits_twice_on_one_id", f"tw-{job}", [job], "q")
            for job in jobs
        ]

        async def send(job: str, k: int) -> bool:
            await asyncio.sleep(0.002 * ((k * 7 + len(job)) % 5))
            return await mf.workflow.signal(f"sig-{job}-{k}", {"job": job, "k": k, "u": "é'\""})

        await asyncio.gather(*(send(job, k) for job in jobs for k in range(4)))
        await asyncio.gather(
            *(mf.workflow.signal(f"twice-{job}", [job, n]) for job in jobs for n in range(2))
        )
        for job, handle in zip(jobs, handles, strict=True):
            assert await handle.result(timeout=30) == [
                {"job": job, "k": k, "u": "é'\""} for k in range(4)
            ]
        for job, handle in zip(jobs, twice, strict=True):
            assert await handle.result(timeout=30) == [[job, 0], [job, 1]]


# -- 7. continue_as_new with work of the old generation still out --------------------


async def slow(x: Any) -> str:
    await asyncio.sleep(1.0)
    return f"slow-{x}"


async def fast(x: Any) -> str:
    return f"fast-{x}"


async def generations(n: int) -> Any:
    """Generation 0 races a slow activity against a short sleep, then continues
    as new; generation 1 calls ``fast`` (at index 0, where ``slow`` was)."""
    if n == 0:
        acts = workflow.proxy_activities(activities=[slow], task_queue="acts")
        racing = [
            asyncio.ensure_future(acts.slow(0)),
            asyncio.ensure_future(workflow.sleep_for(0.2)),
        ]
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        await workflow.continue_as_new(1)
    later = workflow.proxy_activities(activities=[fast], task_queue="later")
    return await later.fast(n)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_old_generations_activity_does_not_answer_the_new_generation(
    backend: str,
) -> None:
    """Found failing (fixed with this test) (before and after c40c26b). ``continue_as_new``
    deletes the old generation's steps and tasks, but an activity of it that is
    running still answers by (job, thread, index) when it returns: it answers
    the new generation's step at that index. Here ``fast(1)`` "returns"
    ``'slow-0'``, the result of an activity of the previous generation."""
    async with app(backend) as mf:
        await mf.worker("q", workflows=[generations])
        await mf.worker("acts", activities=[slow])
        handle = await mf.workflow.start("t", "generations", "g", [0], "q")
        await asyncio.sleep(2.0)  # slow (1 s) has returned; nobody serves "later" yet
        await mf.worker("later", activities=[fast])
        assert await handle.result(timeout=20) == "fast-1"


async def sleep_or_signal(n: int) -> Any:
    """Generation 0 races a sleep against a signal, then continues as new;
    generation 1 runs two activities (at indexes 0 and 1, where the sleep and
    the wait were)."""
    if n == 0:
        racing = [
            asyncio.ensure_future(workflow.sleep_for(0.3)),
            asyncio.ensure_future(workflow.wait_for("go")),
        ]
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        await workflow.continue_as_new(1)
    later = workflow.proxy_activities(activities=[fast], task_queue="later")
    return list(await asyncio.gather(later.fast("a"), later.fast("b")))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_old_generations_sleep_firing_late_does_not_answer_the_new_generation(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found failing (fixed with this test). The sleep's timer was claimed (a worker is about
    to fire it) when a signal won the race and the workflow continued as new.
    ``fire_timer`` (now one ``hm_advance``) answers by index: the new
    generation's activity at the sleep's index is answered with None."""
    from hotmesh_core.engine import Engine

    fire = Engine.fire_timer
    claimed = asyncio.Event()

    async def slow_fire(self: Engine, task: Any) -> None:
        claimed.set()
        await asyncio.sleep(0.8)  # claimed, not fired yet
        await fire(self, task)

    monkeypatch.setattr(Engine, "fire_timer", slow_fire)
    # The claimed row's path: no in-process timer gets there first.
    monkeypatch.setattr(Worker, "_arm_timer", lambda self, task, delay: None)
    # ...and its row comes due at the due time, as an unarmed sleep's does.
    monkeypatch.setattr("hotmesh_core.worker.ARMED_TIMER_GRACE", 0.0)
    async with app(backend) as mf:
        await mf.worker("q", workflows=[sleep_or_signal])
        handle = await mf.workflow.start("t", "sleep_or_signal", "s", [0], "q")
        await asyncio.wait_for(claimed.wait(), 10)
        assert await mf.workflow.signal("go", "now") is True
        await asyncio.sleep(1.5)  # the late timer has fired
        await mf.worker("later", activities=[fast])
        assert await handle.result(timeout=20) == ["fast-a", "fast-b"]


# -- 8. connections cut while W1-like workflows run ------------------------------------


async def test_w1_workflows_complete_once_while_the_server_cuts_connections_mid_transition() -> (
    None
):
    """The app's connections are terminated again and again while 30 chains of
    8 inline activities run (each step one ``hm_advance``). Every job completes
    with the right result, no lease is waited out, and each activity step is
    recorded once with its own answer."""
    async with app("postgres") as mf:
        for _ in range(2):
            await mf.worker("q", workflows=[chain], activities=[add], lease=60, concurrency=10)
        handles = [await mf.workflow.start("t", "chain", f"w1-{i}", [8], "q") for i in range(30)]
        loop = asyncio.get_running_loop()
        began = loop.time()
        cuts = 0
        for _ in range(6):
            await asyncio.sleep(0.15)
            cuts += await asyncio.to_thread(drop_connections, mf.app_id)
        assert cuts > 0
        results = [await handle.result(timeout=40) for handle in handles]
        assert results == [sum(range(8))] * 30
        assert loop.time() - began < 40  # no 60 s lease was waited out
        for handle in handles:
            steps = [s for s in (await handle.export()).timeline if s.kind == "activity"]
            assert [s.index for s in steps] == list(range(8))
            assert [s.result for s in steps] == [sum(range(i + 1)) for i in range(8)]
            assert {s.status for s in steps} == {"done"}


# -- 9. odd payloads and ids, the same on both backends ---------------------------------

ODD: list[Any] = [
    None,
    0,
    -1,
    2**63,
    -(2**70),
    10**30,
    0.1,
    1.5,
    -2.25e-8,
    "",
    'it\'s "quoted" \\ back\\slash %s %% $1 ${x}',
    "é ü 😀 \u2028 \u200b \uffff \U0001d518",
    [],
    [[[[]]]],
    [None, [None, [None]]],
    {"": None, "a'b": [1, {'c"d': "é"}], "$codec": "not mine"},
    {"nested": {"deep": [1, 2, [3, [4, [5]]]]}},
    True,
    False,
]


async def odd_flow(values: list[Any], queue: str | None) -> dict[str, Any]:
    acts = workflow.proxy_activities(
        activities=[echo, nothing, boom],
        task_queue=queue,  # None: this worker runs them inline (hm_advance)
        retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=0.05),
    )
    got = [await acts.echo(value) for value in values]
    await workflow.sleep_for(0.01)  # what follows replays what came before
    many = list(await asyncio.gather(*(acts.echo(value) for value in values)))
    none = await acts.nothing()
    try:
        await acts.boom("é'\"")
        failed = None
    except Exception as exc:  # the activity's error, as the workflow sees it
        failed = [type(exc).__name__, str(exc)]
    signalled = await workflow.wait_for(f"odd-{workflow.info().workflow_id}")
    return {"got": got, "many": many, "none": none, "failed": failed, "signal": signalled}


async def boom(text: str) -> None:
    raise ValueError(f"boom {text}")


def timeline_of(export: Any) -> list[tuple[Any, ...]]:
    return [
        (
            s.dimension,
            s.index,
            s.kind,
            s.name,
            json.dumps(s.args, sort_keys=True),
            s.status,
            json.dumps(s.result, sort_keys=True),
            None if s.error is None else (s.error.type_name, s.error.message),
            s.attempts,
        )
        for s in sorted(export.timeline, key=lambda s: (s.dimension, s.index))
    ]


async def test_odd_payloads_and_ids_come_back_alike_from_both_backends() -> None:
    """Unicode, quotes, big ints, nested lists, None results, a failing activity
    retried, a signal, under a workflow id with quotes and unicode: the result
    and the step history are the same on memory and PostgreSQL (through
    ``hm_advance``, the general path and ``hm_deliver`` alike): activities run
    inline by the workflow's worker, and on another queue's worker."""
    workflow_id = 'o\'neil "x" \\ é😀 %s ; --'
    seen = []
    for backend, queue in [("memory", None), ("postgres", None), ("postgres", "acts")]:
        async with app(backend) as mf:
            await mf.worker("q", workflows=[odd_flow], activities=[echo, nothing, boom])
            await mf.worker("acts", activities=[echo, nothing, boom])
            handle = await mf.workflow.start("t", "odd_flow", workflow_id, [ODD, queue], "q")
            await mf.workflow.signal(f"odd-{workflow_id}", ODD)  # kept if it comes first
            result = await handle.result(timeout=30)
            seen.append((result, timeline_of(await handle.export())))
    (memory, memory_steps), (postgres, postgres_steps), (general, general_steps) = seen
    assert memory["got"] == ODD and memory["many"] == ODD and memory["signal"] == ODD
    assert memory["none"] is None
    assert memory["failed"][0] == "ActivityFailed" and "boom é'\"" in memory["failed"][1]
    assert json.dumps(postgres, sort_keys=True) == json.dumps(memory, sort_keys=True)
    assert postgres_steps == memory_steps
    assert json.dumps(general, sort_keys=True) == json.dumps(memory, sort_keys=True)
    assert general_steps == memory_steps
    failed = [step for step in memory_steps if step[3] == "boom"]
    assert [(step[5], step[8]) for step in failed] == [("failed", 2)]


# -- 10. sleeps racing an interrupt ---------------------------------------------------


async def sleep_then_work(seconds: float) -> int:
    acts = workflow.proxy_activities(activities=[add])
    await workflow.sleep_for(seconds)
    total: int = await acts.add(1, 2)
    return total


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_sleep_firing_as_the_job_is_interrupted_records_nothing_after(
    backend: str,
) -> None:
    """Interrupts land just before, at and just after the sleeps' due time (the
    timer fires through ``hm_advance``). An interrupted job stays interrupted,
    and no step is recorded after the interrupt."""
    async with app(backend) as mf:
        await mf.worker("q", workflows=[sleep_then_work], activities=[add], concurrency=20)
        handles = [
            await mf.workflow.start("t", "sleep_then_work", f"s{i}", [0.3], "q") for i in range(16)
        ]
        await asyncio.sleep(0.25)
        interrupted = []
        for handle in handles:
            await asyncio.sleep(0.008)
            if await handle.interrupt("stop"):
                interrupted.append(handle)
        await asyncio.sleep(0.6)  # any late timer or run has had its chance
        for handle in interrupted:
            with pytest.raises(WorkflowInterrupted):
                await handle.result(timeout=5)
            export = await handle.export()
            assert export.status == "interrupted"
            assert export.finished_at is not None
            # The activity only if the run dispatched it before the interrupt.
            assert [s.kind for s in export.timeline] in ([], ["sleep"], ["sleep", "activity"])
            assert all(s.started_at <= export.finished_at for s in export.timeline)
        for handle in handles:
            if handle not in interrupted:
                assert await handle.result(timeout=10) == 3


# -- 11. hook threads advancing beside the main thread --------------------------------


async def hook_sum(n: int, config: dict[str, Any]) -> None:
    acts = workflow.proxy_activities(activities=[add])
    total = 0
    for i in range(n):
        total = await acts.add(total, i)
    await workflow.sleep_for(0.02)
    parts = await asyncio.gather(*(acts.add(total, i) for i in range(3)))
    await workflow.signal(config["signal"], list(parts))


async def with_hooks(n: int) -> list[Any]:
    acts = workflow.proxy_activities(activities=[add])
    hooks = [asyncio.ensure_future(workflow.exec_hook(None, "hook_sum", [n])) for _ in range(3)]
    mine = await asyncio.gather(*(acts.add(100, i) for i in range(4)))
    return [list(mine), *await asyncio.gather(*hooks)]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_hook_threads_and_the_main_thread_advance_side_by_side(backend: str) -> None:
    """Hook threads commit through ``hm_advance`` with their thread's activation
    (compare-and-set on ``threads``), beside the main thread's, with two workers:
    every thread ends with its own answers."""
    async with app(backend) as mf:
        for _ in range(2):
            await mf.worker("q", workflows=[with_hooks, hook_sum], activities=[add])
        handles = [await mf.workflow.start("t", "with_hooks", f"h{i}", [4], "q") for i in range(4)]
        total = sum(range(4))
        expected = [[100, 101, 102, 103]] + [[total, total + 1, total + 2]] * 3
        for handle in handles:
            assert await handle.result(timeout=60) == expected


# -- 12. a signal racing its wait's timeout -----------------------------------------


async def wait_briefly() -> Any:
    try:
        return await workflow.wait_for("ping", timeout=0.3)
    except Exception as exc:  # WaitTimeout
        return type(exc).__name__


async def test_a_signal_sent_as_its_wait_times_out_is_delivered_or_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found failing (fixed with this test): a deadlock. The wait's timeout answers
    the step, then removes the waiter (locks: step row, then waiter row);
    ``hm_deliver`` takes the waiter, then answers its step (waiter row, then
    step row). When they meet, PostgreSQL aborts one: here the user's
    ``signal()`` raises ``psycopg.errors.DeadlockDetected`` after a second, and
    the signal is neither delivered nor kept. (Had the timer been the victim,
    its task would wait out its lease.) The window is held open by a pause
    between the two statements of the timer's transaction."""
    from hotmesh_postgres.signal import PgSignal

    remove_waiter = PgSignal.remove_waiter
    entered = asyncio.Event()

    async def slow_remove_waiter(self: PgSignal, job_id: str, dimension: str, index: int) -> None:
        entered.set()
        await asyncio.sleep(0.5)  # the step is answered (locked), the waiter not yet gone
        await remove_waiter(self, job_id, dimension, index)

    monkeypatch.setattr(PgSignal, "remove_waiter", slow_remove_waiter)
    async with app("postgres") as mf:
        await mf.worker("q", workflows=[wait_briefly])
        handle = await mf.workflow.start("t", "wait_briefly", "w", [], "q")
        await asyncio.wait_for(entered.wait(), 10)
        taken = await mf.workflow.signal("ping", 1)
        outcome = await handle.result(timeout=20)
        assert (outcome, taken) in [(1, True), ("WaitTimeout", False)]


# -- 13. an interrupt racing an inline answer's commit ------------------------------

GATE: dict[str, asyncio.Event] = {}


async def gated(x: int) -> int:
    GATE["started"].set()
    await GATE["go"].wait()
    return x


async def gated_chain() -> int:
    acts = workflow.proxy_activities(activities=[gated])
    first: int = await acts.gated(1)
    second: int = await acts.gated(2)
    return first + second


async def test_an_interrupt_racing_an_inline_answers_commit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found failing (fixed: hm_advance now locks the job row first; it was
    keeps): a deadlock. ``hm_advance`` answers the inline activity (its step
    row), deletes its task (the task row), then moves the job's activation (the
    job row); an interrupt updates the job row, then deletes the job's tasks.
    When they meet, PostgreSQL waits ``deadlock_timeout`` (1 s) and aborts one:
    the worker's commit, which logs ``DeadlockDetected`` with a traceback at
    ERROR and goes the ordinary way (the interrupt itself waited the second).
    The window is held open by a pause in the interrupt between its two
    statements. Suggested fix: ack the answers' tasks after the activation's
    compare-and-set in ``hm_advance`` (and ``continue_inline``'s general path),
    so that both take the job row first."""
    from hotmesh_postgres.stream import PgStream

    GATE.update(started=asyncio.Event(), go=asyncio.Event())
    remove_job_tasks = PgStream.remove_job_tasks

    async def slow_remove(self: PgStream, job_id: str, dimension: str | None = None) -> int:
        GATE["go"].set()  # the activity returns: its commit meets the interrupt
        await asyncio.sleep(0.5)
        return await remove_job_tasks(self, job_id, dimension)

    monkeypatch.setattr(PgStream, "remove_job_tasks", slow_remove)
    async with app("postgres") as mf:
        await mf.worker("q", workflows=[gated_chain], activities=[gated])
        handle = await mf.workflow.start("t", "gated_chain", "g", [], "q")
        await asyncio.wait_for(GATE["started"].wait(), 10)
        assert await handle.interrupt("stop") is True
        with pytest.raises(WorkflowInterrupted):
            await handle.result(timeout=10)
        await asyncio.sleep(0.5)
    deadlocks = [r for r in caplog.records if "deadlock" in (r.exc_text or r.getMessage())]
    assert deadlocks == []


# -- 14. many waiters, many signals of one id ------------------------------------------


async def take_one(signal_id: str) -> Any:
    return await workflow.wait_for(signal_id)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_signals_of_one_id_racing_many_waiters_each_reach_one_waiter(backend: str) -> None:
    """Twelve jobs wait on one signal id while twelve signals of it are sent at
    once, some before the waits register (kept), some after (delivered to the
    oldest live waiter): each job gets one, and no signal is lost or doubled."""
    async with app(backend) as mf:
        await mf.worker("q", workflows=[take_one], concurrency=20)
        early = [mf.workflow.signal("shared", {"n": n, "s": "é'"}) for n in range(4)]
        starts = [
            mf.workflow.start("t", "take_one", f"taker-{i}", ["shared"], "q") for i in range(12)
        ]
        late = [mf.workflow.signal("shared", {"n": n, "s": "é'"}) for n in range(4, 12)]
        done: list[Any] = list(await asyncio.gather(*early, *starts, *late))
        handles = done[4:16]
        got = [await handle.result(timeout=30) for handle in handles]
        assert sorted(item["n"] for item in got) == list(range(12))


async def sleeps_and_signals(i: int) -> list[Any]:
    acts = workflow.proxy_activities(activities=[add])
    await workflow.sleep_for(0.1)
    got = await workflow.wait_for(f"cut-{i}")
    total = await acts.add(got, i)
    await workflow.sleep_for(0.1)
    return [got, await acts.add(total, 1)]


async def test_sleeps_and_signals_survive_connections_cut_mid_transition() -> None:
    """W4-like (sleeps fired through ``hm_advance``, signals kept and delivered
    by ``hm_deliver``) while the server cuts the app's connections: every job
    completes once, with its own signal's data."""
    async with app("postgres") as mf:
        for _ in range(2):
            await mf.worker("q", workflows=[sleeps_and_signals], activities=[add], lease=60)
        for i in range(20):
            await mf.workflow.signal(f"cut-{i}", i * 10)  # kept until its wait comes
        handles = [
            await mf.workflow.start("t", "sleeps_and_signals", f"w4-{i}", [i], "q")
            for i in range(20)
        ]
        loop = asyncio.get_running_loop()
        began = loop.time()
        for _ in range(8):
            await asyncio.sleep(0.12)
            await asyncio.to_thread(drop_connections, mf.app_id)
        results = [await handle.result(timeout=40) for handle in handles]
        assert results == [[i * 10, i * 11 + 1] for i in range(20)]
        assert loop.time() - began < 40


async def inline_generations(n: int) -> Any:
    """As ``generations``, with ``slow`` run inline by the workflow's own worker."""
    if n == 0:
        acts = workflow.proxy_activities(activities=[slow])
        racing = [
            asyncio.ensure_future(acts.slow(0)),
            asyncio.ensure_future(workflow.sleep_for(0.2)),
        ]
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        await workflow.continue_as_new(1)
    later = workflow.proxy_activities(activities=[fast], task_queue="later")
    return await later.fast(n)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_inline_activity_outliving_its_generation_does_not_strand_the_job(
    backend: str,
) -> None:
    """Found failing (fixed with this test): the job is stuck for good. Generation 0's first
    run dispatched ``slow`` inline (leased to its worker) and a sleep; the
    sleep won and the workflow continued as new. When ``slow`` returns, the
    worker resumes that stale run with it: the commit answers generation 1's
    step 0 (``fast``) with ``'slow-0'``, and its compare-and-set of activation
    0 -> 1 succeeds (``continue_as_new`` reset the activation to 0), so the
    stale run continues as new again: generation 2. Generation 2's run is then
    resumed from the worker's cache, which holds generation 1's suspended run
    at activation 0 (the cache checks the activation, not the generation): it
    waits on a step generation 2 never recorded, and nothing is dispatched.
    The job stays 'running' with no step and no task."""
    async with app(backend) as mf:
        await mf.worker("q", workflows=[inline_generations], activities=[slow])
        handle = await mf.workflow.start("t", "inline_generations", "ig", [0], "q")
        await asyncio.sleep(2.0)  # slow (1 s) has returned
        await mf.worker("later", activities=[fast])
        assert await handle.result(timeout=15) == "fast-1"
        assert (await handle.export()).generation == 1


# -- 15. the idle wait ends when the next task comes due ----------------------------


async def three_naps() -> str:
    for _ in range(3):
        await workflow.sleep_for(0.3)
    return "rested"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_sleeps_end_on_time_when_the_poll_interval_is_long(backend: str) -> None:
    """With a 10 s poll interval only the claim's "next due" (or a wake-up)
    can end the idle wait in time: three 0.3 s sleeps take about 0.9 s, not
    tens of seconds."""
    async with app(backend) as mf:
        await mf.worker("q", workflows=[three_naps], poll_interval=10.0)
        loop = asyncio.get_running_loop()
        began = loop.time()
        handle = await mf.workflow.start("t", "three_naps", "naps", [], "q")
        assert await handle.result(timeout=30) == "rested"
        assert 0.9 <= loop.time() - began < 3.0


async def nap_then_add() -> int:
    acts = workflow.proxy_activities(activities=[add])
    await workflow.sleep_for(0.5)
    total: int = await acts.add(1, 1)
    return total


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_sleep_of_a_crashed_workers_cached_run_goes_on_after_sticky_wait(
    backend: str,
) -> None:
    """Found failing (fixed with this test) (before and after c40c26b). The worker that
    cached the run dies while it sleeps (``stop(drain=False)``: nothing handed
    on). The sleep's wake-up is sticky to that worker (the step's
    ``wake_worker``; c40c26b carries it in the timer's payload): another
    worker may take it after ``sticky_wait`` (2 s). But the idle wait does not
    count that moment: the claim's "next due" (and the old due-time query)
    only look at ``visible_at > now``, and the sticky run is visible already.
    So the run waits for the next poll: 15 s here, instead of 2 s."""
    async with app(backend) as mf:
        doomed = await mf.worker("q", workflows=[nap_then_add], activities=[add])
        handle = await mf.workflow.start("t", "nap_then_add", "nap", [], "q")
        for _ in range(100):
            if [s.kind for s in (await handle.export()).timeline] == ["sleep"]:
                break
            await asyncio.sleep(0.02)
        await doomed.stop(drain=False)
        mf.workers.remove(doomed)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await mf.worker("q", workflows=[nap_then_add], activities=[add], poll_interval=15.0)
        assert await handle.result(timeout=30) == 2
        assert loop.time() - began < 5.0  # sticky_wait (2 s) and a margin


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_worker_killed_again_and_again_mid_transition_loses_nothing(
    backend: str,
) -> None:
    """A worker under a stable id is killed (``stop(drain=False)``: its tasks
    cancelled wherever they are, mid-``hm_advance`` too) and started again,
    six times, while 20 W1 chains run: it takes its leases back at once, and
    every job completes once with every step recorded once."""
    async with app(backend) as mf:
        worker = await mf.worker("q", workflows=[chain], activities=[add], worker_id="w-stable")
        handles = [await mf.workflow.start("t", "chain", f"k{i}", [10], "q") for i in range(20)]
        for round_ in range(6):
            await asyncio.sleep(0.05 + 0.03 * round_)
            await worker.stop(drain=False)
            await worker.start()
        results = [await handle.result(timeout=60) for handle in handles]
        assert results == [sum(range(10))] * 20
        for handle in handles:
            steps = [s for s in (await handle.export()).timeline if s.kind == "activity"]
            assert [s.index for s in steps] == list(range(10))
            assert [s.result for s in steps] == [sum(range(i + 1)) for i in range(10)]
