"""The data pipeline of the HotMesh README, in Python: a workflow that lives forever.

Every ``--interval`` (24 hours by default) it cleans its source and logs the
run in its entity, then sleeps, then *continues as new*: the same workflow id
starts afresh with a new, empty history, and keeps its entity. So however long
it lives, its history holds one iteration (five steps) and its entity keeps the
last ``KEEP`` log entries and a running total: bounded history, bounded memory.
The entity's change log (the audit trail) keeps every change.

The job is persistent, so ``trigger_refresh`` can clean once more from outside
(a hook, ``mf.workflow.hook(...)``) while the pipeline sleeps.

    python examples/data_pipeline.py                         # forever, daily
    python examples/data_pipeline.py --interval "10 seconds" --iterations 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import Any

from hotmesh_core import MemFlow, workflow

QUEUE = "pipeline"
KEEP = 10  # log entries the entity keeps


async def clean(source: str, run: int) -> dict[str, Any]:
    """An activity: pretend to clean a batch (deterministic)."""
    return {"source": source, "rowsCleaned": 100 * run, "rowsDropped": run}


async def clean_once(action: str) -> dict[str, Any]:
    """Clean the source once and log it: one iteration's work, shared by the
    pipeline's own loop and the ``clean_data`` hook."""
    entity = await workflow.entity()
    run = await entity.increment("runs")
    tools = workflow.proxy_activities(activities=[clean])
    summary = await tools.clean(await entity.get("source"), run)
    await entity.increment("rowsCleaned", summary["rowsCleaned"])
    log = await entity.append(
        "changeLog",
        {"action": action, "run": run, "rows": summary["rowsCleaned"]},
    )
    if len(log) > KEEP:
        await entity.merge({"changeLog": log[-KEEP:]})
    return summary


async def data_pipeline(
    source: str, interval: str = "24 hours", iterations: int | None = None, done: int = 0
) -> dict[str, Any]:
    """Clean, sleep ``interval``, continue as new; stop after ``iterations``
    (None: never)."""
    entity = await workflow.entity()
    if done == 0:
        await entity.set_if_not_exists("source", source)
        await entity.merge({"policy": {"refreshInterval": interval}})
    await clean_once("clean")
    done += 1
    if iterations is not None and done >= iterations:
        return await entity.get()  # type: ignore[no-any-return]
    await workflow.sleep_for(interval)
    await workflow.continue_as_new(source, interval, iterations, done)


async def clean_data() -> None:
    """A hook: clean once more, now, without waiting for the next interval."""
    await clean_once("triggered")


WORKFLOWS = [data_pipeline, clean_data]


async def trigger_refresh(mf: MemFlow, workflow_id: str, timeout: float = 30) -> dict[str, Any]:
    """Run a cleaning from outside; wait until it is logged (and the log trimmed:
    the hook appends, then trims, so a read between the two would see KEEP + 1)."""
    handle = await mf.workflow.get_handle(workflow_id)
    before = (await handle.state())["runs"]
    await mf.workflow.hook(workflow_id, QUEUE, "clean_data", [])
    for _ in range(int(timeout * 20)):
        state = await handle.state()
        log = state["changeLog"]
        if state["runs"] > before and log[-1]["action"] == "triggered" and len(log) <= KEEP:
            return state
        await asyncio.sleep(0.05)
    raise TimeoutError("the triggered refresh did not run")


async def main(
    app_id: str = "pipeline",
    backend: str | None = None,
    interval: str = "24 hours",
    iterations: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Start the pipeline and run its worker; with ``iterations``, return its entity
    once it has done them (and one cleaning triggered from outside)."""
    async with MemFlow.init(app_id=app_id, backend=backend, **options) as mf:
        await mf.worker(QUEUE, workflows=WORKFLOWS, activities=[clean])
        workflow_id = f"pipeline-{uuid.uuid4().hex[:8]}"
        handle = await mf.workflow.start(
            entity="pipeline",
            workflow_name="data_pipeline",
            workflow_id=workflow_id,
            args=["s3://bucket/events.csv", interval, iterations],
            task_queue=QUEUE,
            persistent=True,
        )
        print(f"pipeline {workflow_id}: cleaning every {interval}", flush=True)
        await handle.result()  # forever, when iterations is None
        return await trigger_refresh(mf, workflow_id)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", default="24 hours", help="time between cleanings")
    parser.add_argument(
        "--iterations", type=int, default=None, help="stop after N (default: never)"
    )
    parser.add_argument("--app", default="pipeline", help="app id")
    return parser.parse_args()


if __name__ == "__main__":
    given = arguments()
    final = asyncio.run(main(given.app, interval=given.interval, iterations=given.iterations))
    print(json.dumps(final, indent=2))
