"""A database that is away for a while, shorter than a lease, during a run.

The worker holds the run's lease and every engine transition is safe to repeat,
so it keeps trying until the database is back: the workflow goes on seconds
after the outage, not a whole lease later, and the activity that ran before the
outage is not run again (given up after 4.4 s, the run was left to its 30 s
lease, and a hook of the faults suite missed its 20 s).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from conformance.faults import FaultsBackend
from hotmesh_core import MemFlow, workflow
from hotmesh_core.plugins import backend_test_options, installed_backends

OUTAGE = 6.0  # seconds: longer than the old patience (4.4 s), shorter than the lease
LEASE = 30.0


async def through_an_outage(x: int) -> int:
    acts = workflow.proxy_activities(activities=["begin_outage", "plus_one"])
    before = await acts.begin_outage(x)
    return await acts.plus_one(before)  # type: ignore[no-any-return]


@pytest.mark.parametrize("inner", ["memory", "postgres"])
async def test_a_run_outlasts_an_outage_shorter_than_its_lease(inner: str) -> None:
    if inner not in installed_backends():
        pytest.fail(f"backend {inner!r} is not installed")
    mf = await MemFlow.init(
        app_id="outage", backend="faults", inner=inner, **backend_test_options(inner)
    )
    faults = mf.backend
    assert isinstance(faults, FaultsBackend)
    runs: list[int] = []
    ended: list[float] = []

    def database_back() -> None:
        faults.config.p_lose_before = 0.0
        ended.append(time.monotonic())

    async def begin_outage(x: int) -> int:
        """Returns as the database goes away: recording its outcome is what waits."""
        runs.append(x)
        faults.config.p_lose_before, faults.remaining = 1.0, 10**9
        asyncio.get_running_loop().call_later(OUTAGE, database_back)
        return x + 1

    async def plus_one(x: int) -> int:
        return x + 1

    try:
        await mf.worker(
            "q",
            workflows=[through_an_outage],
            activities={"begin_outage": begin_outage, "plus_one": plus_one},
            lease=LEASE,
        )
        handle = await mf.workflow.start("e", "through_an_outage", "o-1", [1], "q")
        assert await handle.result(timeout=OUTAGE + LEASE / 2) == 3
        assert runs == [1], "the activity that ran before the outage ran again"
        # Back within a pause of the retries (3 s), not a lease, after the outage.
        assert time.monotonic() - ended[0] < 5.0
        assert faults.injected["lose_before"] > 3  # the outage did reach the run
    finally:
        faults.config.p_lose_before = 0.0
        await mf.shutdown()
