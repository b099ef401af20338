"""An adversarial round on hotmesh_postgres/pooling.py (1f281e8): connection_from,
restart_reconnecting, connect_options, and how backend.py gives connections back.

It found two defects, fixed since: a cancel while transaction() gave its
connection back lost the connection for good (pooling.give_back), and a bad
connect_timeout (the option, the DSN's, PGCONNECT_TIMEOUT) came out as a bare
ValueError or psycopg's ProgrammingError, not a HotMeshError naming it.
The tests use the test database (hotmesh_postgres.testing.test_dsn) only.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from hotmesh_core import MemFlow
from hotmesh_core.errors import BackendUnavailable, HotMeshError
from hotmesh_postgres.backend import PostgresBackend
from hotmesh_postgres.testing import test_dsn


@asynccontextmanager
async def _pool_of_two(
    app_id: str, pool_timeout: float
) -> AsyncIterator[tuple[PostgresBackend, Any]]:
    """An app on the test database with a pool of exactly 2 connections."""
    mf = await MemFlow.init(
        app_id=app_id, backend="postgres", dsn=test_dsn(),
        pool_size=2, pool_min=2, pool_timeout=pool_timeout,
    )  # fmt: skip
    try:
        backend = mf.backend
        assert isinstance(backend, PostgresBackend)
        yield backend, _pool(mf)
    finally:
        await mf.shutdown()


def _pool(mf: MemFlow):  # type: ignore[no-untyped-def]
    assert isinstance(mf.backend, PostgresBackend)
    assert mf.backend.pool is not None
    return mf.backend.pool


async def _hand_back_while_another_waits(backend: PostgresBackend) -> tuple[object, ...]:
    """Both connections of a pool of 2 are in use by A and C; a third caller W
    asks for one; A and C finish in the same turn of the loop, and C is cancelled
    right then (a worker shutting down, a result() timing out): C's transaction
    is over, its connection is being given back."""
    gates = [asyncio.Event(), asyncio.Event()]

    async def holder(k: int) -> int:
        async with backend.transaction(readonly=True) as tx:
            await tx.one("SELECT 1 AS v", [])
            await gates[k].wait()
        return k

    async def waiter() -> int:
        async with backend.transaction(readonly=True) as tx:
            row = await tx.one("SELECT 7 AS v", [])
            assert row is not None
            return int(row["v"])

    a = asyncio.create_task(holder(0))
    c = asyncio.create_task(holder(1))
    deadline = time.monotonic() + 10
    while backend.pool.get_stats()["pool_available"] != 0:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    w = asyncio.create_task(waiter())
    gates[0].set()
    gates[1].set()
    await asyncio.sleep(0)  # A, W and C have each run one step
    c.cancel()
    return tuple(await asyncio.gather(a, c, w, return_exceptions=True))


async def test_a_cancel_as_a_transaction_gives_its_connection_back_does_not_lose_it() -> None:
    """A cancel that lands while transaction()'s ``finally`` gives the connection
    back (psycopg_pool's putconn waits for its lock, held while it hands another
    connection to a waiter) lost that connection: the pool still counts it, but
    it is neither idle nor in use, for good (observed: pool_size 2,
    pool_available 1 with nothing in use). Each such cancel shrinks the pool by
    one, until every transaction waits pool_timeout and raises BackendUnavailable."""
    async with _pool_of_two("advpoolleak", pool_timeout=3) as (backend, pool):
        a, c, w = await _hand_back_while_another_waits(backend)
        assert a == 0 and w == 7 and isinstance(c, asyncio.CancelledError)
        await asyncio.sleep(0.5)
        stats = pool.get_stats()
        # Nothing in use now: every connection the pool counts must be idle.
        assert (stats["pool_size"], stats["pool_available"]) == (2, 2), stats
        async with backend.transaction(readonly=True) as tx:  # must not time out
            assert await tx.one("SELECT 1 AS v", []) == {"v": 1}


@pytest.mark.parametrize("value", ["abc", "2.5"])
async def test_a_bad_or_fractional_connect_timeout_option_is_a_clear_hotmesh_error(
    value: str,
) -> None:
    """``connect_timeout="abc"`` raised a bare ValueError ("invalid literal for
    int() with base 10: 'abc'", naming no option) out of MemFlow.init; "2.5",
    which libpq and psycopg accept in a DSN, raised the same. Either use it as
    libpq would (int(float())), or refuse it by name with a HotMeshError."""
    try:
        mf = await MemFlow.init(
            app_id="advpoolct", backend="postgres", dsn=test_dsn(), connect_timeout=value,
            drop_on_close=True,
        )  # fmt: skip
    except HotMeshError as error:
        assert "connect_timeout" in str(error)
        return
    except Exception as error:
        pytest.fail(f"connect_timeout={value!r}: {type(error).__name__}: {error}")
    await mf.shutdown()
    assert value == "2.5"  # accepted, as in a DSN


async def test_connect_timeout_from_dsn_env_and_option_are_respected() -> None:
    """Pins (pass on 1f281e8): a connect to a host that accepts TCP and never
    answers gives up after 5 s by default, 2 s with the DSN's connect_timeout=1
    (libpq's minimum), 3 s with the option, 2 s with PGCONNECT_TIMEOUT=2."""
    import socket

    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(64)
    base = f"host=127.0.0.1 port={sink.getsockname()[1]} user=postgres dbname=postgres"

    async def seconds(dsn: str, **options: object) -> float:
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await MemFlow.init(app_id="advpoolct", backend="postgres", dsn=dsn, **options)
        return time.monotonic() - t0

    old = os.environ.pop("PGCONNECT_TIMEOUT", None)
    try:
        assert 4 < await seconds(base) < 9
        assert 1.5 < await seconds(base + " connect_timeout=1") < 4.5
        assert 2.5 < await seconds(base, connect_timeout=3) < 6
        os.environ["PGCONNECT_TIMEOUT"] = "2"
        assert 1.5 < await seconds(base) < 4.5
    finally:
        os.environ.pop("PGCONNECT_TIMEOUT", None)
        if old is not None:
            os.environ["PGCONNECT_TIMEOUT"] = old
        sink.close()


async def test_random_cancels_on_a_busy_small_pool_leave_every_connection_in_it() -> None:
    """The same loss without any arranged schedule: rounds of 20 short read-only
    transactions on a pool of 2, 8 of them cancelled at random moments, for up
    to 10 s. After a round, once idle, every connection the pool counts must be
    idle again (observed: pool_size 2, pool_available 1 after 126 to 740
    rounds, 1 to 3 s; with putconn shielded, none lost in 6331 rounds)."""
    import random

    async with _pool_of_two("advpoolstorm", pool_timeout=5) as (backend, pool):
        rnd = random.Random(1)

        async def job(k: int) -> int:
            async with backend.transaction(readonly=True) as tx:
                row = await tx.one("SELECT %s::int AS v", [k])
                assert row is not None
                return int(row["v"])

        t0 = time.monotonic()
        rounds = 0
        while time.monotonic() - t0 < 10:
            rounds += 1
            tasks = [asyncio.create_task(job(k)) for k in range(20)]
            await asyncio.sleep(rnd.random() * 0.005)
            for task in rnd.sample(tasks, 8):
                task.cancel()
                if rnd.random() < 0.5:
                    await asyncio.sleep(0)
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for k, result in enumerate(results):
                assert isinstance(result, asyncio.CancelledError) or result == k
            stats = pool.get_stats()
            if stats["pool_available"] < stats["pool_size"]:
                await asyncio.sleep(0.5)  # anything still being given back
                stats = pool.get_stats()
            assert stats["pool_available"] == stats["pool_size"] == 2, (rounds, stats)


@pytest.mark.parametrize("where", ["dsn", "env"])
async def test_a_bad_connect_timeout_in_the_dsn_or_env_is_refused_by_name(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq_dsn promises a bad DSN "is refused here, by name, and not as a driver
    error at the first connection"; ``connect_timeout=abc`` in the DSN (or
    PGCONNECT_TIMEOUT=abc, which connect_options defers to) passed it and came
    out of MemFlow.init as psycopg.ProgrammingError ("bad value for
    connect_timeout: 'abc'"), not a HotMeshError (InvalidDsn)."""
    dsn = test_dsn()
    if where == "dsn" and "://" in dsn:
        dsn += ("&" if "?" in dsn else "?") + "connect_timeout=abc"
    elif where == "dsn":
        dsn += " connect_timeout=abc"
    else:
        monkeypatch.setenv("PGCONNECT_TIMEOUT", "abc")
    try:
        mf = await MemFlow.init(app_id="advpoolct", backend="postgres", dsn=dsn)
    except HotMeshError as error:
        assert "connect_timeout" in str(error)
        return
    except Exception as error:
        pytest.fail(f"{where}: {type(error).__module__}.{type(error).__name__}: {error}")
    await mf.shutdown()
    pytest.fail("connect_timeout=abc accepted")
