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
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_core.errors import DuplicateWorkflow, WorkflowInterrupted
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

CALLS: Counter[str] = Counter()


async def add(a: int, b: int) -> int:
    CALLS[f"add:{a}:{b}"] += 1
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
    """FAILS on c40c26b. After a server restart, a failover or an idle-connection
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
    """FAILS (before and after c40c26b). A start without ``expire`` goes to the
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
    """FAILS on postgres (before and after c40c26b). PostgreSQL jsonb keeps
    numbers as numeric and prints ``1e+20`` back as ``100000000000000000000``:
    an activity's float result, read back from the history, is an int (and
    -0.0 loses its sign). The run that got the answer inline saw the float; the
    replay after the sleep sees an int: the same workflow sees two values at
    one step (a workflow branching on it is not deterministic), and memory
    and PostgreSQL disagree."""
    async with app(backend) as mf:
        await mf.worker("q", workflows=[float_then_sleep], activities=[echo])
        handle = await mf.workflow.start("t", "float_then_sleep", "f", [value], "q")
        assert await handle.result(timeout=30) == ["float", repr(value)]
