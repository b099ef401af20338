"""A worker process for tests/test_adversarial_adv4.py, SIGKILLed at random by
the test: every in-process shortcut happens here. A ``driver`` job's activities
start a ``chain`` job from this process (an eager start, whose first step is
deferred) and signal it (handed to this process's worker when it caches the
run); ``chain`` sleeps (an armed timer) between activities.

Every activity execution is appended to a per-process log.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from typing import Any

from hotmesh_core import MemFlow, workflow

LOG = ""
CLIENT: list[MemFlow] = []


def note(line: str) -> None:
    with open(LOG, "a") as log:
        log.write(f"{line}\n")


async def step(job: str, value: int) -> int:
    note(f"{job}:{value}")
    await asyncio.sleep(random.random() * 0.05)
    return value + 1


async def launch(job: str) -> str:
    note(f"launch:{job}")
    handle = await CLIENT[0].workflow.start("t", "chain", job, [job], "adv4")
    return handle.workflow_id


async def poke(job: str) -> bool:
    note(f"poke:{job}")
    return await CLIENT[0].workflow.signal(f"{job}-sig", {"for": job})


async def driver(job: str) -> bool:
    acts = workflow.proxy_activities(activities=[launch, poke])
    await acts.launch(job)
    return await acts.poke(job)  # type: ignore[no-any-return]


async def chain(job: str) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[step])
    a = await acts.step(job, 0)
    entity = await workflow.entity()
    await entity.append("seen", a)
    await workflow.sleep_for(0.05)
    b = await acts.step(job, a)
    got = await workflow.wait_for(f"{job}-sig")
    c = await acts.step(job, b)
    await entity.append("seen", c)
    return {"abc": [a, b, c], "got": got, "entity": await entity.get()}


async def main(dsn: str, app_id: str, log_dir: str) -> None:
    global LOG
    LOG = os.path.join(log_dir, f"worker-{os.getpid()}.log")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn)
    CLIENT.append(mf)
    await mf.worker(
        "adv4",
        workflows=[driver, chain],
        activities=[step, launch, poke],
        concurrency=6,
        lease=1.0,
        sticky_wait=0.5,
    )
    print("ready", flush=True)
    await stop.wait()
    await mf.shutdown()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
