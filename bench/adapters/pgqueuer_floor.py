"""The raw queue floor: ``pgqueuer`` (PyPI) no-op jobs on the same server.

Not a workflow engine: a PostgreSQL job queue (``FOR UPDATE SKIP LOCKED``
dequeue, LISTEN/NOTIFY wake-ups, batched acknowledgements). It shows what
the same server and driver do when nothing is recorded but the queue itself.

The figure (W1-like, written in bench/README.md too): a "workflow" is a chain
of 3 no-op jobs, ``step 1 -> step 2 -> step 3``, where each job's handler
enqueues the next one (so 3 sequential dequeues, 3 enqueues and 3
acknowledgements, as a 3-step workflow has 3 dispatches); N chains are
started by one batched enqueue, and the figure is N ÷ the seconds from that
enqueue to the moment the queue table is empty (every job acknowledged).
No result is stored, nothing is replayed and the next enqueue is not atomic
with the acknowledgement: a floor, not a peer. W2-W6 are not measured.

A second figure, the plain drain: 3N no-op jobs enqueued at once (handlers
enqueue nothing), no-op jobs/s until the queue table is empty. The chain is
bound by the latency of each dequeue round, the drain by its throughput.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import psycopg

try:
    from pgqueuer import PsycopgDriver, Queries, QueueManager
    from pgqueuer.models import Job
except ImportError:  # the bench extra is optional
    QueueManager = None

ENTRYPOINT = "bench_step"
STEPS = 3
BATCH = 200


async def serve(dsn: str, stop: asyncio.Event) -> None:
    """One QueueManager (its own connection) whose no-op handler enqueues the next step."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    enqueue_conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    queries = Queries(PsycopgDriver(enqueue_conn))
    qm = QueueManager(Queries(PsycopgDriver(conn)))

    @qm.entrypoint(ENTRYPOINT)
    async def step(job: Job) -> None:
        assert job.payload is not None
        number, chain = job.payload.decode().split(":")
        if int(number) < STEPS:
            await queries.enqueue(ENTRYPOINT, f"{int(number) + 1}:{chain}".encode())

    running = asyncio.create_task(qm.run(batch_size=BATCH, dequeue_timeout=timedelta(seconds=1)))
    await stop.wait()
    qm.shutdown.set()
    await running
    await conn.close()
    await enqueue_conn.close()


async def install(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        queries = Queries(PsycopgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()


class PgQueuerFloor:
    name = "pgqueuer"

    def __init__(self, local_worker: bool = True) -> None:
        if QueueManager is None:
            raise RuntimeError("pgqueuer is not installed: pip install -e '.[bench]'")
        self.local_worker = local_worker
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.stop = asyncio.Event()
        self.serving: asyncio.Task[None] | None = None

    async def open(self, dsn: str) -> None:
        await install(dsn)
        self.conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        self.stop = asyncio.Event()
        if self.local_worker:
            self.serving = asyncio.create_task(serve(dsn, self.stop))

    async def close(self) -> None:
        self.stop.set()
        if self.serving is not None:
            await self.serving
        if self.conn is not None:
            await self.conn.close()

    async def _drained(self, what: str) -> None:
        assert self.conn is not None
        deadline = time.monotonic() + 600
        while True:
            row = await (await self.conn.execute("SELECT count(*) FROM pgqueuer")).fetchone()
            if row == (0,):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"pgqueuer {what} not drained")
            await asyncio.sleep(0.005)

    async def noop_jobs(self, jobs: int) -> float:
        """``jobs`` no-op jobs (last steps: they enqueue nothing) at once; seconds to drain."""
        assert self.conn is not None
        queries = Queries(PsycopgDriver(self.conn))
        payloads = [f"{STEPS}:{i}".encode() for i in range(jobs)]
        began = time.perf_counter()
        await queries.enqueue([ENTRYPOINT] * jobs, payloads, [0] * jobs)
        await self._drained("no-op jobs")
        return time.perf_counter() - began

    async def w1_sequential(self, n: int) -> float:
        """N chains of 3 no-op jobs; seconds from the enqueue to an empty queue."""
        assert self.conn is not None
        queries = Queries(PsycopgDriver(self.conn))
        began = time.perf_counter()
        await queries.enqueue([ENTRYPOINT] * n, [f"1:{i}".encode() for i in range(n)], [0] * n)
        await self._drained("chains")
        elapsed = time.perf_counter() - began
        failed = await (
            await self.conn.execute(
                "SELECT count(*) FROM pgqueuer_log WHERE status <> 'successful'"
                " AND status <> 'queued' AND status <> 'picked'"
            )
        ).fetchone()
        assert failed == (0,), f"{failed} pgqueuer jobs did not succeed"
        return elapsed
