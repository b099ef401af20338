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
        # Half the jobs expire: once a pass has learnt "1 hour", they live in
        # their expiry day's partition, and every process must find them there.
        await client.workflow.start("mp", "mp_flow", "teach", ["teach"], "mp", expire="1 hour")
        await client.backend.maintain()
        handles = [
            await client.workflow.start(
                "mp", "mp_flow", f"job-{i}", [f"job-{i}"], "mp", expire="1 hour" if i % 2 else None
            )
            for i in range(300)
        ]
        results = [await handle.result(timeout=120) for handle in handles]
        async with client.backend.transaction(readonly=True) as tx:
            row = await tx.one(  # type: ignore[attr-defined]
                "SELECT count(*) AS n FROM jobs WHERE bucket <> 'keep'", []
            )
        assert row["n"] == 150  # the expiring ones, in their day's partition
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
    for value in range(3):
        executions.pop(f"teach:{value}", None)
    assert len(executions) == 900
    assert set(executions.values()) == {1}  # no lease expired, so nothing ran twice
    busy = [log for log in tmp_path.glob("worker-*.log") if log.read_text()]
    assert len(busy) == 3  # all three processes took part
