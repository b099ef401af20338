"""A worker process for tests/test_multiprocess.py: serves one queue until terminated.

Every activity execution is appended to a per-process log, so the test can count
executions across processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from hotmesh_core import MemFlow, workflow

LOG = ""


async def mp_step(job: str, value: int) -> int:
    with open(LOG, "a") as log:
        log.write(f"{job}:{value}\n")
    return value + 1


async def mp_flow(job: str) -> list[int]:
    acts = workflow.proxy_activities(activities=[mp_step])
    a = await acts.mp_step(job, 0)
    b = await acts.mp_step(job, a)
    c = await acts.mp_step(job, b)
    return [a, b, c]


async def main(dsn: str, app_id: str, log_dir: str) -> None:
    global LOG
    LOG = os.path.join(log_dir, f"worker-{os.getpid()}.log")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn)
    await mf.worker("mp", workflows=[mp_flow], activities=[mp_step], concurrency=8)
    print("ready", flush=True)
    await stop.wait()
    await mf.shutdown()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
