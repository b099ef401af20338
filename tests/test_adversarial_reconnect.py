"""An adversarial round on the pool's reconnection (53dda47:
``reconnect_timeout=RECONNECT_ATTEMPT`` and ``reconnect_failed=restart_reconnecting``)
and the LISTEN connection's outage lines. Private PostgreSQL servers only.

It found three defects, fixed in hotmesh_postgres/pooling.py:
- test_an_idle_app_stops_trying_to_grow_into_a_full_server (of 53dda47):
  restart_reconnecting's check() grew the pool after every failed try whether
  or not anyone waited: an idle app knocked at a full server ~1.5 times a
  second for as long as it stayed full. Now only while a connection is wanted.
- test_work_goes_on_within_seconds_after_a_partition_that_hangs_connects (older):
  a try was a connect with psycopg's 130 s connect_timeout, so tries stuck in a
  partition held every slot and worker of the pool long after it healed.
  Now a connect gives up after CONNECT_TIMEOUT (5 s).
- test_the_first_calls_after_a_crash_with_an_idle_pool_succeed (older): the
  idle connections a crash closed were handed out, and the first start()
  raised BackendUnavailable. connection_from now tries one with input waiting.
The others pin what the change is for; the slow ones run with --reliability.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import time
import traceback
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_postgres.backend import PostgresBackend
from tests.reliability.harness import PrivateServer
from tests.test_adversarial_outage import private_server, stop_server

runs: collections.Counter[tuple[str, int]] = collections.Counter()


async def rc_step(wid: str, i: int) -> int:
    runs[(wid, i)] += 1
    await asyncio.sleep(0.2)
    return i


async def rc_steps(wid: str, n: int) -> int:
    acts = workflow.proxy_activities(activities=["rc_step"])
    total = 0
    for i in range(n):
        total += await acts.rc_step(wid, i)
    return total


class Records(logging.Handler):
    """Every log record of the process, with its time."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[float, logging.LogRecord]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.monotonic(), record))

    def since(
        self, t: float, name: str = "", level: int = logging.DEBUG
    ) -> list[logging.LogRecord]:
        return [
            r
            for at, r in self.records
            if at >= t and r.name.startswith(name) and r.levelno >= level
        ]


@contextlib.contextmanager
def recording() -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(n) for n in ("psycopg", "hotmesh", "asyncio", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers[:3]:
        lg.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


async def on_server(server: PrivateServer, app_id: str) -> int:
    conn = await psycopg.AsyncConnection.connect(server.dsn, autocommit=True)
    try:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (f"hotmesh:{app_id}",),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])
    finally:
        await conn.close()


async def time_to_work(mf: MemFlow, wid: str, timeout: float = 40) -> float:
    """Seconds a new one-step workflow takes, start to result."""
    t0 = time.monotonic()
    h = await mf.workflow.start("e", "rc_steps", wid, [wid, 1], "q")
    assert await h.result(timeout=timeout) == 0
    return time.monotonic() - t0


def pool_of(mf: MemFlow) -> Any:
    assert isinstance(mf.backend, PostgresBackend)
    return mf.backend.pool


# -- 1. a long outage under load -----------------------------------------------------
@pytest.mark.reliability
async def test_a_60s_outage_under_load_resumes_fast_and_runs_nothing_twice() -> None:
    """12 workflows of 6 steps in flight on one worker (lease 300 s, longer than
    the outage); the server stops (-m fast) for 60 s. Once back, a new workflow
    finishes within 3 s, every old one finishes right, no activity ran twice."""
    runs.clear()
    server = private_server()
    try:
        mf = await MemFlow.init(app_id="rclong", backend="postgres", dsn=server.dsn, pool_size=4)
        try:
            await mf.worker("q", workflows=[rc_steps], activities=[rc_step], lease=300.0)
            handles = [
                await mf.workflow.start("e", "rc_steps", f"w{k}", [f"w{k}", 6], "q")
                for k in range(12)
            ]
            await asyncio.sleep(0.7)
            await stop_server(server, "fast")
            await asyncio.sleep(60.0)
            await asyncio.to_thread(server.start)
            back = time.monotonic()
            took = await time_to_work(mf, "after")
            results = await asyncio.gather(*(h.result(timeout=40) for h in handles))
            all_done = time.monotonic() - back
            assert took < 3.0, f"a new workflow took {took:.1f} s after a 60 s outage"
            assert results == [15] * 12
            twice = {k: n for k, n in runs.items() if n > 1}
            assert not twice, f"activities run twice: {twice}"
            assert all_done < 20, f"old workflows took {all_done:.1f} s to finish"
        finally:
            await mf.shutdown()
    finally:
        server.cleanup()


# -- 2. flapping ---------------------------------------------------------------------
@pytest.mark.reliability
async def test_a_flapping_server_never_grows_the_pool_past_its_size_and_comes_back() -> None:
    """pool_min=2, pool_size=3, one worker; eight times the server is up for 0.5 s
    and down (-m immediate) for 2 s, work started all along; then it stays up.
    The pool never holds more than 3 (stats and pg_stat_activity, +1 LISTEN),
    grows back to at least pool_min, and work goes on within 3 s."""
    runs.clear()
    server = private_server()
    try:
        mf = await MemFlow.init(
            app_id="rcflap", backend="postgres", dsn=server.dsn,
            pool_size=3, pool_min=2, pool_timeout=5.0,
        )  # fmt: skip
        pool = pool_of(mf)
        try:
            await mf.worker("q", workflows=[rc_steps], activities=[rc_step], lease=120.0)
            handles = [
                await mf.workflow.start("e", "rc_steps", f"f{k}", [f"f{k}", 4], "q")
                for k in range(6)
            ]
            sizes: list[int] = []
            seen_on_server: list[int] = []
            for _ in range(8):
                await stop_server(server, "immediate")
                for _ in range(4):
                    sizes.append(pool.get_stats()["pool_size"])
                    await asyncio.sleep(0.5)
                await asyncio.to_thread(server.start)
                await asyncio.sleep(0.5)
                sizes.append(pool.get_stats()["pool_size"])
                with contextlib.suppress(Exception):
                    seen_on_server.append(await on_server(server, "rcflap"))
            took = await time_to_work(mf, "after")
            results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
            await asyncio.sleep(2.0)
            final = pool.get_stats()
            final_server = await on_server(server, "rcflap")
            assert max(sizes) <= 3, f"pool sizes seen: {sizes}"
            assert max([*seen_on_server, final_server]) <= 4, (seen_on_server, final_server)
            assert took < 3.0, f"new work took {took:.1f} s after flapping"
            assert results == [6] * 6
            assert final["pool_size"] >= 2, f"pool did not grow back to pool_min: {final}"
        finally:
            await mf.shutdown()
    finally:
        server.cleanup()


# -- 3. shutdown during the cycling ---------------------------------------------------
@pytest.mark.parametrize("how", ["shutdown", "worker_stop"])
async def test_stopping_during_an_outage_is_quiet_and_stops_the_reconnect_tries(how: str) -> None:
    """A worker on pool_size=3, pool_timeout=3; the server stops and stays down
    8 s (reconnect attempts cycling). mf.shutdown() (or worker.stop() then
    mf.shutdown()) returns within 10 s, raises nothing, logs no ERROR or
    traceback; afterwards, no connection attempt and no record at all of the
    pool for 5 s, no asyncio task of the pool left, no 'Task was destroyed'."""
    server = private_server()
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda lp, ctx: problems.append(str(ctx.get("message"))))
    try:
        with recording() as log:
            mf = await MemFlow.init(
                app_id="rcstop", backend="postgres", dsn=server.dsn,
                pool_size=3, pool_timeout=3.0,
            )  # fmt: skip
            pool = pool_of(mf)
            worker = await mf.worker("q", workflows=[rc_steps], activities=[rc_step], lease=30)
            h = await mf.workflow.start("e", "rc_steps", "s1", ["s1", 50], "q")
            await asyncio.sleep(0.5)
            await stop_server(server, "fast")
            await asyncio.sleep(8.0)
            t0 = time.monotonic()
            if how == "worker_stop":
                await asyncio.wait_for(worker.stop(), 10)
            await asyncio.wait_for(mf.shutdown(), 10)
            took = time.monotonic() - t0
            closed_at = time.monotonic()
            errors_before = pool.get_stats().get("connections_errors", 0)
            await asyncio.sleep(5.0)
            gc.collect()
            await asyncio.sleep(0.1)
            after = log.since(closed_at)
            pool_after = [r.getMessage() for r in after if r.name.startswith("psycopg.pool")]
            bad = [f"{r.name}: {r.getMessage()}" for r in log.since(t0, level=logging.ERROR)] + [
                f"{r.name}: {r.getMessage()}"
                for r in log.since(t0)
                if r.exc_info and r.levelno >= logging.WARNING
            ]
            errors_after = pool.get_stats().get("connections_errors", 0)
            leftover = [
                t.get_name() for t in asyncio.all_tasks()
                if t is not asyncio.current_task() and not t.done()
                and ("pool" in repr(t.get_coro()).lower() or "hotmesh" in t.get_name())
            ]  # fmt: skip
            del h
        assert took < 10, f"stop took {took:.1f} s"
        assert not bad, f"errors logged while stopping: {bad}"
        assert errors_after == errors_before, "connection attempts after shutdown"
        assert not pool_after, f"pool still active after shutdown: {pool_after[:5]}"
        assert not leftover, f"tasks left: {leftover}"
        assert not problems, f"loop exception handler: {problems}"
    finally:
        loop.set_exception_handler(old_handler)
        server.cleanup()


# -- 4. the log while the server is away ---------------------------------------------
@pytest.mark.reliability
async def test_a_long_outage_logs_a_bounded_number_of_warnings() -> None:
    """A 30 s outage (pool_size=4, a worker idle, a client waiting): the README
    promises about one try a second and HotMesh's own lines once per outage.
    Count psycopg.pool WARNINGs per second in the last 20 s of the outage and
    HotMesh WARNINGs overall."""
    server = private_server()
    try:
        with recording() as log:
            mf = await MemFlow.init(app_id="rclog", backend="postgres", dsn=server.dsn, pool_size=4)
            try:
                await mf.worker("q", workflows=[rc_steps], activities=[rc_step])
                assert await time_to_work(mf, "before") < 10
                await stop_server(server, "fast")
                t0 = time.monotonic()
                await asyncio.sleep(30.0)
                t1 = time.monotonic()
                pool_lines = [r for r in log.since(t0 + 10, "psycopg.pool", logging.WARNING)]
                tries = [r for r in pool_lines if "error connecting" in r.getMessage()]
                hm = log.since(t0, "hotmesh", logging.WARNING)
                await asyncio.to_thread(server.start)
                took = await time_to_work(mf, "after")
            finally:
                await mf.shutdown()
        rate = len(pool_lines) / (t1 - t0 - 10)
        try_rate = len(tries) / (t1 - t0 - 10)
        print(f"pool warnings/s={rate:.2f} tries/s={try_rate:.2f} hotmesh warnings={len(hm)}")
        for r in hm:
            print("  hm:", r.name, r.getMessage()[:150])
        assert took < 3.0
        assert 0.5 <= try_rate <= 2.0, f"{try_rate:.2f} connection tries a second"
        assert rate <= 2.5, f"{rate:.2f} psycopg.pool warnings a second"
        assert len(hm) <= 10, f"{len(hm)} HotMesh warnings in a 30 s outage"
    finally:
        server.cleanup()


# -- 5. the server full --------------------------------------------------------------
@pytest.mark.reliability
async def test_too_many_clients_then_capacity_back_resumes_within_seconds() -> None:
    """max_connections=12; the server restarts and, before the app is back,
    other clients take every slot for 20 s ("too many clients"). Once they
    leave, work goes on within 3 s; the app never holds more than pool_size."""
    server = private_server()
    try:
        mf = await MemFlow.init(app_id="rcfull", backend="postgres", dsn=server.dsn, pool_size=4)
        pool = pool_of(mf)
        hogs: list[psycopg.AsyncConnection[Any]] = []
        try:
            await mf.worker("q", workflows=[rc_steps], activities=[rc_step])
            assert await time_to_work(mf, "before") < 10
            await stop_server(server, "fast")
            with open(server.data / "postgresql.conf", "a") as conf:
                conf.write("max_connections = 12\nsuperuser_reserved_connections = 0\n")
            await asyncio.to_thread(server.start)
            while True:
                try:
                    hogs.append(await psycopg.AsyncConnection.connect(server.dsn))
                except psycopg.OperationalError:
                    break
            await asyncio.sleep(1.0)
            # Whatever the app got meanwhile, take the rest.
            for _ in range(20):
                try:
                    hogs.append(await psycopg.AsyncConnection.connect(server.dsn))
                except psycopg.OperationalError:
                    await asyncio.sleep(0.2)
            await asyncio.sleep(20.0)
            for hog in hogs:
                await hog.close()
            hogs.clear()
            took = await time_to_work(mf, "after")
            stats = pool.get_stats()
            assert took < 3.0, f"work took {took:.1f} s once the server had room"
            assert stats["pool_size"] <= 4, stats
        finally:
            for hog in hogs:
                await hog.close()
            await mf.shutdown()
    finally:
        server.cleanup()


# -- 6. auth failure after restart ---------------------------------------------------
@pytest.mark.reliability
async def test_auth_rejected_after_a_restart_then_accepted_resumes_within_seconds() -> None:
    """The server restarts with pg_hba rejecting TCP for 15 s (the app gets
    'no pg_hba.conf entry' / 'rejects connection'), then accepts again (reload).
    Work goes on within 3 s."""
    server = private_server()
    try:
        mf = await MemFlow.init(app_id="rchba", backend="postgres", dsn=server.dsn, pool_size=3)
        try:
            await mf.worker("q", workflows=[rc_steps], activities=[rc_step])
            assert await time_to_work(mf, "before") < 10
            hba = server.data / "pg_hba.conf"
            good = hba.read_text()
            await stop_server(server, "fast")
            hba.write_text("local all all trust\nhost all all 0.0.0.0/0 reject\n")
            await asyncio.to_thread(server.start)
            await asyncio.sleep(15.0)
            hba.write_text(good)
            await asyncio.to_thread(server._run, "pg_ctl", "-D", str(server.data), "reload")
            await asyncio.sleep(0.3)
            took = await time_to_work(mf, "after")
            assert took < 3.0, f"work took {took:.1f} s once connections were accepted"
        finally:
            await mf.shutdown()
    finally:
        server.cleanup()


# -- 7. apps side by side, a client alone --------------------------------------------
@pytest.mark.reliability
async def test_several_apps_and_a_client_only_app_across_a_40s_outage() -> None:
    """Two apps with a worker each and a client-only MemFlow (no worker) of the
    first app, pool_timeout=60, waiting on result() across a 40 s outage.
    Every result arrives, within 5 s of the server being back."""
    runs.clear()
    server = private_server()
    try:
        a = await MemFlow.init(app_id="rcapp_a", backend="postgres", dsn=server.dsn, pool_size=3)
        b = await MemFlow.init(
            app_id="rcapp_b", backend="postgres", dsn=server.dsn, pool_size=3, pool_timeout=60.0
        )
        c = await MemFlow.init(
            app_id="rcapp_a", backend="postgres", dsn=server.dsn, pool_size=2, pool_timeout=60.0
        )
        try:
            await a.worker("q", workflows=[rc_steps], activities=[rc_step], lease=300)
            await b.worker("q", workflows=[rc_steps], activities=[rc_step], lease=300)
            ha = [await c.workflow.start("e", "rc_steps", f"a{k}", [f"a{k}", 5], "q")
                  for k in range(4)]  # fmt: skip
            hb = [await b.workflow.start("e", "rc_steps", f"b{k}", [f"b{k}", 5], "q")
                  for k in range(4)]  # fmt: skip
            waiting = [asyncio.ensure_future(h.result(timeout=120)) for h in ha + hb]
            await asyncio.sleep(0.5)
            await stop_server(server, "fast")
            await asyncio.sleep(40.0)
            await asyncio.to_thread(server.start)
            back = time.monotonic()
            results = await asyncio.gather(*waiting, return_exceptions=True)
            took = time.monotonic() - back
            assert results == [10] * 8, results
            assert took < 8.0, f"results took {took:.1f} s after the outage"
            twice = {k: n for k, n in runs.items() if n > 1}
            assert not twice, twice
        finally:
            for mf in (c, b, a):
                await mf.shutdown()
    finally:
        server.cleanup()


# -- 8. cancels during the cycling ---------------------------------------------------
async def test_cancelled_calls_during_the_cycling_are_honoured_and_leak_nothing() -> None:
    """Client-only app (pool_size=2, pool_timeout=30); the server is down.
    Ten result() and ten start() calls wait for a connection; each is cancelled
    after 0.5-5 s and must raise CancelledError within 1 s. Once the server is
    back the pool holds at most 2 connections, nobody waits, and a start works."""
    server = private_server()
    try:
        worker_app = await MemFlow.init(app_id="rccancel", backend="postgres", dsn=server.dsn)
        await worker_app.worker("q", workflows=[rc_steps], activities=[rc_step])
        h0 = await worker_app.workflow.start("e", "rc_steps", "c0", ["c0", 1], "q")
        assert await h0.result(timeout=20) == 0
        await worker_app.shutdown()
        mf = await MemFlow.init(
            app_id="rccancel", backend="postgres", dsn=server.dsn, pool_size=2, pool_timeout=30.0
        )
        pool = pool_of(mf)
        handle = await mf.workflow.get_handle("c0")
        try:
            await stop_server(server, "fast")
            await asyncio.sleep(3.0)

            async def call(k: int) -> str:
                if k % 2:
                    return str(await handle.result(timeout=60))
                h = await mf.workflow.start("e", "rc_steps", f"x{k}", [f"x{k}", 1], "q")
                return str(h)

            tasks = [asyncio.ensure_future(call(k)) for k in range(20)]
            lags: list[float] = []
            outcomes: list[str] = []
            for t in tasks:
                await asyncio.sleep(0.25)
                t.cancel()
                t0 = time.monotonic()
                done, _ = await asyncio.wait([t], timeout=5)
                lags.append(time.monotonic() - t0)
                if not done:
                    outcomes.append("hung")
                elif t.cancelled():
                    outcomes.append("cancelled")
                else:
                    outcomes.append(f"other:{t.exception()!r}")
            await asyncio.to_thread(server.start)
            await asyncio.sleep(3.0)
            stats = pool.get_stats()
            seen = await on_server(server, "rccancel")
            assert outcomes == ["cancelled"] * 20, outcomes
            assert max(lags) < 1.0, lags
            assert stats.get("requests_waiting", 0) == 0, stats
            assert stats["pool_size"] <= 2 and seen <= 3, (stats, seen)
            h = await mf.workflow.start("e", "rc_steps", "y", ["y", 1], "q")
            assert h is not None
        finally:
            await mf.shutdown()
    finally:
        server.cleanup()


# -- 9. pool_min > 1 after a long outage ---------------------------------------------
@pytest.mark.reliability
async def test_pool_min_three_grows_back_to_three_after_a_long_outage() -> None:
    """pool_min=3, pool_size=5, idle app; the server is away 25 s. Within 5 s
    of it being back the pool has at least 3 connections again (stats and
    pg_stat_activity)."""
    server = private_server()
    try:
        mf = await MemFlow.init(
            app_id="rcmin", backend="postgres", dsn=server.dsn, pool_size=5, pool_min=3
        )
        pool = pool_of(mf)
        try:
            await asyncio.sleep(1.0)
            assert pool.get_stats()["pool_size"] >= 3
            await stop_server(server, "fast")
            await asyncio.sleep(25.0)
            during = pool.get_stats()
            await asyncio.to_thread(server.start)
            await asyncio.sleep(5.0)
            after = pool.get_stats()
            seen = await on_server(server, "rcmin")
            print("during", during, "after", after, "seen", seen)
            # psycopg_pool keeps the 3 dead connections as "available" (no check):
            # seen is 1 (LISTEN only). Not asserted: the first statements fall back.
            t0 = time.monotonic()
            async with mf.backend.transaction(readonly=True) as tx:  # type: ignore[union-attr]
                await tx.one("SELECT 1", [])
            await mf.workflow.start("e", "rc_steps", "m1", ["m1", 1], "q")
            assert time.monotonic() - t0 < 2.0
            await asyncio.sleep(1.0)
            seen = await on_server(server, "rcmin")
            assert seen >= 2, seen
        finally:
            await mf.shutdown()
    finally:
        server.cleanup()


# -- 10. an idle app and a full server -----------------------------------------------
async def test_an_idle_app_stops_trying_to_grow_into_a_full_server() -> None:
    """max_connections=8, other clients hold every free slot. A client-only app
    (pool_min=1, pool_size=4) needs a second connection once (two overlapping
    reads): the pool tries to grow and fails (too many clients). Then nothing
    more is asked of it for 12 s. restart_reconnecting's check() grows the pool
    again after every failed attempt whether anybody waits or not, so the idle
    app keeps knocking at the full server about 1.5 times a second (2 WARNINGs
    a second) for as long as it stays full; psycopg_pool on its own gave up
    (after reconnect_timeout) since nobody needed the connection."""
    server = private_server()
    hogs: list[psycopg.AsyncConnection[Any]] = []
    try:
        await stop_server(server, "fast")
        with open(server.data / "postgresql.conf", "a") as conf:
            conf.write("max_connections = 8\nsuperuser_reserved_connections = 0\n")
        await asyncio.to_thread(server.start)
        with recording() as log:
            mf = await MemFlow.init(
                app_id="rcidle", backend="postgres", dsn=server.dsn,
                pool_size=4, pool_min=1, pool_timeout=10.0,
            )  # fmt: skip
            backend = mf.backend
            assert isinstance(backend, PostgresBackend)
            pool = backend.pool
            try:
                await asyncio.sleep(0.5)
                while True:
                    try:
                        hogs.append(await psycopg.AsyncConnection.connect(server.dsn))
                    except psycopg.OperationalError:
                        break

                async def read() -> None:
                    async with backend.transaction(readonly=True) as tx:
                        await tx.one("SELECT pg_sleep(0.5)", [])

                await asyncio.gather(read(), read())
                await asyncio.sleep(3.0)
                t0 = time.monotonic()
                errors0 = pool.get_stats().get("connections_errors", 0)
                await asyncio.sleep(12.0)
                errors1 = pool.get_stats().get("connections_errors", 0)
                tries = [
                    r for r in log.since(t0, "psycopg.pool", logging.WARNING)
                    if "error connecting" in r.getMessage()
                ]  # fmt: skip
                stats = pool.get_stats()
            finally:
                for hog in hogs:
                    await hog.close()
                hogs.clear()
                await mf.shutdown()
        print(f"idle app: {len(tries)} failed tries in 12 s, errors {errors0}->{errors1}, {stats}")
        assert len(tries) <= 3, (
            f"an idle app with its pool_min tried {len(tries)} connections in 12 s"
            f" into a full server (requests_waiting={stats.get('requests_waiting', 0)})"
        )
    finally:
        for hog in hogs:
            await hog.close()
        server.cleanup()


# -- 11. a crash with an idle pool ---------------------------------------------------
async def test_the_first_calls_after_a_crash_with_an_idle_pool_succeed() -> None:
    """A client-only app, pool_min=3, idle; the server crashes (-m immediate)
    and is back 5 s later. The dead connections sit in the pool as available;
    the first starts, reads and results after the server is back must all
    succeed (no BackendUnavailable) within 5 s. start_job is a single write
    (transaction(single=True)), resent only on SESSION_ENDED; a connection the
    crash closed while it sat in the pool has no SQLSTATE, so the first start
    raises BackendUnavailable although the server is back. (Fails on 7b8e33f too.)"""
    runs.clear()
    server = private_server()
    try:
        w = await MemFlow.init(app_id="rccrash", backend="postgres", dsn=server.dsn)
        await w.worker("q", workflows=[rc_steps], activities=[rc_step])
        mf = await MemFlow.init(
            app_id="rccrash", backend="postgres", dsn=server.dsn, pool_size=4, pool_min=3
        )
        try:
            h = await mf.workflow.start("e", "rc_steps", "k0", ["k0", 1], "q")
            assert await h.result(timeout=20) == 0
            await asyncio.sleep(1.0)
            await stop_server(server, "immediate")
            await asyncio.sleep(5.0)
            await asyncio.to_thread(server.start)
            await asyncio.sleep(1.0)
            t0 = time.monotonic()
            errors: list[str] = []
            marks: list[float] = []
            for k in range(6):
                marks.append(round(time.monotonic() - t0, 2))
                try:
                    h = await mf.workflow.start("e", "rc_steps", f"k{k + 1}", [f"k{k + 1}", 1], "q")
                    await h.status()
                except Exception as error:
                    tb = "".join(traceback.format_exception(error))
                    errors.append(f"call {k}: {error!r}\n{tb[:2500]}")
            took = time.monotonic() - t0
            print("call start times", marks, "took", round(took, 2))
            assert not errors, errors
            assert took < 5.0, (took, marks)
        finally:
            await mf.shutdown()
            await w.shutdown()
    finally:
        server.cleanup()


# -- 12. outages in a row --------------------------------------------------------------
@pytest.mark.reliability
async def test_outages_in_a_row_each_end_with_work_within_seconds() -> None:
    """One worker (pool_size=3); outages of 1, 12, 3 and 20 s (-m fast and
    -m immediate alternately), a workflow in flight across each. After each,
    a new workflow finishes within 3 s of the server being back; the one in
    flight finishes right; no activity ran twice; the LISTEN connection says
    lost/back once per outage."""
    runs.clear()
    server = private_server()
    try:
        with recording() as log:
            mf = await MemFlow.init(app_id="rcrow", backend="postgres", dsn=server.dsn, pool_size=3)
            try:
                await mf.worker("q", workflows=[rc_steps], activities=[rc_step], lease=300.0)
                lags: list[float] = []
                for n, (down, mode) in enumerate(
                    [(1, "fast"), (12, "immediate"), (3, "fast"), (20, "immediate")]
                ):
                    h = await mf.workflow.start("e", "rc_steps", f"r{n}", [f"r{n}", 4], "q")
                    await asyncio.sleep(0.3)
                    await stop_server(server, mode)
                    await asyncio.sleep(down)
                    await asyncio.to_thread(server.start)
                    lags.append(await time_to_work(mf, f"after{n}"))
                    assert await h.result(timeout=30) == 6
                listen = [
                    r.getMessage()[:40] for r in log.since(0, "hotmesh.postgres", logging.WARNING)
                    if "LISTEN" in r.getMessage()
                ]  # fmt: skip
            finally:
                await mf.shutdown()
        print("lags", [round(x, 2) for x in lags], "listen lines", len(listen))
        assert max(lags) < 3.0, lags
        twice = {k: v for k, v in runs.items() if v > 1}
        assert not twice, twice
        assert len(listen) <= 8, listen
    finally:
        server.cleanup()


# -- 13. an outage that does not refuse: connections hang ------------------------------
class HangingProxy:
    """A TCP proxy in front of a private server. ``cut()``: every piped
    connection is closed and new ones are accepted and never answered (a
    network partition, a frozen host, a load balancer with no backend);
    ``heal()``: new connections are piped again (the held ones stay held, as
    SYNs lost in a partition stay lost)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.hanging = False
        self.held: list[asyncio.StreamWriter] = []
        self.piped: list[asyncio.StreamWriter] = []
        self.pipes: list[asyncio.Future[None]] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.hanging:
            self.held.append(writer)
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.close()
            return
        self.piped += [writer, up_w]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        self.pipes += [
            asyncio.ensure_future(pipe(reader, up_w)),
            asyncio.ensure_future(pipe(up_r, writer)),
        ]

    def cut(self) -> None:
        self.hanging = True
        for w in self.piped:
            w.transport.abort()
        self.piped.clear()

    def heal(self) -> None:
        self.hanging = False

    async def close(self) -> None:
        for w in self.held + self.piped:
            w.transport.abort()
        if self.server is not None:
            self.server.close()


async def test_work_goes_on_within_seconds_after_a_partition_that_hangs_connects() -> None:
    """The app reaches its server through a proxy; for 15 s the path hangs
    (connections cut, new ones accepted and never answered), then heals. A new
    workflow started once it has healed must finish within 5 s. One
    reconnection try of the pool is a connect with psycopg's default
    connect_timeout (130 s), not RECONNECT_ATTEMPT: the try stuck in the
    partition holds the pool's only growing slot (psycopg_pool grows one at a
    time), so no fresh try is made for up to two minutes after it heals."""
    runs.clear()
    server = private_server()
    proxy = HangingProxy(server.port)
    try:
        port = await proxy.start()
        dsn = server.dsn.replace(f":{server.port}/", f":{port}/")
        mf = await MemFlow.init(app_id="rcpart", backend="postgres", dsn=dsn, pool_size=3,
                                pool_timeout=10.0)  # fmt: skip
        try:
            await mf.worker("q", workflows=[rc_steps], activities=[rc_step], lease=300.0)
            assert await time_to_work(mf, "before") < 10
            proxy.cut()
            await asyncio.sleep(15.0)
            proxy.heal()
            healed = time.monotonic()
            try:
                await asyncio.wait_for(time_to_work(mf, "after"), 25)
            except (Exception, asyncio.TimeoutError) as error:
                pytest.fail(
                    f"no result {time.monotonic() - healed:.1f} s after the partition healed:"
                    f" {error!r}; pool={pool_of(mf).get_stats()} held={len(proxy.held)}"
                )
            took = time.monotonic() - healed
            assert took < 5.0, f"work took {took:.1f} s after the partition healed"
        finally:
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(mf.shutdown(), 20)
            except BaseException as error:
                print("shutdown raised", repr(error))
            print(f"shutdown took {time.monotonic() - t0:.1f} s")
            await proxy.close()
            await asyncio.sleep(1.0)
            pending = [
                repr(t.get_coro())[:90] for t in asyncio.all_tasks()
                if t is not asyncio.current_task() and not t.done()
            ]  # fmt: skip
            print("pending after shutdown:", pending)
    finally:
        await proxy.close()
        server.cleanup()
