"""Adversarial round 2 on the draining stop during/after an outage and on
cancels with the pool exhausted (private PostgreSQL servers).

Each test's docstring tells what the round found before the fix: a drain that
abandoned healthy work after a blip (now the drain asks the database first,
Worker._answers), a broken connection given back to the pool twice (it grew
past pool_size; PgTransaction.returned), and a shutdown that waited out the
pool's timeout once per worker (MemFlow.shutdown stops all at once)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from hotmesh_core import BackendUnavailable, MemFlow, workflow
from hotmesh_postgres.backend import PostgresBackend
from tests.reliability.harness import PrivateServer
from tests.test_adversarial_outage import private_server, stop_server

runs: collections.Counter[str] = collections.Counter()


async def r2_slow(key: str, seconds: float) -> str:
    runs[key] += 1
    await asyncio.sleep(seconds)
    return key


async def r2_one(key: str, seconds: float) -> str:
    acts = workflow.proxy_activities(activities=["r2_slow"])
    return await acts.r2_slow(key, seconds)


async def r2_two(key: str, first: float, second: float) -> str:
    acts = workflow.proxy_activities(activities=["r2_slow"])
    await acts.r2_slow(key + ":a", first)
    return await acts.r2_slow(key + ":b", second)


async def healthy(dsn: str) -> None:
    conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=3)
    try:
        await conn.execute("SELECT 1")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def app_of_two(
    app_id: str, **options: object
) -> AsyncIterator[tuple[PrivateServer, PostgresBackend]]:
    """An app on a private server with a pool of at most 2 connections."""
    server = private_server()
    try:
        mf = await MemFlow.init(
            app_id=app_id, backend="postgres", dsn=server.dsn, pool_size=2, **options
        )
        try:
            assert isinstance(mf.backend, PostgresBackend)
            yield server, mf.backend
        finally:
            await mf.shutdown()
    finally:
        server.cleanup()


async def assert_pool_holds_at_most_two(
    backend: PostgresBackend, server: PrivateServer, app_id: str
) -> None:
    """Once the pool has settled (1 s), a pool of max 2 keeps at most 2 idle
    connections and the server sees at most 3 of the app's (the two and the
    LISTEN connection)."""
    await asyncio.sleep(1.0)
    stats = backend.pool.get_stats()
    conn = await psycopg.AsyncConnection.connect(server.dsn, autocommit=True)
    try:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (f"hotmesh:{app_id}",),
        )
        (on_server,) = await cursor.fetchone()
    finally:
        await conn.close()
    assert stats["pool_available"] <= 2 and on_server <= 3, (
        f"pool of max 2 holds {stats['pool_available']} idle connections,"
        f" {on_server} on the server (one is LISTEN); stats={stats}"
    )


async def test_a_draining_stop_on_a_healthy_database_after_a_blip_abandons_nothing() -> None:
    """A worker full (concurrency=2): a 10 s activity, and a run whose step
    ends at 1 s. The server is down from 0.5 s to ~7 s (pool_timeout=1), so the
    step's commit fails (BackendUnavailable) and _while_backend_returns goes to
    its 3 s pause; the server is back and answering (checked twice) before
    ``worker.stop(drain=True)``. The drain must let both finish; it abandons
    both at once (stop returns in 0.00 s), because Worker._away_since is still
    set: only a claim or a transition that gets through clears it, stop()
    cancels the claim loop first (and a full worker claims nothing anyway;
    the lost-claim hand-back that did get through does not clear it), and the
    retrying run is asleep until its next try. The long activity, which never
    met the outage, is cancelled and both workflows wait out the 30 s lease."""
    runs.clear()
    server = private_server()
    try:
        mf = await MemFlow.init(
            app_id="r2blip", backend="postgres", dsn=server.dsn, pool_timeout=1.0
        )
        try:
            worker = await mf.worker(
                "q", workflows=[r2_one, r2_two], activities=[r2_slow], lease=30.0, concurrency=2
            )
            long = await mf.workflow.start("e", "r2_one", "long", ["long", 10.0], "q")
            two = await mf.workflow.start("e", "r2_two", "two", ["two", 1.0, 0.2], "q")
            await asyncio.sleep(0.5)
            await stop_server(server, "fast")  # "two:a" ends at ~1 s: its commit fails
            await asyncio.sleep(6.1)
            await asyncio.to_thread(server.start)
            await healthy(server.dsn)
            await asyncio.sleep(0.3)
            await healthy(server.dsn)
            # And back for this process: its pool reconnects with a backoff
            # of its own (psycopg_pool), seconds after the server is back.
            for _ in range(100):
                try:
                    async with mf.backend.transaction(readonly=True) as tx:
                        await tx.store.get_job("r2blip-probe")
                    break
                except BackendUnavailable:
                    await asyncio.sleep(0.1)
            away = worker._away_since
            stopped_at = time.monotonic()
            await worker.stop(drain=True)
            took = time.monotonic() - stopped_at
            await mf.worker("q", workflows=[r2_one, r2_two], activities=[r2_slow], lease=30.0)
            try:
                results = await asyncio.gather(long.result(timeout=10), two.result(timeout=10))
            except Exception as error:
                pytest.fail(
                    f"drain on a healthy database (stop took {took:.2f} s) left work to"
                    f" its lease: {error!r}; runs={dict(runs)};"
                    f" away_since set at stop: {away is not None}"
                )
            assert results == ["long", "two:b"]
            assert runs["long"] == 1, f"the long activity ran {runs['long']} times"
        finally:
            await mf.shutdown()
    finally:
        server.cleanup()


async def test_reads_during_outages_do_not_grow_the_pool_past_pool_size() -> None:
    """pool_size=2; three times the server stops (``-m fast``) and four reads
    meet the outage (BackendUnavailable), then it is back. The app must hold
    at most pool_size pooled connections afterwards. It grew by the broken
    connections returned twice: PgTransaction._on_live_connection puts the
    broken connection back and, when taking another one fails (PoolTimeout,
    or a cancel), PostgresBackend.transaction's finally puts the same
    connection back again: psycopg_pool discards it and adds a replacement
    each time (returns_bad counts both)."""
    async with app_of_two("r2pool", pool_timeout=1.0) as (server, backend):

        async def read() -> None:
            async with backend.transaction(readonly=True) as tx:
                await tx.store.get_job("none")

        await asyncio.gather(read(), read())
        for _ in range(3):
            await stop_server(server, "fast")
            await asyncio.gather(*(read() for _ in range(4)), return_exceptions=True)
            await asyncio.to_thread(server.start)
            await asyncio.sleep(1.5)
            await asyncio.gather(*(read() for _ in range(4)))
        await assert_pool_holds_at_most_two(backend, server, "r2pool")


async def test_cancelled_reads_after_a_terminate_do_not_grow_the_pool() -> None:
    """No outage: twenty times the app's connections are terminated
    (pg_terminate_backend, the server stays up) and six reads on a pool of 2
    are cancelled at moments spread over their reconnect. Without the cancels
    the pool stays at 2; with them it grew to 14 idle connections (15 on the
    server): a cancel in connection_from inside
    PgTransaction._on_live_connection leaves tx.conn on the broken connection
    already put back, and PostgresBackend.transaction's finally puts it back
    again (psycopg_pool adds a replacement for each bad return)."""
    loop = asyncio.get_running_loop()
    async with app_of_two("r2term") as (server, backend):

        async def read() -> str:
            async with backend.transaction(readonly=True) as tx:
                await tx.store.get_job("none")
            return "read"

        await asyncio.gather(read(), read())
        lost = 0
        for r in range(20):
            await asyncio.to_thread(server.terminate_app, "r2term")
            await asyncio.sleep(0.05)
            readers = [asyncio.ensure_future(read()) for _ in range(6)]
            accepted: set[int] = set()

            def cancel(
                i: int,
                readers: list[asyncio.Future[str]] = readers,
                accepted: set[int] = accepted,
            ) -> None:
                if readers[i].cancel():
                    accepted.add(i)

            for i in range(len(readers)):
                loop.call_later(0.0005 * i + 0.0003 * (r % 5), cancel, i)
            outs = await asyncio.gather(*readers, return_exceptions=True)
            lost += sum(
                1
                for i, out in enumerate(outs)
                if i in accepted and not isinstance(out, asyncio.CancelledError)
            )
            await asyncio.sleep(0.3)
        assert await asyncio.wait_for(read(), 5) == "read"
        assert lost == 0, f"{lost} accepted cancels returned normally"
        await assert_pool_holds_at_most_two(backend, server, "r2term")


async def test_shutdown_during_an_outage_is_not_one_pool_timeout_per_worker() -> None:
    """Four workers, pool_timeout=3; the server stops and stays down; a second
    later mf.shutdown() must return within the pool's timeout and a couple of
    seconds, as worker.stop(drain=True) now does. It takes one pool timeout
    per worker: MemFlow.shutdown stops the presence announcers first, one
    after another, and each Announcer.stop (presence.py) withdraws its
    announcement in a transaction that waits out pool_timeout for a connection
    (with the default 30 s, four workers: two minutes)."""
    server = private_server()
    try:
        mf = await MemFlow.init(
            app_id="r2shut", backend="postgres", dsn=server.dsn, pool_timeout=3.0
        )
        for _ in range(4):
            await mf.worker("q", workflows=[r2_two], activities=[r2_slow], lease=5.0)
        for k in range(8):
            await mf.workflow.start("e", "r2_two", f"s{k}", [f"s{k}", 0.3, 0.3], "q")
        await asyncio.sleep(0.5)
        await stop_server(server, "fast")
        await asyncio.sleep(1.0)
        started = time.monotonic()
        await asyncio.wait_for(mf.shutdown(), 30)
        took = time.monotonic() - started
        assert took < 3.0 + 1.0 + 2.0, f"mf.shutdown() took {took:.1f} s during an outage"
    finally:
        server.cleanup()
