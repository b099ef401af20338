"""Adversarial tests of the claim loop's slot accounting (commit 89b4da7: a claim
that could fill several slots leaves one for what the process hands its worker
meanwhile): a worker never runs more than ``concurrency`` tasks at once, and a
backlog is drained at full concurrency however it was queued.

Narrow races are driven by hand (a patched call that waits for the test).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

# The activity that counts how many run at once, and its workflow.
from test_adversarial_inproc import PEAK, one_slow, slow

from hotmesh_core import MemFlow
from hotmesh_core.plugins import backend_test_options

BACKENDS = ["memory", "postgres"]


@asynccontextmanager
async def app(backend: str, app_id: str | None = None) -> AsyncIterator[MemFlow]:
    options = backend_test_options(backend)
    if app_id is not None and backend == "postgres":
        options["drop_on_close"] = False
    async with MemFlow.init(
        app_id=app_id or f"advcl{uuid.uuid4().hex[:10]}", backend=backend, **options
    ) as mf:
        yield mf


@pytest.mark.parametrize("backend", BACKENDS)
async def test_starts_while_lost_claims_are_handed_back_respect_concurrency(
    backend: str,
) -> None:
    """concurrency=2. A duplicate start (same id: nothing created) hands its
    eager owner back at the claim loop's next turn; eager starts made while that
    hand-back is in flight take both slots. The claim that follows must see
    them, not the slots it counted before the hand-back (it ran 3 at once)."""
    key = f"lost-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        worker = await mf.worker(
            "q", workflows=[one_slow], activities=[slow], concurrency=2, poll_interval=0.05
        )
        entered, release = asyncio.Event(), asyncio.Event()
        original = worker._release_lost_claims

        async def gated() -> bool:
            entered.set()
            await release.wait()
            return await original()

        worker._release_lost_claims = gated  # type: ignore[method-assign]
        first = await mf.workflow.start("t", "one_slow", f"{key}-d", [key, 0.01], "q")
        assert await first.result(timeout=10) == key
        await mf.workflow.start("t", "one_slow", f"{key}-d", [key, 0.01], "q")  # a lost claim
        await asyncio.wait_for(entered.wait(), 10)
        handles = [
            await mf.workflow.start("t", "one_slow", f"{key}-{i}", [key, 0.8], "q")
            for i in range(4)
        ]  # two eager, two queued
        release.set()
        assert [await h.result(timeout=15) for h in handles] == [key] * 4
        assert PEAK[key] <= 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("poll_interval", [0.05, 1.0])
async def test_queued_work_is_not_starved_by_a_stream_of_eager_starts(
    backend: str, poll_interval: float
) -> None:
    """concurrency=1. A process starts one job after another (each eager: the
    slot is free the moment a run ends, before the claim loop wakes); a job
    queued meanwhile by another client (no eager path) must still be run within
    about the poll interval, not wait for the stream to end (it waited as long
    as the stream lasted)."""
    concurrency, streams = 1, 1
    key = f"starve-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf, app(backend, mf.app_id) as other:
        await mf.worker(
            "q",
            workflows=[one_slow],
            activities=[slow],
            concurrency=concurrency,
            poll_interval=poll_interval,
        )
        stop = asyncio.Event()

        async def stream(n: int) -> None:
            i = 0
            while not stop.is_set():
                handle = await mf.workflow.start(
                    "t", "one_slow", f"{key}-{n}-{i}", [key, 0.05], "q"
                )
                await handle.result(timeout=10)
                i += 1

        streaming = [asyncio.create_task(stream(n)) for n in range(streams)]
        try:
            await asyncio.sleep(0.3)
            queued = await other.workflow.start("t", "one_slow", f"{key}-queued", [key, 0.05], "q")
            assert await queued.result(timeout=2 + 2 * poll_interval) == key
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*streaming), 15)
        assert PEAK[key] <= concurrency
