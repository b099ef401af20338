"""A worker process for the reliability tests: serves one queue until SIGTERM (or kill -9).

Every activity execution writes ``S key`` when it starts and ``E key`` when it
returns to a per-process log, so a test counts executions across processes,
including those of processes it killed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from hotmesh_core import MemFlow, RetryPolicy, workflow
from hotmesh_core.errors import ActivityFailed

LOG_FD = -1


def mark(kind: str, key: str) -> None:
    # O_APPEND: one line, one write, whole in the file even if kill -9 follows.
    os.write(LOG_FD, f"{kind} {key} {time.time():.3f}\n".encode())


# -- activities -----------------------------------------------------------------------


async def note(key: str) -> str:
    mark("S", key)
    mark("E", key)
    return key


async def slow_note(key: str, seconds: float) -> str:
    mark("S", key)
    await asyncio.sleep(seconds)
    mark("E", key)
    return key


def sync_note(key: str) -> str:
    mark("S", key)
    mark("E", key)
    return key


def hang(key: str, seconds: float) -> str:
    """A sync activity that does not return (for ``seconds``): a stuck call."""
    mark("S", key)
    threading.Event().wait(seconds)
    mark("E", key)
    return key


async def act_system_exit(key: str) -> None:
    mark("S", key)
    raise SystemExit(4)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


async def act_nul(key: str) -> None:
    mark("S", key)
    raise ValueError("activity\x00message with a NUL")


async def act_unprintable(key: str) -> None:
    mark("S", key)
    raise Unprintable()


ACTIVITIES = [note, slow_note, sync_note, hang, act_system_exit, act_nul, act_unprintable]
PATIENT = RetryPolicy(maximum_attempts=50, initial_interval=0.2, maximum_interval=2)


# -- workflows ------------------------------------------------------------------------


async def mixed(job: str, kind: str) -> dict[str, Any]:
    """An activity, then a slow activity, a durable sleep or a signal, then another."""
    entity = await workflow.entity()
    await entity.set({"job": job, "trail": [], "n": 0})
    acts = workflow.proxy_activities(activities=["note", "slow_note"], retry_policy=PATIENT)
    first = await acts.note(f"{job}:a")
    await entity.append("trail", first)
    if kind == "slow":
        middle = await acts.slow_note(f"{job}:b", 1.5)
    elif kind == "sleep":
        await workflow.sleep_for(3)
        middle = "slept"
    else:
        middle = (await workflow.wait_for(f"go-{job}"))["v"]
    await entity.append("trail", middle)
    last = await acts.note(f"{job}:c")
    await entity.increment("n", 1)
    return {"job": job, "trail": await entity.get("trail"), "last": last}


async def entity_heavy(job: str, rounds: int) -> dict[str, Any]:
    """Mostly entity operations (inline, each its own transaction), with activities."""
    entity = await workflow.entity()
    await entity.set({"job": job, "n": 0, "seen": []})
    acts = workflow.proxy_activities(activities=["note"], retry_policy=PATIENT)
    for i in range(rounds):
        await entity.increment("n", 1)
        seen = await acts.note(f"{job}:{i}")
        await entity.append("seen", seen)
        await entity.merge({"last": i})
        if i % 3 == 2:
            await workflow.sleep_for(0.2)
    doc: dict[str, Any] = await entity.get()
    return doc


async def slow_loop(job: str, steps: int, seconds: float) -> int:
    """Slow activities one after another, each recorded in the entity."""
    entity = await workflow.entity()
    await entity.set({"done": []})
    acts = workflow.proxy_activities(activities=["slow_note"], retry_policy=PATIENT)
    for i in range(steps):
        await entity.append("done", await acts.slow_note(f"{job}:{i}", seconds))
    return steps


async def short(job: str) -> list[str]:
    acts = workflow.proxy_activities(activities=["note"], retry_policy=PATIENT)
    return [await acts.note(f"{job}:1"), await acts.note(f"{job}:2")]


async def counter(name: str) -> dict[str, Any]:
    """One entity many writers change: waits until told to close."""
    entity = await workflow.entity()
    await entity.set({"count": 0, "items": []})
    await workflow.wait_for(f"close-{name}")
    doc: dict[str, Any] = await entity.get()
    return doc


async def bump(i: int) -> int:
    """A hook: increment and append on its job's entity."""
    entity = await workflow.entity()
    await entity.increment("count", 1)
    await entity.append("items", i)
    return i


async def wf_system_exit(job: str) -> None:
    raise SystemExit(3)


async def wf_keyboard_interrupt(job: str) -> None:
    raise KeyboardInterrupt


async def wf_nul(job: str) -> None:
    raise ValueError("workflow\x00message with a NUL")


async def wf_unprintable(job: str) -> None:
    raise Unprintable()


async def calls(job: str, activity: str, attempts: int, start_to_close: float) -> Any:
    """Call one activity by name; an ActivityFailed is returned as text."""
    acts = workflow.proxy_activities(
        activities=[activity],
        retry_policy=RetryPolicy(maximum_attempts=attempts, initial_interval=0.1),
        start_to_close=start_to_close,
    )
    call = getattr(acts, activity)
    try:
        return await (call(job, 120) if activity == "hang" else call(job))
    except ActivityFailed as exc:
        return f"ActivityFailed {exc.type_name}: {exc.message}"


async def calls_raising(job: str, activity: str, attempts: int = 1) -> Any:
    """Call one activity and let its failure fail the workflow."""
    acts = workflow.proxy_activities(
        activities=[activity],
        retry_policy=RetryPolicy(maximum_attempts=attempts, initial_interval=0.1),
    )
    return await getattr(acts, activity)(job)


WORKFLOWS = [
    mixed,
    entity_heavy,
    slow_loop,
    short,
    counter,
    bump,
    wf_system_exit,
    wf_keyboard_interrupt,
    wf_nul,
    wf_unprintable,
    calls,
    calls_raising,
]


async def main(args: argparse.Namespace) -> None:
    global LOG_FD
    LOG_FD = os.open(
        os.path.join(args.log_dir, f"acts-{os.getpid()}.log"),
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        0o644,
    )
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    mf = await MemFlow.init(app_id=args.app, backend="postgres", dsn=args.dsn, pool_size=12)
    await mf.worker(
        args.queue,
        workflows=WORKFLOWS,
        activities=ACTIVITIES,
        concurrency=args.concurrency,
        lease=args.lease,
        poll_interval=0.5,
        worker_id=args.worker_id,
    )
    print("ready", flush=True)
    await stop.wait()
    for worker in mf.workers:
        await worker.stop(drain=False)
    await mf.shutdown()
    os._exit(0)  # do not wait for stuck activity threads


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--queue", default="rq")
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--worker-id", default=None)
    asyncio.run(main(parser.parse_args()))
