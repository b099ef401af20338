"""W5 process for DBOS: ``start N`` launches workflows and runs until killed;
``resume N`` launches DBOS (which recovers the pending workflows of this
executor) and exits once all N workflows have succeeded."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from dbos import DBOS, DBOSConfig

LOG = {"path": ""}


def record(job: str, step: int) -> None:
    with open(LOG["path"], "a") as log:
        log.write(f"{job}:{step}\n")


@DBOS.step()
async def step(job: str, number: int) -> int:
    record(job, number)
    if number == 2:
        await asyncio.sleep(2)
    return number


@DBOS.workflow()
async def recovery_flow(job: str) -> int:
    total = 0
    for number in (1, 2, 3):
        total += await step(job, number)
    return total


async def main(mode: str, n: str, dsn: str, log_dir: str) -> None:
    LOG["path"] = os.path.join(log_dir, f"dbos-{os.getpid()}.log")
    logging.getLogger("dbos").setLevel(logging.WARNING)
    config: DBOSConfig = {
        "name": "hotmesh-bench-recovery",
        "system_database_url": dsn,
        "run_admin_server": False,
    }
    DBOS(config=config)
    DBOS.launch()
    if mode == "start":
        for i in range(int(n)):
            await DBOS.start_workflow_async(recovery_flow, f"job-{i}")
        print("ready", flush=True)
        await asyncio.Event().wait()
    print("ready", flush=True)
    began = time.perf_counter()
    while True:
        done = await DBOS.list_workflows_async(status="SUCCESS", name="recovery_flow")
        if len(done) >= int(n):
            break
        await asyncio.sleep(0.05)
    print(f"done {time.perf_counter() - began:.3f}", flush=True)
    DBOS.destroy()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
