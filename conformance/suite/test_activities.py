"""Activities: sequence, parallel dispatch, retries, replay without re-execution."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import ActivityFailed, RetryPolicy, WorkflowFailed, workflow

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio

CALLS: dict[str, int] = {}
STARTED: dict[str, asyncio.Event] = {}


def counted(key: str) -> int:
    CALLS[key] = CALLS.get(key, 0) + 1
    return CALLS[key]


async def inc(key: str, value: int) -> int:
    counted(f"{key}:{value}")
    return value + 1


async def three_steps(key: str) -> list[int]:
    acts = workflow.proxy_activities(activities=[inc])
    a = await acts.inc(key, 0)
    b = await acts.inc(key, a)
    c = await acts.inc(key, b)
    return [a, b, c]


async def rendezvous(key: str, n: int) -> int:
    """Returns only once all n copies have started: proves they were dispatched together."""
    event = STARTED.setdefault(key, asyncio.Event())
    if counted(key) == n:
        event.set()
    await asyncio.wait_for(event.wait(), 5)
    return n


async def fan_out(key: str, n: int) -> list[int]:
    acts = workflow.proxy_activities(activities=[rendezvous])
    return list(await asyncio.gather(*(acts.rendezvous(key, n) for _ in range(n))))


async def flaky(key: str, fail_times: int) -> str:
    attempt = counted(key)
    if attempt <= fail_times:
        raise ConnectionError(f"attempt {attempt} failed")
    return f"ok after {attempt}"


async def retrying(key: str, fail_times: int, attempts: int) -> Any:
    acts = workflow.proxy_activities(
        activities=[flaky],
        retry_policy=RetryPolicy(
            maximum_attempts=attempts, initial_interval=0.01, maximum_interval=0.05
        ),
    )
    try:
        return await acts.flaky(key, fail_times)
    except ActivityFailed as failure:
        return {"caught": failure.type_name, "message": failure.message}


async def picky(key: str) -> None:
    counted(key)
    raise TypeError("bad argument, do not retry")


async def no_retry(key: str) -> Any:
    acts = workflow.proxy_activities(
        activities=[picky],
        retry_policy=RetryPolicy(
            maximum_attempts=5, initial_interval=0.01, non_retryable=[TypeError]
        ),
    )
    try:
        await acts.picky(key)
    except ActivityFailed as failure:
        return failure.type_name
    return "no error"


def sync_square(x: int) -> int:
    return x * x


async def squares(values: list[int]) -> list[int]:
    acts = workflow.proxy_activities(activities={"square": sync_square})
    return [await acts.square(v) for v in values]


async def remote_queue_user(x: int) -> int:
    acts = workflow.proxy_activities(activities=["sync_square"], task_queue="elsewhere")
    return await acts.sync_square(x)  # type: ignore[no-any-return]


async def test_sequential_activities(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[three_steps], activities=[inc])
    handle = await mf.workflow.start("job", "three_steps", "seq", ["seq-" + mf.app_id], "q")
    assert await handle.result(timeout=10) == [1, 2, 3]


async def test_replay_does_not_rerun_completed_activities(hm: Harness) -> None:
    mf = await hm.memflow()
    key = "replay-" + mf.app_id
    await mf.worker("q", workflows=[three_steps], activities=[inc])
    handle = await mf.workflow.start("job", "three_steps", "replay", [key], "q")
    await handle.result(timeout=10)
    # The workflow ran from the top four times; each activity ran once.
    assert [CALLS[f"{key}:{v}"] for v in (0, 1, 2)] == [1, 1, 1]


async def test_gather_dispatches_activities_together(hm: Harness) -> None:
    mf = await hm.memflow()
    key = "fan-" + mf.app_id
    await mf.worker("q", workflows=[fan_out], activities=[rendezvous], concurrency=12)
    handle = await mf.workflow.start("job", "fan_out", "fan", [key, 10], "q")
    assert await handle.result(timeout=15) == [10] * 10
    timeline = (await handle.export()).timeline
    assert [entry.index for entry in timeline] == list(range(10))


async def test_retries_until_success(hm: Harness) -> None:
    mf = await hm.memflow()
    key = "flaky-" + mf.app_id
    await mf.worker("q", workflows=[retrying], activities=[flaky])
    handle = await mf.workflow.start("job", "retrying", "r1", [key, 2, 5], "q")
    assert await handle.result(timeout=10) == "ok after 3"
    (step,) = (await handle.export()).timeline
    assert step.attempts == 3 and step.status == "done"


async def test_retries_exhausted_surface_as_activity_failed(hm: Harness) -> None:
    mf = await hm.memflow()
    key = "doomed-" + mf.app_id
    await mf.worker("q", workflows=[retrying], activities=[flaky])
    handle = await mf.workflow.start("job", "retrying", "r2", [key, 99, 3], "q")
    assert await handle.result(timeout=10) == {
        "caught": "ConnectionError",
        "message": "attempt 3 failed",
    }
    assert CALLS[key] == 3
    (step,) = (await handle.export()).timeline
    assert step.status == "failed" and step.attempts == 3


async def test_non_retryable_error_fails_at_once(hm: Harness) -> None:
    mf = await hm.memflow()
    key = "picky-" + mf.app_id
    await mf.worker("q", workflows=[no_retry], activities=[picky])
    handle = await mf.workflow.start("job", "no_retry", "nr", [key], "q")
    assert await handle.result(timeout=10) == "TypeError"
    assert CALLS[key] == 1


@pytest.mark.requires("virtual_clock")
async def test_backoff_follows_the_policy(hm: Harness) -> None:
    mf = await hm.memflow(virtual_clock=True)
    key = "backoff-" + mf.app_id
    moments: list[float] = []

    async def timed(k: str) -> str:
        moments.append(mf.backend.now())
        if len(moments) < 5:
            raise ConnectionError("again")
        return "done"

    async def backoff(k: str) -> str:
        acts = workflow.proxy_activities(
            activities={"timed": timed},
            retry_policy=RetryPolicy(
                maximum_attempts=5,
                initial_interval="1 second",
                backoff_coefficient=2.0,
                maximum_interval="5 seconds",
            ),
        )
        return await acts.timed(k)  # type: ignore[no-any-return]

    await mf.worker("q", workflows=[backoff], activities={"timed": timed})
    handle = await mf.workflow.start("job", "backoff", "bo", [key], "q")
    assert await handle.result(timeout=10) == "done"
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(moments)]
    assert gaps == [1.0, 2.0, 4.0, 5.0]


async def test_sync_activity_by_mapping(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[squares], activities={"square": sync_square})
    handle = await mf.workflow.start("job", "squares", "sq", [[1, 2, 3]], "q")
    assert await handle.result(timeout=10) == [1, 4, 9]


async def test_activity_on_another_task_queue(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[remote_queue_user])
    await mf.worker("elsewhere", activities=[sync_square])
    handle = await mf.workflow.start("job", "remote_queue_user", "rq", [9], "q")
    assert await handle.result(timeout=10) == 81


async def test_workflow_error_is_not_retried(hm: Harness) -> None:
    mf = await hm.memflow()
    key = "wf-error-" + mf.app_id

    async def fails_once(k: str) -> None:
        counted(k)
        raise RuntimeError("workflow bug")

    await mf.worker("q", workflows={"fails_once": fails_once})
    handle = await mf.workflow.start("job", "fails_once", "fo", [key], "q")
    with pytest.raises(WorkflowFailed, match="workflow bug"):
        await handle.result(timeout=10)
    assert CALLS[key] == 1
