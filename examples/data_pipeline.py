"""The data pipeline of the HotMesh README, in Python.

The entity holds the ``source``, the policy (``pipeline.policy.refreshInterval``)
and a ``changeLog``. The ``run_pipeline`` hook loops: ``clean_data``, then
``schedule_refresh`` (a durable sleep for the policy interval), until
``pipeline.maxRuns`` cleanings are done (set it, or interrupt the job, to stop).
The job is persistent, so ``trigger_refresh`` can run the pipeline again from
outside with ``mf.workflow.hook(...)`` after the main function returned.

    python examples/data_pipeline.py           # embedded PostgreSQL, no setup
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from hotmesh_core import MemFlow, workflow

QUEUE = "pipeline"


async def clean(source: str, run: int) -> dict[str, Any]:
    """An activity: pretend to clean a batch (deterministic)."""
    return {"source": source, "rowsCleaned": 100 * run, "rowsDropped": run}


async def data_pipeline(source: str, refresh_interval: str, max_runs: int) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set(
        {
            "source": source,
            "pipeline": {
                "version": 1,
                "policy": {"refreshInterval": refresh_interval},
                "maxRuns": max_runs,
            },
            "runs": 0,
            "changeLog": [],
        }
    )
    await workflow.exec_hook(QUEUE, "run_pipeline", [True])
    return await entity.get()  # type: ignore[no-any-return]


async def run_pipeline(repeat: bool = False, config: dict[str, str] | None = None) -> None:
    entity = await workflow.entity()
    while True:
        await workflow.exec_hook(QUEUE, "clean_data", [])
        runs = await entity.get("runs")
        if not repeat or runs >= await entity.get("pipeline.maxRuns"):
            break
        await workflow.exec_hook(QUEUE, "schedule_refresh", [])
    if config is not None:
        await workflow.signal(config["signal"], {"runs": await entity.get("runs")})


async def clean_data(config: dict[str, str]) -> None:
    entity = await workflow.entity()
    run = await entity.increment("runs")
    tools = workflow.proxy_activities(activities=[clean])
    summary = await tools.clean(await entity.get("source"), run)
    await entity.append(
        "changeLog",
        {
            "action": "clean",
            "run": run,
            "rows": summary["rowsCleaned"],
            "at": workflow.now().isoformat(),
        },
    )
    await workflow.signal(config["signal"], summary)


async def schedule_refresh(config: dict[str, str]) -> None:
    entity = await workflow.entity()
    interval = await entity.get("pipeline.policy.refreshInterval")
    await workflow.sleep_for(interval)
    await entity.append(
        "changeLog", {"action": "refresh", "after": interval, "at": workflow.now().isoformat()}
    )
    await workflow.signal(config["signal"], {"slept": interval})


WORKFLOWS = [data_pipeline, run_pipeline, clean_data, schedule_refresh]


async def trigger_refresh(mf: MemFlow, workflow_id: str, timeout: float = 30) -> dict[str, Any]:
    """Run the pipeline once more from outside; wait until its cleaning is logged."""
    before = len((await (await mf.workflow.get_handle(workflow_id)).state())["changeLog"])
    await mf.workflow.hook(workflow_id, QUEUE, "run_pipeline", [False])
    handle = await mf.workflow.get_handle(workflow_id)
    for _ in range(int(timeout * 20)):
        state = await handle.state()
        if len(state["changeLog"]) > before:
            return state
        await asyncio.sleep(0.05)
    raise TimeoutError("the triggered refresh did not run")


async def main(
    app_id: str = "pipeline",
    backend: str | None = None,
    refresh_interval: str = "1s",
    max_runs: int = 3,
    **options: Any,
) -> dict[str, Any]:
    async with MemFlow.init(app_id=app_id, backend=backend, **options) as mf:
        await mf.worker(QUEUE, workflows=WORKFLOWS, activities=[clean])
        workflow_id = f"pipeline-{uuid.uuid4().hex[:8]}"
        handle = await mf.workflow.start(
            entity="pipeline",
            workflow_name="data_pipeline",
            workflow_id=workflow_id,
            args=["s3://bucket/events.csv", refresh_interval, max_runs],
            task_queue=QUEUE,
            persistent=True,
        )
        await handle.result(timeout=120)
        return await trigger_refresh(mf, workflow_id)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=2))
