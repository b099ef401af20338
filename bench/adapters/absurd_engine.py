"""Absurd (PyPI ``absurd-sdk``; schema by ``absurdctl init``): the Postgres-only peer.

Absurd keeps everything in PostgreSQL functions: a task is spawned, a worker
claims a run of it, each ``ctx.step`` is one checkpoint row written by one
function call, and the task's result is stored when the run completes. Its
Python SDK has no LISTEN/NOTIFY: workers poll ``claim_task`` and clients poll
``get_task_result``. How we drive it (written in bench/README.md too):

- The worker polls every ``POLL`` seconds when it finds nothing (the SDK's
  default is 0.25 s, which W3 and W4 would only measure); ``WORKERS`` worker
  loops each with its own connection (one SDK client holds one connection,
  and the tasks of one loop take turns on it) and ``CONCURRENCY`` tasks each.
- The client learns completions (W3: every 1 ms) by one batched read of the task table every
  ``RESULT_POLL`` seconds (the SDK's ``await_task_result`` polls one task at a
  time with a backoff from 50 ms to 1 s: at N=500 that would measure the
  backoff, not the engine).
- W2 is one task running 100 ``ctx.step`` coroutines under ``asyncio.gather``
  (steps run inline in the task, as DBOS's do); W3 waits with
  ``ctx.await_event`` and the client sends with ``emit_event``; W4 measures the
  lateness inside the task (its start is a checkpoint, so a replay keeps it).
- W5 and W6 are not run: W5 needs a process harness of its own (not written),
  W6 has no entity; Absurd can do both in principle.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import psycopg

try:
    from absurd_sdk import AsyncAbsurd
except ImportError:  # the bench extra is optional
    AsyncAbsurd = None

QUEUE = "bench"
POLL = 0.01
WORKERS = 4
CONCURRENCY = 10
RESULT_POLL = 0.005
TERMINAL = ("completed", "failed", "cancelled")


def register(app: Any) -> None:
    """The bench's tasks, on one SDK client (each worker loop has its own)."""

    async def plus_one(x: int) -> int:
        return x + 1

    @app.register_task("sequential_3")
    async def sequential_3(x: int, ctx: Any) -> int:
        a = await ctx.step("plus_one", lambda: plus_one(x))
        b = await ctx.step("plus_one", lambda: plus_one(a))
        return await ctx.step("plus_one", lambda: plus_one(b))  # type: ignore[no-any-return]

    @app.register_task("fanout")
    async def fanout(width: int, ctx: Any) -> int:
        results = await asyncio.gather(
            *(ctx.step("plus_one", lambda i=i: plus_one(i)) for i in range(width))
        )
        return len(results)

    @app.register_task("signal_waiter")
    async def signal_waiter(event: str, ctx: Any) -> Any:
        return await ctx.await_event(event)

    @app.register_task("sleeper")
    async def sleeper(seconds: float, ctx: Any) -> float:
        async def now() -> float:
            return time.time()

        began = await ctx.step("began", now)
        await ctx.sleep_for("nap", seconds)
        return (time.time() - began - seconds) * 1000


def install(dsn: str) -> None:
    """The schema as a user installs it (``absurdctl init``), and the bench's queue."""
    absurdctl = os.path.join(os.path.dirname(sys.executable), "absurdctl")
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regnamespace('absurd')").fetchone() != (None,):
            return
    for command in (["init"], ["create-queue", QUEUE]):
        subprocess.run([absurdctl, *command, "-d", dsn], check=True, capture_output=True, text=True)


async def serve(dsn: str, stop: asyncio.Event, workers: int, concurrency: int) -> None:
    """``workers`` worker loops (one connection each) until ``stop`` is set."""
    apps = []
    for _ in range(workers):
        app = AsyncAbsurd(dsn, queue_name=QUEUE)
        register(app)
        apps.append(app)
    loops = [
        asyncio.create_task(
            app.start_worker(
                worker_id=f"bench-{os.getpid()}-{i}",
                concurrency=concurrency,
                poll_interval=POLL,
            )
        )
        for i, app in enumerate(apps)
    ]
    await stop.wait()
    # A loop that had not started yet sets itself running when it starts, after
    # an early stop_worker(): ask again until every loop has ended.
    pending = set(loops)
    while pending:
        for app in apps:
            app.stop_worker()
        _, pending = await asyncio.wait(pending, timeout=0.05)
    await asyncio.gather(*loops, return_exceptions=True)
    for app in apps:
        await app.close()


class AbsurdEngine:
    name = "absurd"

    def __init__(self, local_worker: bool = True) -> None:
        if AsyncAbsurd is None:
            raise RuntimeError("absurd-sdk is not installed: pip install -e '.[bench]'")
        self.local_worker = local_worker
        self.client: Any = None
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.stop = asyncio.Event()
        self.serving: asyncio.Task[None] | None = None

    async def open(self, dsn: str) -> None:
        await asyncio.to_thread(install, dsn)
        self.client = AsyncAbsurd(dsn, queue_name=QUEUE)
        self.conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        self.stop = asyncio.Event()
        if self.local_worker:
            self.serving = asyncio.create_task(serve(dsn, self.stop, WORKERS, CONCURRENCY))

    async def close(self) -> None:
        self.stop.set()
        if self.serving is not None:
            await self.serving
        if self.client is not None:
            await self.client.close()
        if self.conn is not None:
            await self.conn.close()

    async def _results(
        self, task_ids: list[str], timeout: float = 600, poll: float = RESULT_POLL
    ) -> dict[str, Any]:
        """Every task's result, read in one batched query every RESULT_POLL seconds."""
        assert self.conn is not None
        pending, done = set(task_ids), {}
        deadline = time.monotonic() + timeout
        while pending:
            cursor = await self.conn.execute(
                f"SELECT task_id::text, state, completed_payload FROM absurd.t_{QUEUE}"
                " WHERE task_id = ANY(%s::uuid[]) AND state = ANY(%s)",
                [list(pending), list(TERMINAL)],
            )
            for task_id, state, payload in await cursor.fetchall():
                assert state == "completed", f"task {task_id} ended {state}"
                done[task_id] = payload
                pending.discard(task_id)
            if pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(pending)} Absurd tasks not done")
                await asyncio.sleep(poll)
        return done

    async def _spawn(self, task: str, params: Any) -> str:
        spawned = await self.client.spawn(task, params, max_attempts=1, queue=QUEUE)
        return str(spawned["task_id"])

    async def w1_sequential(self, n: int) -> float:
        began = time.perf_counter()
        ids = [await self._spawn("sequential_3", i) for i in range(n)]
        results = await self._results(ids)
        elapsed = time.perf_counter() - began
        assert [results[t] for t in ids] == [i + 3 for i in range(n)], "W1 wrong results"
        return elapsed

    async def w2_fanout(self, width: int) -> float:
        began = time.perf_counter()
        task = await self._spawn("fanout", width)
        assert (await self._results([task]))[task] == width
        return time.perf_counter() - began

    async def w3_signal(self, n: int) -> list[float]:
        assert self.conn is not None
        latencies = []
        for i in range(n):
            event = f"w3-{uuid.uuid4().hex}"
            task = await self._spawn("signal_waiter", event)
            # Sent once the task waits (its wait is registered), like the others.
            while not await (
                await self.conn.execute(
                    f"SELECT 1 FROM absurd.w_{QUEUE} WHERE task_id = %s::uuid", [task]
                )
            ).fetchone():
                await asyncio.sleep(0.002)
            began = time.perf_counter()
            await self.client.emit_event(event, i)
            assert (await self._results([task], poll=0.001))[task] == i
            latencies.append((time.perf_counter() - began) * 1000)
        return latencies

    async def w4_sleep(self, n: int, seconds: float) -> list[float]:
        ids = [await self._spawn("sleeper", seconds) for _ in range(n)]
        results = await self._results(ids, timeout=120)
        return [float(results[t]) for t in ids]
