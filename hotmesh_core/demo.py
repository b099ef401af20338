"""The README's demo workflow, packaged for ``hotmesh demo``."""

from __future__ import annotations

from typing import Any

from . import workflow
from .memflow import MemFlow


async def greet(name: str) -> str:
    return f"Hello, {name}!"


async def hello(name: str) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"name": name, "greetings": []})
    acts = workflow.proxy_activities(activities=[greet])
    text = await acts.greet(name)
    await entity.append("greetings", text)
    await workflow.sleep_for("1 second")
    result: dict[str, Any] = await entity.get()
    return result


async def run(app_id: str = "demo", backend: str | None = None, **options: Any) -> Any:
    async with MemFlow.init(app_id=app_id, backend=backend, **options) as mf:
        await mf.worker(task_queue="hello", workflows=[hello], activities=[greet])
        handle = await mf.workflow.start(
            entity="greeter",
            workflow_name="hello",
            workflow_id="greet-ada",
            args=["Ada"],
            task_queue="hello",
        )
        return await handle.result(timeout=60)
