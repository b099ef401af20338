"""Every transaction that answers a job's steps or moves its activation takes the
job's row first (``Store.lock_job``; ``hm_advance`` and an interrupt do too), so
racing ones queue behind each other instead of deadlocking. A deadlock is never
lost work (PostgreSQL aborts one side, which runs again), but it costs that side
a lease and shows up as ``deadlock detected`` in the server log: this counts them
in ``pg_stat_database`` of a database of the test's own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy.engine import make_url

from hotmesh_core import MemFlow, workflow
from hotmesh_postgres.testing import test_dsn

pytestmark = pytest.mark.asyncio


async def remember(note: str) -> str:
    entity = await workflow.entity()
    await entity.set({"note": note})
    await workflow.sleep_for(0.01)
    await entity.append("seen", note)
    return note


@pytest.fixture
def own_database() -> Iterator[str]:
    name = f"hm_lock_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(test_dsn()).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(test_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def deadlocks(dsn: str) -> int:
    """Deadlocks of the database, once every other session has ended (a session
    reports its counts when it exits)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(500):
            others = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            if others is not None and others[0] == 0:
                break
            conn.execute("SELECT pg_sleep(0.01)")
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_runs_racing_while_partitions_come_and_go_never_deadlock(own_database: str) -> None:
    """Two workers on one queue, and maintenance DDL that stalls runs: runs of
    one job race each other, one on the general path, one through hm_advance."""
    before = deadlocks(own_database)
    mf = await MemFlow.init(app_id="locks", backend="postgres", dsn=own_database)
    try:
        await mf.worker("q", workflows=[remember])
        await mf.worker("q", workflows=[remember], concurrency=10)
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
            at = datetime.now(timezone.utc)
            await mf.backend.maintain(now=at + timedelta(days=0))  # type: ignore[call-arg]
        results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
        assert sorted(results) == sorted(str(i) for _ in range(6) for i in range(10))
    finally:
        await mf.shutdown()
    assert deadlocks(own_database) - before == 0
