"""HotMesh on its PostgreSQL backend (or its memory backend), as the bench drives it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from hotmesh_core import MemFlow, workflow

SLEEP_SECONDS: dict[str, float] = {}


async def plus_one(x: int) -> int:
    return x + 1


async def sequential_3(x: int) -> int:
    acts = workflow.proxy_activities(activities=[plus_one])
    a = await acts.plus_one(x)
    b = await acts.plus_one(a)
    return await acts.plus_one(b)  # type: ignore[no-any-return]


async def fanout(width: int) -> int:
    acts = workflow.proxy_activities(activities=[plus_one])
    results = await asyncio.gather(*(acts.plus_one(i) for i in range(width)))
    return len(results)


async def signal_waiter(signal_id: str) -> Any:
    return await workflow.wait_for(signal_id)


async def sleeper(seconds: float) -> float:
    # Lateness as the peers measure it, on the worker's clock inside the
    # workflow: the code after the sleep runs this much later than asked
    # (workflow.now() is the moment the line first ran, recorded).
    began = workflow.now().timestamp()
    await workflow.sleep_for(seconds)
    return (workflow.now().timestamp() - began - seconds) * 1000


async def counter_hook(times: int, config: dict[str, str]) -> None:
    entity = await workflow.entity()
    for _ in range(times):
        await entity.increment("counter")
    await workflow.signal(config["signal"], None)


async def contended(writers: int, times: int) -> int:
    entity = await workflow.entity()
    await entity.set({"counter": 0})
    await asyncio.gather(
        *(workflow.exec_hook(None, "counter_hook", [times]) for _ in range(writers))
    )
    return await entity.get("counter")  # type: ignore[no-any-return]


WORKFLOWS: list[Callable[..., Any]] = [
    sequential_3,
    fanout,
    signal_waiter,
    sleeper,
    counter_hook,
    contended,
]
CONCURRENCY = 20

# What a worker process serves: `hotmesh worker bench.adapters.hotmesh:TARGET -q bench`.
TARGET = {"workflows": WORKFLOWS, "activities": [plus_one]}


def worker_argv(dsn: str, app_id: str) -> list[str]:
    """A worker process as a user starts one: the ``hotmesh worker`` command."""
    import os
    import sys

    hotmesh = os.path.join(os.path.dirname(sys.executable), "hotmesh")
    return [
        *([hotmesh] if os.path.exists(hotmesh) else [sys.executable, "-m", "hotmesh_core.cli"]),
        *("--dsn", dsn, "--app", app_id, "worker", "bench.adapters.hotmesh:TARGET"),
        *("-q", "bench", "--concurrency", str(CONCURRENCY), "--log-level", "warning"),
    ]


class HotMeshEngine:
    def __init__(
        self,
        backend: str = "postgres",
        concurrency: int = CONCURRENCY,
        local_worker: bool = True,
        app_id: str | None = None,
        drop_on_close: bool = True,
    ) -> None:
        self.backend = backend
        self.name = f"hotmesh-{backend}"
        self.concurrency = concurrency
        self.local_worker = local_worker
        self.app_id = app_id or f"bench{uuid.uuid4().hex[:8]}"
        self.drop_on_close = drop_on_close
        self.mf: MemFlow | None = None

    async def open(self, dsn: str) -> None:
        # The library's default pool (10): on 2 cores, more connections only add
        # contention (measured: pool 20 / concurrency 50 was slower than 10 / 20).
        options: dict[str, Any] = {"dsn": dsn} if self.backend == "postgres" else {}
        self.mf = await MemFlow.init(
            app_id=self.app_id,
            backend=self.backend,
            drop_on_close=self.drop_on_close,
            **options,
        )
        if self.local_worker:
            await self.mf.worker(
                "bench", workflows=WORKFLOWS, activities=[plus_one], concurrency=self.concurrency
            )

    async def close(self) -> None:
        if self.mf is not None:
            await self.mf.shutdown()

    @property
    def _mf(self) -> MemFlow:
        assert self.mf is not None
        return self.mf

    async def _run_all(self, name: str, args: list[list[Any]]) -> list[Any]:
        handles = [
            await self._mf.workflow.start("bench", name, args=a, task_queue="bench") for a in args
        ]
        return list(await asyncio.gather(*(h.result(timeout=600) for h in handles)))

    async def w1_sequential(self, n: int) -> float:
        began = time.perf_counter()
        results = await self._run_all("sequential_3", [[i] for i in range(n)])
        elapsed = time.perf_counter() - began
        assert results == [i + 3 for i in range(n)], "W1 returned wrong results"
        return elapsed

    async def w2_fanout(self, width: int) -> float:
        began = time.perf_counter()
        (count,) = await self._run_all("fanout", [[width]])
        assert count == width
        return time.perf_counter() - began

    async def w3_signal(self, n: int) -> list[float]:
        latencies = []
        for i in range(n):
            signal_id = f"w3-{uuid.uuid4().hex}-{i}"
            handle = await self._mf.workflow.start(
                "bench", "signal_waiter", args=[signal_id], task_queue="bench"
            )
            while await handle.status() != "running":
                await asyncio.sleep(0.002)
            began = time.perf_counter()
            await self._mf.workflow.signal(signal_id, i)
            assert await handle.result(timeout=60) == i
            latencies.append((time.perf_counter() - began) * 1000)
        return latencies

    async def w4_sleep(self, n: int, seconds: float) -> list[float]:
        handles = [
            await self._mf.workflow.start("bench", "sleeper", args=[seconds], task_queue="bench")
            for _ in range(n)
        ]
        return [float(await handle.result(timeout=120)) for handle in handles]

    async def w6_contention(self, writers: int, times: int) -> tuple[int, float]:
        began = time.perf_counter()
        (final,) = await self._run_all("contended", [[writers, times]])
        return int(final), time.perf_counter() - began
