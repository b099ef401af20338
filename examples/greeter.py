"""What `hotmesh worker examples.greeter:served --queue hello` serves (see the README)."""

from __future__ import annotations

from typing import Any

from hotmesh_core import workflow


async def greet(name: str) -> str:
    return f"Hello, {name}!"


async def hello(name: str) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"name": name, "greetings": []})
    acts = workflow.proxy_activities(activities=[greet])
    await entity.append("greetings", await acts.greet(name))
    result: dict[str, Any] = await entity.get()
    return result


# The worker's target: workflows and activities by list (a module or an object
# with these two attributes, or a plain list of workflows, work too).
served = {"workflows": [hello], "activities": [greet]}
