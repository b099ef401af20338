"""The fixture users get from ``hotmesh_core.testing``: memory backend, virtual clock."""

import time

from hotmesh_core import MemFlow, workflow


async def reminder(text: str) -> str:
    await workflow.sleep_for("24 hours")
    entity = await workflow.entity()
    await entity.set({"reminded": text})
    return text


async def test_a_day_long_sleep_takes_no_time(memflow: MemFlow) -> None:
    await memflow.worker("reminders", workflows=[reminder])
    started_virtual, started_real = memflow.backend.now(), time.monotonic()
    handle = await memflow.workflow.start("note", "reminder", "r1", ["stretch"], "reminders")
    assert await handle.result(timeout=5) == "stretch"
    assert memflow.backend.now() - started_virtual >= 86400
    assert time.monotonic() - started_real < 5
    assert await handle.state() == {"reminded": "stretch"}


async def test_the_clock_can_be_moved_by_hand(memflow: MemFlow) -> None:
    before = memflow.clock.now()
    memflow.clock.advance("90 minutes")
    assert memflow.clock.now() - before == 5400
