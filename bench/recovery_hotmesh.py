"""W5 worker process for HotMesh: serves the recovery workflow until killed."""

from __future__ import annotations

import asyncio
import os
import sys

from hotmesh_core import MemFlow, workflow

LOG = {"path": ""}


def record(job: str, step: int) -> None:
    with open(LOG["path"], "a") as log:
        log.write(f"{job}:{step}\n")


async def step(job: str, number: int) -> int:
    record(job, number)
    if number == 2:
        await asyncio.sleep(2)
    return number


async def recovery_flow(job: str) -> int:
    acts = workflow.proxy_activities(activities=[step])
    total = 0
    for number in (1, 2, 3):
        total += await acts.step(job, number)
    return total


async def main(dsn: str, app_id: str, log_dir: str, lease: str) -> None:
    LOG["path"] = os.path.join(log_dir, f"hotmesh-{os.getpid()}.log")
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn)
    await mf.worker(
        "recovery",
        workflows=[recovery_flow],
        activities=[step],
        concurrency=400,
        lease=float(lease),
        # The restarted process is the same worker: it takes back what it held
        # at once (DBOS recovers by executor id the same way).
        worker_id="recovery-worker-1",
    )
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
