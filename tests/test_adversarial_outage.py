"""A real PostgreSQL that goes away under a working worker (a private server,
stopped with ``pg_ctl``), found by an adversarial round on the worker's
patience with a database that is away.

- A crash shorter than the lease runs no activity twice: claims and lease
  extensions were committed with ``synchronous_commit = off``, so a crash lost
  a claim its worker was acting on, the same worker claimed the task again once
  the server was back, and both handlers ran the job's next activity, 40 ms
  apart (1 to 7 of 160 activities, in 4 runs of 5).
- A draining ``worker.stop()`` during an outage returns within seconds: it took
  89 s, each commit in hand waiting out the pool's timeout for a connection,
  one after another.
- Work goes on within seconds of an outage ending: psycopg_pool's reconnection
  backoff had grown with the outage, and found the server back 12 to 18 s late.
"""

from __future__ import annotations

import asyncio
import collections
import time

import pytest

from hotmesh_core import MemFlow, workflow
from tests.reliability.harness import PrivateServer, find_bindir

executions: collections.Counter[tuple[str, int]] = collections.Counter()


async def adv_step(wid: str, i: int) -> int:
    executions[(wid, i)] += 1
    await asyncio.sleep(0.3)
    return i


async def adv_steps(wid: str, n: int, nap_after: int | None = None) -> int:
    """``n`` activities in a row, and a durable sleep after step ``nap_after``."""
    acts = workflow.proxy_activities(activities=["adv_step"])
    total = 0
    for i in range(n):
        total += await acts.adv_step(wid, i)
        if i == nap_after:
            await workflow.sleep_for(1)
    return total


def private_server() -> PrivateServer:
    bindir = find_bindir()
    if bindir is None:
        pytest.fail("no initdb/pg_ctl for a private PostgreSQL")
    server = PrivateServer(bindir)
    server.init()
    server.start()
    return server


async def stop_server(server: PrivateServer, mode: str) -> None:
    await asyncio.to_thread(
        server._run, "pg_ctl", "-D", str(server.data), "-w", "-t", "60", "-m", mode, "stop"
    )


async def test_a_real_crash_shorter_than_the_lease_runs_no_activity_twice() -> None:
    """20 workflows of 8 activities on one worker (lease 30 s, concurrency 10);
    one second in, the server crashes (``-m immediate``) and is back 4 s later."""
    executions.clear()
    server = private_server()
    try:
        mf = await MemFlow.init(app_id="advoutage", backend="postgres", dsn=server.dsn)
        try:
            await mf.worker("q", workflows=[adv_steps], activities=[adv_step], lease=30.0)
            handles = [
                await mf.workflow.start("e", "adv_steps", f"w{k}", [f"w{k}", 8, 2], "q")
                for k in range(20)
            ]
            await asyncio.sleep(1.0)
            await stop_server(server, "immediate")
            await asyncio.sleep(4.0)
            await asyncio.to_thread(server.start)
            back = time.monotonic()
            results = await asyncio.gather(*(h.result(timeout=40) for h in handles))
            assert results == [28] * 20
            assert time.monotonic() - back < 15
            twice = {key: n for key, n in executions.items() if n > 1}
            assert not twice, f"activities run more than once after a 4 s crash: {twice}"
        finally:
            await mf.shutdown()
    finally:
        server.cleanup()


async def test_a_draining_stop_during_an_outage_returns_within_seconds() -> None:
    """10 workflows in hand; the server stops (``-m fast``) and stays down; a
    second later ``worker.stop()`` (drain) returns within the pool's timeout for
    a connection (3 s here) and a second, and once the server is back a new
    worker finishes every workflow right."""
    executions.clear()
    server = private_server()
    try:
        mf = await MemFlow.init(
            app_id="advstop", backend="postgres", dsn=server.dsn, pool_timeout=3.0
        )
        worker = await mf.worker("q", workflows=[adv_steps], activities=[adv_step], lease=5.0)
        handles = [
            await mf.workflow.start("e", "adv_steps", f"w{k}", [f"w{k}", 8], "q") for k in range(10)
        ]
        await asyncio.sleep(1.0)
        await stop_server(server, "fast")
        await asyncio.sleep(1.0)
        started = time.monotonic()
        stopping = asyncio.ensure_future(worker.stop(drain=True))
        done, _ = await asyncio.wait([stopping], timeout=15)
        took = time.monotonic() - started
        if not done:
            stopping.cancel()
        assert done, f"worker.stop(drain=True) still waiting after {took:.1f} s of an outage"
        assert took < 3.0 + 1.0 + 2.0
        await asyncio.to_thread(server.start)
        await mf.worker("q", workflows=[adv_steps], activities=[adv_step], lease=5.0)
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
        assert results == [28] * 10
        await mf.shutdown()
    finally:
        server.cleanup()


async def test_work_goes_on_within_seconds_of_a_long_outage_ending() -> None:
    """The server stops (``-m fast``) for 20 s under a running worker; once it is
    back, a new workflow started then finishes within seconds. Left to
    psycopg_pool's backoff (1, 2, 4, 8, 16 s... between reconnection tries)
    the pool found the server back 12 to 14 s late (18 s after 40 s down), and
    every statement of the app waited that long."""
    executions.clear()
    server = private_server()
    try:
        mf = await MemFlow.init(app_id="advback", backend="postgres", dsn=server.dsn)
        try:
            await mf.worker("q", workflows=[adv_steps], activities=[adv_step])
            before = await mf.workflow.start("e", "adv_steps", "before", ["before", 1], "q")
            assert await before.result(timeout=20) == 0
            await stop_server(server, "fast")
            await asyncio.sleep(20.0)
            await asyncio.to_thread(server.start)
            back = time.monotonic()
            after = await mf.workflow.start("e", "adv_steps", "after", ["after", 1], "q")
            assert await after.result(timeout=40) == 0
            took = time.monotonic() - back
            assert took < 5.0, f"a workflow started once the server was back took {took:.1f} s"
        finally:
            await mf.shutdown()
    finally:
        server.cleanup()
