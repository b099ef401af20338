"""CPU time of the processes a workload uses: this process, worker processes, PostgreSQL.

On 2 cores that every process shares, CPU is the budget, so each throughput
is reported next to the CPU milliseconds it cost per workflow in every
process involved. PostgreSQL's share is the CPU of the server backends
connected to the engine's database (``pg_stat_activity``), read from
``/proc`` with psutil on this machine: the server is local. A backend that
connects and disconnects within a measurement is missed (the pools here keep
their connections), and the server's shared processes (WAL writer,
checkpointer) are not counted.
"""

from __future__ import annotations

import time
from typing import Any

import psutil
import psycopg


def process_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (and their children)."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for p in [process, *process.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def backend_times(dsn: str) -> dict[int, float]:
    """CPU seconds so far of each server backend connected to the database of ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    times: dict[int, float] = {}
    for (pid,) in rows:
        try:
            cpu = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        times[pid] = cpu.user + cpu.system
    return times


class CpuMeter:
    """CPU seconds spent between ``start()`` and ``stop()`` here, in workers, in the server."""

    def __init__(self, dsn: str, worker_pids: list[int] | None = None) -> None:
        self.dsn = dsn
        self.worker_pids = worker_pids or []
        self._start: tuple[float, float, dict[int, float]] = (0.0, 0.0, {})
        self.client = self.workers = self.server = 0.0

    def start(self) -> None:
        self._start = (
            time.process_time(),
            process_seconds(self.worker_pids),
            backend_times(self.dsn),
        )

    def stop(self) -> None:
        client, workers, backends = self._start
        self.client = time.process_time() - client
        self.workers = process_seconds(self.worker_pids) - workers
        now = backend_times(self.dsn)
        self.server = sum(cpu - backends.get(pid, 0.0) for pid, cpu in now.items())

    def per(self, n: int) -> dict[str, Any]:
        """Milliseconds per unit of work (n workflows)."""
        return {
            "client_ms": self.client / n * 1000,
            "worker_ms": self.workers / n * 1000,
            "server_ms": self.server / n * 1000,
        }
