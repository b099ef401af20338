"""Finished work is expired by dropping partitions (sql/migrations/0002).

A job started with ``expire`` is written, with all its history, into the
partition of the UTC day ``created_at + expire`` falls on, once a maintenance
pass has made that partition for that expire value; once the day is over and
every job in it has expired, the partition is dropped whole. The passes here
run "as of" a later time, which is how the tests move days.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_core.errors import WorkflowNotFound
from hotmesh_core.models import ErrorInfo, Task
from hotmesh_postgres.migrations import migrations
from hotmesh_postgres.testing import test_dsn


async def remember(note: str) -> str:
    entity = await workflow.entity()
    await entity.set({"note": note})
    await workflow.sleep_for(0.01)
    await entity.append("seen", note)
    return note


async def wait_for_go() -> str:
    data = await workflow.wait_for(f"go-{workflow.info().workflow_id}")
    return str(data)


async def wait_then_note() -> str:
    data = await workflow.wait_for(f"go-{workflow.info().workflow_id}")
    entity = await workflow.entity()
    await entity.set({"got": data})
    await entity.increment("count", 1)
    return str(data)


@pytest.fixture
async def mf() -> AsyncIterator[MemFlow]:
    app = await MemFlow.init(
        app_id=f"exp{uuid.uuid4().hex[:10]}", backend="postgres", dsn=test_dsn(), drop_on_close=True
    )
    await app.worker("q", workflows=[remember, wait_for_go, wait_then_note])
    try:
        yield app
    finally:
        await app.shutdown()


async def maintain(mf: MemFlow, days_later: float = 0) -> int:
    """One maintenance pass as of ``days_later`` days from now."""
    at = datetime.now(timezone.utc) + timedelta(days=days_later)
    return await mf.backend.maintain(now=at)  # type: ignore[call-arg, no-any-return]


def where(mf: MemFlow, job_id: str) -> dict[str, list[str]]:
    """The partitions holding a job's rows, per table."""
    schema = mf.app_id
    found: dict[str, list[str]] = {}
    with psycopg.connect(test_dsn()) as conn:
        for table, key in (("jobs", "id"), ("steps", "job_id"), ("entity_changes", "job_id")):
            rows = conn.execute(
                f'SELECT DISTINCT tableoid::regclass::text FROM "{schema}".{table}'
                f" WHERE {key} = %s",
                [job_id],
            ).fetchall()
            found[table] = sorted(name.split(".")[-1].strip('"') for (name,) in rows)
    return found


def partitions(mf: MemFlow, table: str) -> list[str]:
    with psycopg.connect(test_dsn()) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = %s::regclass ORDER BY 1",
            [f'"{mf.app_id}".{table}'],
        ).fetchall()
    return [name for (name,) in rows]


def day_bucket(at: datetime) -> str:
    return "d" + at.astimezone(timezone.utc).strftime("%Y%m%d")


async def test_expiring_jobs_live_in_their_day_and_go_with_its_partition(mf: MemFlow) -> None:
    history = ("jobs", "steps", "entity_changes")
    # The first job with a new expire value finds no partition: it stays in
    # 'keep', and the next pass learns the value and makes its days.
    first = await mf.workflow.start("note", "remember", "first", ["a"], "q", expire="1 hour")
    assert await first.result(timeout=10) == "a"
    assert where(mf, "first") == {t: [f"{t}_keep"] for t in history}
    assert await maintain(mf) == 0

    goes = await mf.workflow.start("note", "remember", "goes", ["b"], "q", expire="1 hour")
    kept = await mf.workflow.start("note", "remember", "stays", ["c"], "q")
    running = await mf.workflow.start("note", "wait_for_go", "runs", [], "q", expire="1 hour")
    assert await goes.result(timeout=10) == "b"
    assert await kept.result(timeout=10) == "c"
    created = datetime.fromtimestamp((await goes.export()).created_at, timezone.utc)
    day = day_bucket(created + timedelta(hours=1))
    assert where(mf, "goes") == {t: [f"{t}_{day}"] for t in history}
    assert where(mf, "stays") == {t: [f"{t}_keep"] for t in history}
    assert where(mf, "runs")["jobs"] == [f"jobs_{day}"]

    # Its id still makes starts idempotent, whatever the day.
    again = await mf.workflow.start("note", "remember", "goes", ["other"], "q", expire="9 days")
    assert await again.result(timeout=5) == "b"
    assert (await again.state()) == {"note": "b", "seen": ["b"]}
    assert (await mf.workflow.search(entity="note", limit=10)).count("goes") == 1

    # The day after the bucket's day, a job of that day still runs: the
    # partition stays; the expired job in 'keep' goes row by row.
    ahead = (datetime.strptime(day, "d%Y%m%d").date() - datetime.now(timezone.utc).date()).days
    assert await maintain(mf, days_later=ahead + 1) == 1
    assert f"jobs_{day}" in partitions(mf, "jobs")
    assert await goes.result() == "b"
    with pytest.raises(WorkflowNotFound):
        await mf.workflow.get_handle("first")

    # A day later still, the expired jobs of the held partition go row by row.
    assert await maintain(mf, days_later=ahead + 2) == 1
    with pytest.raises(WorkflowNotFound):
        await mf.workflow.get_handle("goes")
    await mf.workflow.signal("go-runs", "now")
    assert await running.result(timeout=10) == "now"
    assert where(mf, "runs")["steps"] == [f"steps_{day}"]

    # Once the last job of the day has expired, its partitions are dropped whole.
    assert await maintain(mf, days_later=ahead + 3) == 1
    for table in ("jobs", "threads", "steps", "entity_changes"):
        assert f"{table}_{day}" not in partitions(mf, table)
    with pytest.raises(WorkflowNotFound):
        await mf.workflow.get_handle("runs")
    assert await kept.result() == "c"


async def test_a_day_of_finished_work_is_dropped_in_one_piece(mf: MemFlow) -> None:
    await mf.workflow.start("note", "remember", "teach", ["t"], "q", expire="2 hours")
    await (await mf.workflow.get_handle("teach")).result(timeout=10)
    await maintain(mf)
    handles = [
        await mf.workflow.start("note", "remember", f"n{i}", [str(i)], "q", expire="2 hours")
        for i in range(5)
    ]
    for handle in handles:
        await handle.result(timeout=10)
    day = where(mf, "n0")["jobs"][0].removeprefix("jobs_")
    assert day.startswith("d")
    # Row-by-row removal of 'teach' and the dropped partition's five jobs.
    assert await maintain(mf, days_later=3) == 6
    assert f"jobs_{day}" not in partitions(mf, "jobs")
    assert await mf.workflow.search(entity="note") == []


async def test_a_job_that_expired_in_keep_is_deleted(mf: MemFlow) -> None:
    handle = await mf.workflow.start("note", "remember", "quick", ["c"], "q", expire="1 second")
    await handle.result(timeout=10)
    assert await maintain(mf, days_later=1 / 1440) == 1  # a minute later
    assert where(mf, "quick") == {"jobs": [], "steps": [], "entity_changes": []}


async def test_buffered_signals_expire_with_their_day(mf: MemFlow) -> None:
    await maintain(mf)  # makes the signal partitions for the coming days
    await mf.workflow.signal("nobody-waits", {"n": 1}, expire="1 hour")
    await mf.workflow.signal("far-away", {"n": 2}, expire="30 days")
    with psycopg.connect(test_dsn()) as conn:
        placed = dict(
            conn.execute(
                f'SELECT signal_id, tableoid::regclass::text FROM "{mf.app_id}".signals'
            ).fetchall()
        )
    assert placed["far-away"].endswith("signals_later")
    assert "signals_d" in placed["nobody-waits"]
    await maintain(mf, days_later=2)
    with psycopg.connect(test_dsn()) as conn:
        left = conn.execute(f'SELECT signal_id FROM "{mf.app_id}".signals').fetchall()
    assert left == [("far-away",)]


async def test_the_upgrade_from_version_1_keeps_jobs_and_user_indexes() -> None:
    app_id, dsn = f"up{uuid.uuid4().hex[:10]}", test_dsn()
    first, *later = migrations()
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(f'CREATE SCHEMA "{app_id}"')
        conn.execute(f'SET LOCAL search_path TO "{app_id}"')
        conn.execute(
            "CREATE TABLE migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        conn.execute(first.text.encode())
        conn.execute("INSERT INTO migrations (version, name) VALUES (%s, %s)", [1, first.name])
        conn.execute(
            "INSERT INTO jobs (id, entity, workflow_name, task_queue, status, context, version,"
            " result, finished_at) VALUES ('old', 'user', 'wf', 'q', 'completed',"
            " '{\"isPremium\": true}', 1, '\"done\"', clock_timestamp())"
        )
        conn.execute(
            "INSERT INTO entity_changes (job_id, version, op, value)"
            " VALUES ('old', 1, 'set', '{\"isPremium\": true}')"
        )
        conn.execute(
            "INSERT INTO signals (signal_id, data, expires_at) VALUES"
            " ('early', '1', clock_timestamp() + interval '1 day')"
        )
        conn.execute(
            "CREATE INDEX idx_user_premium ON jobs (id)"
            " WHERE entity = 'user' AND (context->>'isPremium')::boolean = true"
        )
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn, drop_on_close=True)
    try:
        handle = await mf.workflow.get_handle("old")
        assert await handle.result() == "done"
        assert [c["op"] for c in (await handle.export()).entity_changes] == ["set"]
        assert [r.workflow_id for r in await mf.entity.find("user", where={"isPremium": True})] == [
            "old"
        ]
        assert await mf.workflow.signal("early", 2) is False  # buffered next to the kept one
        with psycopg.connect(dsn) as conn:
            versions = conn.execute(f'SELECT version FROM "{app_id}".migrations').fetchall()
            index = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = %s"
                " AND indexname = 'idx_user_premium'",
                [app_id],
            ).fetchone()
        assert sorted(v for (v,) in versions) == [1, *(m.version for m in later)]
        assert index is not None
        assert partitions(mf, "idx_user_premium") == ["jobs_keep_id_idx"]
    finally:
        await mf.shutdown()


async def test_a_stale_bucket_hint_finds_the_job_where_it_is(mf: MemFlow) -> None:
    """Another process may remember a bucket from a job that expired and was
    started again under the same id: a hinted statement that finds nothing is
    tried without the hint."""
    handle = await mf.workflow.start("note", "wait_then_note", "again", [], "q")
    mf.backend.buckets["again"] = "d20000101"  # type: ignore[attr-defined]
    assert await handle.status() in ("pending", "running")
    mf.backend.buckets["again"] = "d20000101"  # type: ignore[attr-defined]
    await mf.workflow.signal("go-again", "yes")
    assert await handle.result(timeout=10) == "yes"
    mf.backend.buckets["again"] = "d20000101"  # type: ignore[attr-defined]
    assert await handle.state() == {"got": "yes", "count": 1}
    assert [c["op"] for c in (await handle.export()).entity_changes] == ["set", "increment"]
    assert mf.backend.buckets["again"] == "keep"  # type: ignore[attr-defined]


async def test_partitions_come_and_go_while_jobs_run(mf: MemFlow) -> None:
    """Maintenance makes and drops partitions (DDL) while workflows write to the
    same tables: no statement fails and every job finishes once."""
    await mf.worker("q", workflows=[remember], concurrency=10)
    await mf.workflow.start("note", "remember", "teach", ["t"], "q", expire="1 hour")
    handles = []
    for round_ in range(6):
        async with mf.backend.transaction() as tx:
            for table in ("jobs", "threads", "steps", "entity_changes", "signals"):
                await tx.one(  # type: ignore[attr-defined]
                    "SELECT hm_ensure_partition(%s, %s)", [table, f"d2000010{round_}"]
                )
        handles += [
            await mf.workflow.start(
                "note", "remember", f"r{round_}-{i}", [str(i)], "q", expire="1 hour"
            )
            for i in range(10)
        ]
        await maintain(mf)  # drops the past day made above, learns the expire value
    for handle in handles:
        assert await handle.result(timeout=20) in {str(i) for i in range(10)}
    # A drop that could not have its lock within 200 ms waits for a later pass.
    await maintain(mf)
    assert not [p for p in partitions(mf, "jobs") if p.startswith("jobs_d2000")]
    in_day = [h for h in handles if where(mf, h.workflow_id)["jobs"] != ["jobs_keep"]]
    assert in_day, "jobs started after the first pass go to their day's partition"


async def dead_letter(mf: MemFlow, job_id: str) -> None:
    async with mf.backend.transaction() as tx:
        task_id = await tx.stream.enqueue(
            Task(queue="q", kind="timer", job_id=job_id, dimension="", name="t")
        )
        assert task_id is not None
        await tx.stream.dead_letter(task_id, ErrorInfo("Boom", "kept for inspection"))


def dead_letters(mf: MemFlow) -> list[tuple[str, str]]:
    with psycopg.connect(test_dsn()) as conn:
        rows = conn.execute(
            f"SELECT task->>'job_id', tableoid::regclass::text FROM \"{mf.app_id}\".dead_letters"
            " ORDER BY 1"
        ).fetchall()
    return [(job, table.split(".")[-1]) for job, table in rows]


async def test_dead_letters_are_kept_30_days_then_go_with_their_day(mf: MemFlow) -> None:
    await dead_letter(mf, "before-any-pass")  # no partition yet: 'later'
    await maintain(mf)  # makes the partitions 30 and 31 days on
    await dead_letter(mf, "after-a-pass")
    expiry_day = day_bucket(datetime.now(timezone.utc) + timedelta(days=30))
    placed = dict(dead_letters(mf))
    assert placed["before-any-pass"] == "dead_letters_later"
    assert placed["after-a-pass"] in {
        f"dead_letters_{expiry_day}",
        f"dead_letters_{day_bucket(datetime.now(timezone.utc) + timedelta(days=31))}",
    }
    await maintain(mf, days_later=20)
    assert len(dead_letters(mf)) == 2  # kept 30 days
    await maintain(mf, days_later=33)
    assert dead_letters(mf) == []
    assert f"dead_letters_{expiry_day}" not in partitions(mf, "dead_letters")


async def test_many_expire_values_are_learnt_as_few_days(mf: MemFlow) -> None:
    """Jobs may each carry their own expire; the pass keeps one row per day of
    retention, not one per value, and makes those days' partitions."""
    for i in range(40):
        await mf.workflow.start("note", "remember", f"v{i}", [str(i)], "q", expire=3600 + i)
    await maintain(mf)
    with psycopg.connect(test_dsn()) as conn:
        days = conn.execute(f'SELECT days FROM "{mf.app_id}".expire_days').fetchall()
    assert days == [(0,)]
    late = await mf.workflow.start("note", "remember", "late", ["x"], "q", expire=3600 + 77)
    assert await late.result(timeout=10) == "x"
    assert where(mf, "late")["jobs"] != ["jobs_keep"]
