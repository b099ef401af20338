"""The README's first program (SPEC §1), verbatim; tests check they stay equal."""

import asyncio
from hotmesh_core import MemFlow, workflow


async def greet(name: str) -> str:  # an activity: any sync or async function
    return f"Hello, {name}!"


async def hello(name: str) -> dict:  # a workflow: an async function
    entity = await workflow.entity()
    await entity.set({"name": name, "greetings": []})
    acts = workflow.proxy_activities(activities=[greet])
    text = await acts.greet(name)
    await entity.append("greetings", text)
    await workflow.sleep_for("1 second")
    return await entity.get()


async def main() -> None:
    mf = await MemFlow.init(app_id="demo")  # embedded PostgreSQL when nothing is configured
    await mf.worker(task_queue="hello", workflows=[hello], activities=[greet])
    handle = await mf.workflow.start(
        entity="greeter",
        workflow_name="hello",
        workflow_id="greet-ada",
        args=["Ada"],
        task_queue="hello",
    )
    print(await handle.result())
    await mf.shutdown()


asyncio.run(main())
