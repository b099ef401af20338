"""DBOS Transact (PyPI ``dbos``) on the same PostgreSQL server: the peer we measure against.

DBOS runs steps inline in the workflow's process and checkpoints each step as a
row.  It has no entity or hooks; W6 is measured as concurrent workflows whose
steps increment one counter row, the closest equivalent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import psycopg

try:
    from dbos import DBOS, DBOSClient, DBOSConfig
except ImportError:  # the bench extra is optional
    DBOS = None

COUNTER_DSN: dict[str, str] = {}

if DBOS is not None:

    @DBOS.step()
    async def plus_one(x: int) -> int:
        return x + 1

    @DBOS.workflow()
    async def sequential_3(x: int) -> int:
        a = await plus_one(x)
        b = await plus_one(a)
        return await plus_one(b)

    @DBOS.workflow()
    async def fanout(width: int) -> int:
        results = await asyncio.gather(*(plus_one(i) for i in range(width)))
        return len(results)

    @DBOS.workflow()
    async def signal_waiter() -> Any:
        return await DBOS.recv_async("w3", timeout_seconds=60)

    @DBOS.workflow()
    async def sleeper(seconds: float) -> float:
        began = time.time()
        await DBOS.sleep_async(seconds)
        return (time.time() - began - seconds) * 1000

    @DBOS.step()
    async def increment_counter(name: str) -> None:
        async with await psycopg.AsyncConnection.connect(
            COUNTER_DSN["dsn"], autocommit=True
        ) as conn:
            await conn.execute("UPDATE bench_counter SET value = value + 1 WHERE name = %s", [name])

    @DBOS.workflow()
    async def counter_writer(name: str, times: int) -> None:
        for _ in range(times):
            await increment_counter(name)


class DBOSEngine:
    name = "dbos"

    def __init__(self) -> None:
        if DBOS is None:
            raise RuntimeError("DBOS is not installed: pip install -e '.[bench]'")

    async def open(self, dsn: str) -> None:
        COUNTER_DSN["dsn"] = dsn
        logging.getLogger("dbos").setLevel(logging.WARNING)
        config: DBOSConfig = {
            "name": "hotmesh-bench",
            "system_database_url": dsn,
            "run_admin_server": False,
        }
        DBOS(config=config)
        DBOS.launch()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS bench_counter"
                " (name text PRIMARY KEY, value bigint NOT NULL)"
            )

    async def close(self) -> None:
        DBOS.destroy(destroy_registry=False)

    async def w1_sequential(self, n: int) -> float:
        began = time.perf_counter()
        handles = [await DBOS.start_workflow_async(sequential_3, i) for i in range(n)]
        results = [await h.get_result() for h in handles]
        elapsed = time.perf_counter() - began
        assert results == [i + 3 for i in range(n)], "W1 returned wrong results"
        return elapsed

    async def w2_fanout(self, width: int) -> float:
        began = time.perf_counter()
        handle = await DBOS.start_workflow_async(fanout, width)
        assert await handle.get_result() == width
        return time.perf_counter() - began

    async def w3_signal(self, n: int) -> list[float]:
        latencies = []
        for i in range(n):
            handle = await DBOS.start_workflow_async(signal_waiter)
            while (await handle.get_status()).status != "PENDING":
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.005)  # let it reach recv
            began = time.perf_counter()
            await DBOS.send_async(handle.get_workflow_id(), i, "w3")
            assert await handle.get_result() == i
            latencies.append((time.perf_counter() - began) * 1000)
        return latencies

    async def w4_sleep(self, n: int, seconds: float) -> list[float]:
        handles = [await DBOS.start_workflow_async(sleeper, seconds) for _ in range(n)]
        return [float(await h.get_result()) for h in handles]

    async def w6_contention(self, writers: int, times: int) -> tuple[int, float]:
        name = uuid.uuid4().hex
        async with await psycopg.AsyncConnection.connect(
            COUNTER_DSN["dsn"], autocommit=True
        ) as conn:
            await conn.execute("INSERT INTO bench_counter (name, value) VALUES (%s, 0)", [name])
            began = time.perf_counter()
            handles = [
                await DBOS.start_workflow_async(counter_writer, name, times) for _ in range(writers)
            ]
            for handle in handles:
                await handle.get_result()
            elapsed = time.perf_counter() - began
            row = await (
                await conn.execute("SELECT value FROM bench_counter WHERE name = %s", [name])
            ).fetchone()
        assert row is not None
        return int(row[0]), elapsed


class DBOSClientEngine:
    """W1 from outside the application: ``DBOSClient`` enqueues on the worker processes' queue.

    Completions are read in one batched ``list_workflows`` every 5 ms (a
    handle's ``get_result`` polls one workflow at a time, by default each 1 s).
    """

    name = "dbos"

    def __init__(self) -> None:
        if DBOS is None:
            raise RuntimeError("DBOS is not installed: pip install -e '.[bench]'")
        self.client: Any = None

    async def open(self, dsn: str) -> None:
        self.client = DBOSClient(system_database_url=dsn, application_name="hotmesh-bench")

    async def close(self) -> None:
        if self.client is not None:
            self.client.destroy()

    async def w1_sequential(self, n: int) -> float:
        options: Any = {"queue_name": "bench", "workflow_name": "sequential_3"}
        began = time.perf_counter()
        ids = [(await self.client.enqueue_async(options, i)).get_workflow_id() for i in range(n)]
        results: dict[str, Any] = {}
        pending = set(ids)
        deadline = time.monotonic() + 600
        while pending:
            done = await self.client.list_workflows_async(
                workflow_ids=list(pending), status=["SUCCESS", "ERROR"], load_input=False
            )
            for status in done:
                assert status.status == "SUCCESS", status
                results[status.workflow_id] = status.output
                pending.discard(status.workflow_id)
            if pending:
                assert time.monotonic() < deadline, f"{len(pending)} DBOS workflows not done"
                await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - began
        assert [results[w] for w in ids] == [i + 3 for i in range(n)], "W1 wrong results"
        return elapsed
