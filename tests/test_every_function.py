"""One workflow that uses every function of SPEC §5, end to end, on every backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotmesh_core import ActivityFailed, MemFlow, RetryPolicy, WaitTimeout, workflow
from hotmesh_core.plugins import backend_test_options

ATTEMPTS: dict[str, int] = {}


async def double(x: int) -> int:
    return x * 2


def unreliable(key: str) -> str:
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    raise ConnectionError(f"try {ATTEMPTS[key]}")


async def helper_hook(label: str, config: dict[str, str]) -> None:
    entity = await workflow.entity()
    await entity.append("hooks", label)
    await workflow.signal(config["signal"], f"{label} done")


async def side_hook(label: str) -> None:
    entity = await workflow.entity()
    await entity.set_if_not_exists("side", label)


async def child_flow(n: int) -> int:
    entity = await workflow.entity()
    await entity.set({"n": n})
    return n + 1


async def everything(key: str) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"hooks": [], "flags": {}, "count": 0})
    acts = workflow.proxy_activities(activities=[double], start_to_close="10 seconds")
    flaky = workflow.proxy_activities(
        activities=[unreliable], retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=0.01)
    )
    doubled = await asyncio.gather(acts.double(1), acts.double(2))
    try:
        await flaky.unreliable(key)
    except ActivityFailed as failure:
        await entity.merge({"flags": {"failure": failure.type_name}})
    hooked = await workflow.exec_hook(None, "helper_hook", ["first"])
    await workflow.hook(None, "side_hook", ["side"])
    child = await workflow.exec_child("child", "child_flow", args=[41])
    started = await workflow.start_child("child", "child_flow", f"{key}-started", [1])
    await workflow.sleep_for("50ms")
    await workflow.signal(f"{key}-self", {"hello": "me"})
    mine = await workflow.wait_for(f"{key}-self")
    try:
        await workflow.wait_for(f"{key}-never", timeout=0.05)
        timed_out = False
    except WaitTimeout:
        timed_out = True
    await entity.increment("count", 2)
    await entity.toggle("flags.on")
    await entity.prepend("hooks", "zero")
    await entity.delete("flags.failure")
    stamp, chance, ident = workflow.now(), workflow.random(), workflow.uuid4()
    return {
        "doubled": doubled,
        "hooked": hooked,
        "child": child,
        "started": started,
        "mine": mine,
        "timed_out": timed_out,
        "count": await entity.get("count"),
        "year": stamp.year >= 2024,
        "chance": 0 <= chance < 1,
        "ident": len(ident) == 36,
        "info": workflow.info().workflow_id,
        "entity": await entity.get(),
    }


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_every_function(backend: str) -> None:
    mf = await MemFlow.init(
        app_id=f"every-{backend}", backend=backend, **backend_test_options(backend)
    )
    try:
        key = f"every-{backend}"
        await mf.worker(
            "q",
            workflows=[everything, helper_hook, side_hook, child_flow],
            activities=[double, unreliable],
        )
        handle = await mf.workflow.start("all", "everything", key, [key], "q")
        result = await handle.result(timeout=30)
        assert result == {
            "doubled": [2, 4],
            "hooked": "first done",
            "child": 42,
            "started": f"{key}-started",
            "mine": {"hello": "me"},
            "timed_out": True,
            "count": 2,
            "year": True,
            "chance": True,
            "ident": True,
            "info": key,
            "entity": {
                "hooks": ["zero", "first"],
                "flags": {"on": True},
                "count": 2,
                **({"side": "side"} if "side" in result["entity"] else {}),
            },
        }
        assert ATTEMPTS[key] == 2
        assert await (await mf.workflow.get_handle(f"{key}-started")).result(timeout=10) == 2
        export = await handle.export()
        assert {entry.kind for entry in export.timeline} >= {
            "entity",
            "activity",
            "exec_hook",
            "hook",
            "child",
            "start_child",
            "sleep",
            "signal",
            "wait",
            "now",
            "random",
            "uuid4",
        }
    finally:
        await mf.shutdown()
