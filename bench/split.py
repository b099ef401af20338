"""W1 with the client and the workers in separate processes: CPU per process, and scale.

The client (this process) starts N workflows and awaits them; ``workers``
worker processes serve them. Each repetition reports workflows/s and the CPU
milliseconds per workflow of the client process, of all worker processes
together, and of the PostgreSQL backends of the engine's database
(bench/cpu.py). HotMesh's workers are ``hotmesh worker`` processes; the
peers' are ``python -m bench.worker_proc ENGINE`` (DBOS: a DBOS application
dequeuing from a queue the client enqueues on with ``DBOSClient``; Absurd:
SDK worker loops; pgqueuer: a QueueManager).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .cpu import CpuMeter
from .harness import median

ROOT = Path(__file__).resolve().parent.parent


def _worker_argv(engine: str, dsn: str, app_id: str) -> list[str]:
    if engine == "hotmesh-postgres":
        from .adapters.hotmesh import worker_argv

        return worker_argv(dsn, app_id)
    return [sys.executable, "-m", "bench.worker_proc", engine, dsn]


def _client(engine: str, app_id: str) -> Any:
    if engine == "hotmesh-postgres":
        from .adapters.hotmesh import HotMeshEngine

        return HotMeshEngine("postgres", local_worker=False, app_id=app_id)
    if engine == "dbos":
        from .adapters.dbos_engine import DBOSClientEngine

        return DBOSClientEngine()
    if engine == "absurd":
        from .adapters.absurd_engine import AbsurdEngine

        return AbsurdEngine(local_worker=False)
    from .adapters.pgqueuer_floor import PgQueuerFloor

    return PgQueuerFloor(local_worker=False)


async def prepare(engine: str, dsn: str) -> None:
    """Install what the worker processes expect to find (they install nothing)."""
    if engine == "absurd":
        from .adapters.absurd_engine import install

        await asyncio.to_thread(install, dsn)
    elif engine == "pgqueuer":
        from .adapters.pgqueuer_floor import install as install_queue

        await install_queue(dsn)


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _wait_ready(process: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until the process says it serves: ``ready`` (ours) or ``... serves queue`` (hotmesh)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("ready") or " serves queue " in line:
            return
        if line:
            seen.append(line)
        elif process.poll() is not None:
            break
    raise RuntimeError(f"worker {process.args!r} did not start: {''.join(seen)[-2000:]}")


def _drain(process: subprocess.Popen[str]) -> None:
    """Keep reading a worker's output so that a chatty worker never blocks on a full pipe."""
    import threading

    def read() -> None:
        assert process.stdout is not None
        for _ in process.stdout:
            pass

    threading.Thread(target=read, daemon=True).start()


def _stop(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def w1_split(engine: str, dsn: str, n: int, workers: int, reps: int = 1) -> dict[str, Any]:
    """W1 against ``workers`` fresh worker processes; medians over ``reps`` repetitions."""
    app_id = f"bench{uuid.uuid4().hex[:8]}"
    await prepare(engine, dsn)
    client = _client(engine, app_id)
    processes: list[subprocess.Popen[str]] = []
    opened = False
    try:
        if engine == "hotmesh-postgres":  # the client creates the app's schema
            await client.open(dsn)
            opened = True
        # The first worker alone (DBOS migrates its schema when it launches), then the rest.
        for _ in range(workers):
            processes.append(_start(_worker_argv(engine, dsn, app_id)))
            await asyncio.to_thread(_wait_ready, processes[-1])
            _drain(processes[-1])
        if not opened:
            await client.open(dsn)
            opened = True
        await client.w1_sequential(min(n, 50))  # warm-up: connections, caches, prepared statements
        meter = CpuMeter(dsn, [p.pid for p in processes])
        walls, cpu = [], []
        for _ in range(reps):
            meter.start()
            walls.append(await client.w1_sequential(n))
            meter.stop()
            cpu.append(meter.per(n))
        return {
            "wfs": n / median(walls),
            **{key: median([c[key] for c in cpu]) for key in cpu[0]},
        }
    finally:
        await asyncio.to_thread(_stop, processes)
        if opened:
            await client.close()
