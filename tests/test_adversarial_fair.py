"""Adversarial tests of the claim loop's fairness to queued work (commit c32a4ae:
``Worker._claim_first``) and of migration 0016 (tasks and waiters never truncated
by VACUUM; hm_advance deletes its acked tasks one id at a time).

Narrow races are driven by hand: a patched awaitable that waits for the test, or
that makes, at the one moment it matters, the move a busy process makes there.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any, cast

import psycopg
import pytest
from psycopg import sql
from test_adversarial_claim import app
from test_postgres_roles import Layout, layout  # noqa: F401 (the fixture)

from hotmesh_core import MemFlow, workflow
from hotmesh_core.group_commit import ADVANCE_MANY
from hotmesh_core.plugins import backend_test_options
from hotmesh_postgres import migrations as pg_migrations
from hotmesh_postgres.backend import PostgresBackend
from hotmesh_postgres.migrations import MigrationRequired
from hotmesh_postgres.testing import test_dsn

# The newest schema version: a migration from 15 applies 16 and what came after.
LATEST = max(m.version for m in pg_migrations.migrations())

BACKENDS = ["memory", "postgres"]

# -- workflows and activities -------------------------------------------------------

# Per key: set when the activity began; the activity returns once released.
ENTERED: dict[str, asyncio.Event] = {}
RELEASE: dict[str, asyncio.Event] = {}
RUNNING: dict[str, int] = {}
PEAK: dict[str, int] = {}


def _event(table: dict[str, asyncio.Event], key: str) -> asyncio.Event:
    event = table.get(key)
    if event is None:
        event = table[key] = asyncio.Event()
    return event


async def hold(key: str, group: str) -> str:
    RUNNING[group] = RUNNING.get(group, 0) + 1
    PEAK[group] = max(PEAK.get(group, 0), RUNNING[group])
    try:
        _event(ENTERED, key).set()
        await _event(RELEASE, key).wait()
    finally:
        RUNNING[group] -= 1
    return key


async def quick(key: str, group: str) -> str:
    RUNNING[group] = RUNNING.get(group, 0) + 1
    PEAK[group] = max(PEAK.get(group, 0), RUNNING[group])
    try:
        await asyncio.sleep(0)
    finally:
        RUNNING[group] -= 1
    return key


async def held(key: str, group: str) -> str:
    acts = workflow.proxy_activities(activities=[hold])
    return await acts.hold(key, group)  # type: ignore[no-any-return]


async def fast(key: str, group: str) -> str:
    acts = workflow.proxy_activities(activities=[quick])
    return await acts.quick(key, group)  # type: ignore[no-any-return]


async def napper(key: str, group: str, seconds: float) -> str:
    await workflow.sleep_for(seconds)
    acts = workflow.proxy_activities(activities=[quick])
    return await acts.quick(key, group)  # type: ignore[no-any-return]


async def waiter(key: str, group: str) -> str:
    data = await workflow.wait_for(f"{key}-go")
    acts = workflow.proxy_activities(activities=[quick])
    return await acts.quick(f"{key}:{data}", group)  # type: ignore[no-any-return]


WORKFLOWS: list[Callable[..., Any]] = [held, fast, napper, waiter]
ACTIVITIES: list[Callable[..., Any]] = [hold, quick]


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "the state the test drives to never came"
        await asyncio.sleep(0.005)


def gate_handoffs(worker: Any, job_ids: set[str]) -> asyncio.Event:
    """The eager starts of ``job_ids`` commit at once, but their runs reach the
    worker only once the returned event is set: their start's commit is slow
    to come back (a round trip of PostgreSQL under load), so the owner handed
    out counts as a slot (``_eager_pending``) and no task is in flight yet."""
    gate = asyncio.Event()
    original = worker.take_started

    def take_started(owner: str, job: Any, run: Any) -> None:
        if run.job_id not in job_ids:
            original(owner, job, run)
            return

        async def later() -> None:
            await gate.wait()
            original(owner, job, run)

        pending = asyncio.get_running_loop().create_task(later())
        _KEEP.add(pending)
        pending.add_done_callback(_KEEP.discard)

    worker.take_started = take_started
    return gate


_KEEP: set[asyncio.Task[Any]] = set()


async def claim_first_stuck_on_a_long_run(
    mf: MemFlow, other: MemFlow, worker: Any, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drive ``worker`` (concurrency=2) to: one long run in flight (``{key}-A``,
    its activity held), the other slot free, ``_claim_first`` set, and the claim
    loop waiting on the tasks in flight when it last looked (only the long one).

    How a busy process gets there: the loop finds both slots taken (the long
    run, an eager start S1) and waits on them; past its idle wait S1 ends, and
    before the loop wakes the process starts S2 eagerly (the slot is free);
    S2's start has not come back yet when the loop looks: no slot, idle wait
    over, ``_claim_first``; it waits on what is in flight, the long run only.
    S2 then arrives, runs, and ends: its slot is free, nobody wakes the loop."""
    group = key
    await other.workflow.start("t", "held", f"{key}-A", [f"{key}-A", group], "q")
    await asyncio.wait_for(_event(ENTERED, f"{key}-A").wait(), 10)
    gate = gate_handoffs(worker, {f"{key}-S2"})
    loop_name = f"hotmesh:{worker.id}"
    armed = False
    handles: dict[str, Any] = {}
    original_wait = asyncio.wait

    async def wait(fs: Any, **kwargs: Any) -> Any:
        nonlocal armed
        task = asyncio.current_task()
        outcome = await original_wait(fs, **kwargs)
        if armed and outcome[0] and task is not None and task.get_name() == loop_name:
            armed = False  # S1 ended; the loop has not looked yet
            handles["S2"] = await mf.workflow.start(
                "t", "fast", f"{key}-S2", [f"{key}-S2", group], "q"
            )
            # (eager on c32a4ae: _eager_pending is 1 now; a loop that wakes
            # within its idle wait was owed the slot already: S2 is queued)
        return outcome

    monkeypatch.setattr(asyncio, "wait", wait)
    await mf.workflow.start("t", "held", f"{key}-S1", [f"{key}-S1", group], "q")
    await asyncio.wait_for(_event(ENTERED, f"{key}-S1").wait(), 10)
    await until(lambda: worker._no_slot_since is not None)
    await asyncio.sleep(worker._idle_wait * 2)
    armed = True
    _event(RELEASE, f"{key}-S1").set()
    await until(lambda: "S2" in handles)
    gate.set()
    assert await handles["S2"].result(timeout=5) == f"{key}-S2"
    # Now: one slot free, the loop owed it (it was when it last looked), and
    # waiting on what was in flight then, the long run only.


# -- findings -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("what", ["eager start", "queued start", "signal", "armed sleep"])
async def test_work_is_not_held_up_by_a_long_run_once_the_loop_is_owed_a_slot(
    backend: str, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """concurrency=2: a long activity holds one slot; eager starts come one after
    another in the other. Once the claim loop has been owed a slot (it found
    none for its idle wait) and the slot then frees without waking it (the run
    in it came after the loop last looked), what this process hands its worker
    goes through the queue (a start, a signal to a cached run, an armed sleep's
    firing), and nothing claims it until the long activity ends: a workflow of
    no time waits as long as someone else's activity runs (here: for ever).
    Before c32a4ae the free slot took the start, the signal and the firing at
    once (a job queued by another client waited as it does now)."""
    key = f"fair-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf, app(backend, mf.app_id) as other:
        worker = await mf.worker(
            "q", workflows=WORKFLOWS, activities=ACTIVITIES, concurrency=2, poll_interval=0.05
        )
        try:
            if what == "signal":
                pending = await mf.workflow.start("t", "waiter", f"{key}-W", [f"{key}-W", key], "q")
                await until(lambda: worker._cache.size > 0 and not worker._inflight)
            elif what == "armed sleep":
                pending = await mf.workflow.start(
                    "t", "napper", f"{key}-N", [f"{key}-N", key, 2.0], "q"
                )
                await until(lambda: bool(worker._armed) and not worker._inflight)
            await claim_first_stuck_on_a_long_run(mf, other, worker, key, monkeypatch)
            if what == "eager start":
                pending = await mf.workflow.start("t", "fast", f"{key}-S3", [f"{key}-S3", key], "q")
                expected = f"{key}-S3"
            elif what == "queued start":
                pending = await other.workflow.start(
                    "t", "fast", f"{key}-Q", [f"{key}-Q", key], "q"
                )
                expected = f"{key}-Q"
            elif what == "signal":
                await mf.workflow.signal(f"{key}-W-go", 7)
                expected = f"{key}-W:7"
            else:
                assert worker._armed, "the sleep fired before the state was reached"
                expected = f"{key}-N"
            assert await pending.result(timeout=4) == expected
        finally:
            _event(RELEASE, f"{key}-A").set()
        long = await mf.workflow.get_handle(f"{key}-A")
        assert await long.result(timeout=10) == f"{key}-A"
        assert PEAK[key] <= 2


async def nap_hold(key: str, group: str, seconds: float) -> str:
    await workflow.sleep_for(seconds)
    acts = workflow.proxy_activities(activities=[hold])
    return await acts.hold(key, group)  # type: ignore[no-any-return]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_sleep_that_waits_for_a_slot_takes_the_one_that_frees(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """concurrency=2, one slot held by a long activity. Two cached runs sleep;
    the first to wake takes the other slot and runs an activity for longer than
    the idle wait; the second wakes meanwhile and waits for a slot. When the
    first ends, its slot is free and nothing is queued: the second must resume
    at once. The claim loop counts the waiting firing as a slot taken (it is
    in flight), so it was owed the slot and claimed nothing; the firing, seeing
    the loop owed it, found no slot: both waited for each other until the
    firing's patience ran out (ARMED_TIMER_GRACE / 2 = 0.5 s), and the sleep
    then went through the queue (a wake-up, a claim, a read).

    Driven by hand: when the first ends, the claim loop looks before the
    waiting firing does (the order when the loop waited first, as here; the
    firing's wait yields a moment once it returns)."""
    key = f"nap-{uuid.uuid4().hex[:6]}"
    original_wait = asyncio.wait
    firings: set[Any] = set()

    async def wait(fs: Any, **kwargs: Any) -> Any:
        outcome = await original_wait(fs, **kwargs)
        if asyncio.current_task() in firings and outcome[0]:
            await asyncio.sleep(0.01)  # the loop, woken too, looks first
        return outcome

    monkeypatch.setattr(asyncio, "wait", wait)
    async with app(backend) as mf, app(backend, mf.app_id) as other:
        worker = await mf.worker(
            "q",
            workflows=[*WORKFLOWS, nap_hold],
            activities=ACTIVITIES,
            concurrency=2,
            poll_interval=0.05,
        )
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
            await until(lambda: len(worker._waiting_firings) == 1)  # the second's firing
            firings.update(worker._waiting_firings)
            await asyncio.sleep(0.02)  # the loop has been owed a slot since the first fired
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


# -- migration 0016 ------------------------------------------------------------------


ALL_MIGRATIONS = pg_migrations.migrations


def at_most(version: int) -> list[Any]:
    return [m for m in ALL_MIGRATIONS() if m.version <= version]


async def schema_at(schema: str, version: int) -> None:
    async with await psycopg.AsyncConnection.connect(test_dsn(), autocommit=True) as conn:
        await pg_migrations._migrate(conn, schema, at_most(version), None)


def drop_schema(schema: str) -> None:
    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


ACK_CASES: list[tuple[str, Any]] = [
    ("missing", None),
    ("json null", "null"),
    ("empty", []),
    ("one", ["A"]),
    ("duplicates", ["A", "A", "B"]),
    ("as strings", ["sA", "sB"]),
    ("unknown ids", ["A", 9_000_000_000]),
    ("null element", [None, "B"]),
    ("out of order", ["C", "A", "B"]),
    ("not a number", ["A", "x"]),
    ("a fraction", ["A", 1.5]),
    ("too big", ["A", 99_999_999_999_999_999_999]),
    ("an object", {"a": 1}),
    ("a scalar", 5),
]


def ack_outcomes(schema: str) -> dict[str, tuple[str | None, list[str]]]:
    """Per case: the error hm_advance raised (its SQLSTATE) or None, and which
    of three fresh tasks A, B, C are left."""
    outcomes: dict[str, tuple[str | None, list[str]]] = {}
    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        for name, acks in ACK_CASES:
            conn.execute("DELETE FROM tasks")
            ids = {}
            for label in "ABC":
                row = conn.execute(
                    "INSERT INTO tasks (queue, kind, job_id, dimension, name)"
                    " VALUES ('q', 'activity', %s, '', 'n') RETURNING id",
                    [f"job-{label}"],
                ).fetchone()
                assert row is not None
                ids[label] = int(row[0])

            def resolve(item: Any, ids: dict[str, int] = ids) -> Any:
                if isinstance(item, str) and item in ids:
                    return ids[item]
                if isinstance(item, str) and item[:1] == "s" and item[1:] in ids:
                    return str(ids[item[1:]])
                return item

            payload: dict[str, Any] = {"job_id": "no-such-job", "dimension": ""}
            if acks == "null":
                payload["acks"] = None
            elif isinstance(acks, list):
                payload["acks"] = [resolve(item) for item in acks]
            elif acks is not None:
                payload["acks"] = acks
            error: str | None = None
            try:
                with conn.transaction():
                    conn.execute(
                        "SELECT hm_advance(%s::jsonb, NULL, ARRAY['completed'], 'c1', 'c2')",
                        [json.dumps(payload)],
                    )
            except psycopg.Error as failure:
                error = failure.sqlstate
            left = conn.execute("SELECT job_id FROM tasks ORDER BY job_id").fetchall()
            outcomes[name] = (error, [str(row[0])[-1] for row in left])
    return outcomes


def test_acks_behave_as_before_migration_16() -> None:
    """hm_advance's acks, one DELETE per id (0016) against one DELETE of
    ``id = ANY(ARRAY(...))`` (0015): the same tasks go for every shape of the
    acks array (missing, null, empty, duplicated, strings, unknown ids, nulls,
    out of order), and the same payloads fail (and delete nothing: all or none)."""
    old, new = f"advack{uuid.uuid4().hex[:8]}", f"advack{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(schema_at(old, 15))
        asyncio.run(schema_at(new, 16))
        before, after = ack_outcomes(old), ack_outcomes(new)
        assert after == before
        assert after["duplicates"] == (None, ["C"])
        assert after["as strings"] == (None, ["C"])
        assert after["null element"] == (None, ["A", "C"])
        assert after["not a number"][0] is not None and after["not a number"][1] == list("ABC")
    finally:
        drop_schema(old)
        drop_schema(new)


def reloptions(schema: str) -> dict[str, list[str]]:
    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, coalesce(c.reloptions, '{}') FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname IN ('tasks', 'waiters')",
            [schema],
        ).fetchall()
    return {str(name): sorted(options) for name, options in rows}


async def test_migration_16_under_a_running_worker_of_version_15(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An app at version 15 with work in hand (jobs waiting for signals, a stream
    of three-step jobs running on a worker of that version) is migrated to 16
    by another process meanwhile. Nothing is lost or run twice, the waiters
    are still answered, acked tasks are gone, and the tables keep the options
    they had (fillfactor, autovacuum) with vacuum_truncate added."""
    app_id = f"advmig{uuid.uuid4().hex[:8]}"
    key = f"mig-{uuid.uuid4().hex[:6]}"
    try:
        await schema_at(app_id, 15)
        monkeypatch.setattr(pg_migrations, "migrations", lambda: at_most(15))
        # A worker of version 15 had no group commit (hm_advance_many came with
        # 17): its commits go alone. Today's code on a schema of 15 would send
        # hm_advance_many whenever two of its commits overlapped (the test
        # failed then, now and again).
        capabilities = PostgresBackend.capabilities - {ADVANCE_MANY}
        monkeypatch.setattr(PostgresBackend, "capabilities", capabilities)
        options = backend_test_options("postgres")
        options["drop_on_close"] = False
        async with MemFlow.init(app_id=app_id, backend="postgres", **options) as old:
            assert ADVANCE_MANY not in old.backend.capabilities  # as a worker of 15
            await old.worker("q", workflows=WORKFLOWS, activities=ACTIVITIES, concurrency=4)
            waiting = [
                await old.workflow.start("t", "waiter", f"{key}-w{i}", [f"{key}-w{i}", key], "q")
                for i in range(5)
            ]
            stop = asyncio.Event()
            done: list[str] = []

            async def stream(n: int) -> None:
                i = 0
                while not stop.is_set():
                    job = f"{key}-{n}-{i}"
                    handle = await old.workflow.start("t", "fast", job, [job, key], "q")
                    done.append(await handle.result(timeout=20))
                    i += 1

            streams = [asyncio.create_task(stream(n)) for n in range(3)]
            await until(lambda: len(done) >= 20)
            monkeypatch.undo()
            async with await psycopg.AsyncConnection.connect(test_dsn(), autocommit=True) as conn:
                assert await pg_migrations.apply_migrations(conn, app_id) == list(
                    range(16, LATEST + 1)
                )
            count = len(done)
            await until(lambda: len(done) >= count + 20)
            for i in range(5):
                await old.workflow.signal(f"{key}-w{i}-go", i)
            stop.set()
            await asyncio.gather(*streams)
            assert [await h.result(timeout=20) for h in waiting] == [
                f"{key}-w{i}:{i}" for i in range(5)
            ]
            assert len(done) == len(set(done))
        with psycopg.connect(test_dsn(), autocommit=True) as db:
            db.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(app_id)))
            assert db.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
            assert db.execute("SELECT count(*) FROM waiters").fetchone() == (0,)
            statuses = db.execute("SELECT status, count(*) FROM jobs GROUP BY 1").fetchall()
            assert dict(statuses) == {"completed": len(done) + 5}
        options_now = reloptions(app_id)
        assert "vacuum_truncate=false" in options_now["tasks"]
        assert "vacuum_truncate=false" in options_now["waiters"]
        assert "fillfactor=70" in options_now["tasks"]
    finally:
        drop_schema(app_id)


async def test_an_owner_migrates_15_to_16_and_the_worker_role_acks(
    layout: Layout,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Least privilege across the upgrade: the owner provisioned the app at 15
    and granted the worker role; a worker of 16 with that role may not migrate
    (MigrationRequired, nothing half done); the owner migrates (ALTER TABLE ...
    SET needs the table's owner: it has it); the worker role then runs jobs
    whose advances ack tasks and answer waiters."""
    app_id = f"advrole{uuid.uuid4().hex[:6]}"
    worker_role = layout.workers["one"]
    key = f"role-{uuid.uuid4().hex[:6]}"
    monkeypatch.setattr(pg_migrations, "migrations", lambda: at_most(15))
    async with MemFlow.Client(app_id=app_id, backend="postgres", dsn=layout.dsn(layout.owner)) as c:
        backend = c.backend
        await backend.grant(worker_role)  # type: ignore[attr-defined]
    monkeypatch.undo()
    with pytest.raises(MigrationRequired):
        async with MemFlow.init(app_id=app_id, backend="postgres", dsn=layout.dsn(worker_role)):
            pass
    async with MemFlow.Client(app_id=app_id, backend="postgres", dsn=layout.dsn(layout.owner)):
        pass  # the owner migrates
    with psycopg.connect(layout.admin) as conn:
        versions = conn.execute(
            sql.SQL("SELECT max(version) FROM {}.migrations").format(sql.Identifier(app_id))
        ).fetchone()
        assert versions == (LATEST,)
        owners = conn.execute(
            "SELECT pg_get_userbyid(c.relowner), c.reloptions FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = 'tasks'",
            [app_id],
        ).fetchone()
        assert owners is not None and owners[0] == layout.owner
        assert "vacuum_truncate=false" in owners[1]
    async with MemFlow.init(app_id=app_id, backend="postgres", dsn=layout.dsn(worker_role)) as mf:
        await mf.worker("q", workflows=WORKFLOWS, activities=ACTIVITIES, concurrency=2)
        waiting = await mf.workflow.start("t", "waiter", f"{key}-w", [f"{key}-w", key], "q")
        handles = [
            await mf.workflow.start("t", "fast", f"{key}-{i}", [f"{key}-{i}", key], "q")
            for i in range(10)
        ]
        assert [await h.result(timeout=20) for h in handles] == [f"{key}-{i}" for i in range(10)]
        await mf.workflow.signal(f"{key}-w-go", 1)  # taken now, or kept until it waits
        assert await waiting.result(timeout=20) == f"{key}-w:1"
    with psycopg.connect(layout.admin) as conn:
        left = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.tasks").format(sql.Identifier(app_id))
        ).fetchone()
        assert left == (0,)


# -- pinned: what fairness keeps ---------------------------------------------------------


def count_eager(worker: Any) -> dict[str, int]:
    """Job ids whose first run this worker took eagerly (take_started with a job)."""
    taken: dict[str, int] = {}
    original = worker.take_started

    def take_started(owner: str, job: Any, run: Any) -> None:
        if job is not None:
            taken[run.job_id] = taken.get(run.job_id, 0) + 1
        original(owner, job, run)

    worker.take_started = take_started
    return taken


@pytest.mark.parametrize("backend", BACKENDS)
async def test_eager_starts_come_back_after_stop_and_start_while_owed(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker is stopped (a crash: drain=False) while its claim loop is owed
    a slot; started again, it claims, and starts of this process are eager
    again (``_claim_first`` does not outlive the loop that set it)."""
    key = f"restart-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf, app(backend, mf.app_id) as other:
        worker = await mf.worker(
            "q", workflows=WORKFLOWS, activities=ACTIVITIES, concurrency=2, poll_interval=0.05
        )
        try:
            await claim_first_stuck_on_a_long_run(mf, other, worker, key, monkeypatch)
            monkeypatch.undo()
            await worker.stop(drain=False)
            await worker.start()
            taken = count_eager(worker)
            await until(lambda: not worker._claim_first)
            await asyncio.sleep(0.1)  # the loop is idle: both slots free
            handles = [
                await mf.workflow.start("t", "fast", f"{key}-R{i}", [f"{key}-R{i}", key], "q")
                for i in range(3)
            ]
            for i, handle in enumerate(handles):
                assert await handle.result(timeout=5) == f"{key}-R{i}"
            assert taken.get(f"{key}-R0") == 1
        finally:
            _event(RELEASE, f"{key}-A").set()
        assert PEAK[key] <= 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("concurrency,streams", [(2, 4), (4, 8)])
async def test_queued_work_is_not_starved_by_many_streams_of_eager_starts(
    backend: str, concurrency: int, streams: int
) -> None:
    """More streams than slots, at concurrency > 1: a job another client queues
    is run within about the poll interval, and the slots are never exceeded."""
    key = f"streams-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf, app(backend, mf.app_id) as other:
        worker = await mf.worker(
            "q",
            workflows=WORKFLOWS,
            activities=ACTIVITIES,
            concurrency=concurrency,
            poll_interval=0.05,
        )
        taken = count_eager(worker)
        stop = asyncio.Event()

        async def stream(n: int) -> None:
            i = 0
            while not stop.is_set():
                job = f"{key}-{n}-{i}"
                handle = await mf.workflow.start("t", "napper", job, [job, key, 0.02], "q")
                assert await handle.result(timeout=20) == job
                i += 1

        running = [asyncio.create_task(stream(n)) for n in range(streams)]
        try:
            await asyncio.sleep(0.4)
            queued = await other.workflow.start("t", "fast", f"{key}-Q", [f"{key}-Q", key], "q")
            assert await queued.result(timeout=3) == f"{key}-Q"
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*running), 20)
        assert PEAK[key] <= concurrency
        assert taken, "no start was eager"


async def test_a_burst_of_starts_keeps_its_eager_path() -> None:
    """W1's shape on PostgreSQL (sequential starts of a three-step workflow at
    concurrency 20, poll interval 1 s): fairness does not send the burst
    through the queue (measured at c32a4ae: 500 of 500 eager, as at 573f6a3)."""
    from bench.adapters.hotmesh import WORKFLOWS as BENCH_WORKFLOWS
    from bench.adapters.hotmesh import plus_one

    n = 200
    bench_workflows = cast("list[Callable[..., Any]]", BENCH_WORKFLOWS)
    async with app("postgres") as mf:
        worker = await mf.worker(
            "bench", workflows=bench_workflows, activities=[plus_one], concurrency=20
        )
        taken = count_eager(worker)
        handles = [
            await mf.workflow.start("bench", "sequential_3", args=[i], task_queue="bench")
            for i in range(n)
        ]
        assert [await h.result(timeout=60) for h in handles] == [i + 3 for i in range(n)]
        assert not worker._claim_first
    assert len(taken) >= 0.8 * n, f"only {len(taken)} of {n} starts were eager"
