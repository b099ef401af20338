"""The private event loop that runs workflow code."""

import asyncio

import pytest

from hotmesh_core.errors import HotMeshError
from hotmesh_core.replay import ReplayLoop


def test_runs_only_what_is_ready_and_keeps_creation_order() -> None:
    loop = ReplayLoop(0.0)  # type: ignore[abstract]
    order: list[str] = []
    blocker = loop.create_future()

    async def branch(name: str) -> None:
        order.append(name)
        await blocker

    async def root() -> None:
        await asyncio.gather(branch("a"), branch("b"), branch("c"))

    task = loop.create_task(root())
    loop.run_ready()
    assert order == ["a", "b", "c"] and not task.done()
    blocker.set_result(None)
    loop.run_ready()
    assert task.done() and task.exception() is None


def test_asyncio_timers_are_refused() -> None:
    loop = ReplayLoop(0.0)  # type: ignore[abstract]

    async def sleeper() -> None:
        await asyncio.sleep(1)

    task = loop.create_task(sleeper())
    loop.run_ready()
    assert isinstance(task.exception(), HotMeshError)
    with pytest.raises(HotMeshError, match="sleep_for"):
        raise task.exception()  # type: ignore[misc]
