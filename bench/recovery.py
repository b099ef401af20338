"""W5 recovery: SIGKILL a worker process mid-way through step 2, start a new one.

Reports completed and lost workflows, steps executed more than once, and the
seconds from the new process's start to all workflows done.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
LEASE = 5.0  # HotMesh's lease in this workload: recovery waits for it to run out


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, text=True, cwd=HERE.parent
    )


def _wait_line(process: subprocess.Popen[str], prefix: str, timeout: float = 120) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and process.poll() is not None:
            break
    raise RuntimeError(f"process did not print {prefix!r}")


def _wait_for_step_two(logs: Path, n: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        started = sum(text.count(":2\n") for text in (p.read_text() for p in logs.glob("*.log")))
        if started >= n:
            return
        time.sleep(0.05)


def _twice(logs: Path) -> int:
    counts = collections.Counter(line for p in logs.glob("*.log") for line in p.read_text().split())
    return sum(count - 1 for count in counts.values() if count > 1)


def run_recovery(engine: str, dsn: str, n: int) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="w5-"))
    if engine == "dbos":
        return _dbos(dsn, n, logs)
    return asyncio.run(_hotmesh(dsn, n, logs))


def _dbos(dsn: str, n: int, logs: Path) -> dict[str, Any]:
    first = _spawn(["-m", "bench.recovery_dbos", "start", str(n), dsn, str(logs)])
    _wait_line(first, "ready")
    _wait_for_step_two(logs, n)
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = _spawn(["-m", "bench.recovery_dbos", "resume", str(n), dsn, str(logs)])
    began = time.perf_counter()
    _wait_line(second, "ready")
    _wait_line(second, "done")
    seconds = time.perf_counter() - began
    second.wait(timeout=60)
    completed = n  # "done" is printed once all n succeeded
    return {
        "completed": completed,
        "lost": n - completed,
        "twice": _twice(logs),
        "seconds": f"{seconds:.2f}",
    }


async def _hotmesh(dsn: str, n: int, logs: Path) -> dict[str, Any]:
    from hotmesh_core import MemFlow

    app_id = f"w5{uuid.uuid4().hex[:8]}"
    client = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn, drop_on_close=True)
    try:
        handles = [
            await client.workflow.start(
                "w5", "recovery_flow", args=[f"job-{i}"], task_queue="recovery"
            )
            for i in range(n)
        ]
        worker_args = ["-m", "bench.recovery_hotmesh", dsn, app_id, str(logs), str(LEASE)]
        first = _spawn(worker_args)
        await asyncio.to_thread(_wait_line, first, "ready")
        await asyncio.to_thread(_wait_for_step_two, logs, n)
        await asyncio.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        first.wait()
        began = time.perf_counter()
        second = _spawn(worker_args)
        try:
            results = []
            for handle in handles:
                try:
                    results.append(await handle.result(timeout=LEASE + 60))
                except Exception:
                    results.append(None)
            seconds = time.perf_counter() - began
        finally:
            second.send_signal(signal.SIGKILL)
            second.wait()
        completed = sum(1 for r in results if r == 6)
        return {
            "completed": completed,
            "lost": n - completed,
            "twice": _twice(logs),
            "seconds": f"{seconds:.2f} (lease {LEASE:g} s)",
        }
    finally:
        await client.shutdown()
