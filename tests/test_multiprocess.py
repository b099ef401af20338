"""Three worker processes on one queue: every workflow completes once, no step runs twice."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

from hotmesh_core import MemFlow
from hotmesh_postgres.testing import test_dsn

WORKER = Path(__file__).with_name("multiprocess_worker.py")


async def test_three_worker_processes_share_300_workflows(tmp_path: Path) -> None:
    dsn, app_id = test_dsn(), f"mp{uuid.uuid4().hex[:12]}"
    client = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn, drop_on_close=True)
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), dsn, app_id, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = await asyncio.to_thread(process.stdout.readline)
            assert line.strip() == "ready"
        handles = [
            await client.workflow.start("mp", "mp_flow", f"job-{i}", [f"job-{i}"], "mp")
            for i in range(300)
        ]
        results = [await handle.result(timeout=120) for handle in handles]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        await client.shutdown()
    assert results == [[1, 2, 3]] * 300  # identical to a single worker's results
    executions = Counter(
        line for log in tmp_path.glob("worker-*.log") for line in log.read_text().split()
    )
    assert len(executions) == 900
    assert set(executions.values()) == {1}  # no lease expired, so nothing ran twice
    busy = [log for log in tmp_path.glob("worker-*.log") if log.read_text()]
    assert len(busy) == 3  # all three processes took part
