"""Defects found by an adversarial pass over replay-by-activations; one test each.

Each test is a minimal reproduction that runs on every installed backend
(through the conformance ``hm`` fixture). A test still marked ``xfail(strict)``
documents a defect that is not fixed yet; once fixed it passes and the mark goes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import WorkflowClosed, WorkflowFailed, workflow
from hotmesh_core.engine import Engine

pytestmark = pytest.mark.asyncio


# -- 1. an inline continuation replays a stale history -------------------------


async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slow"


async def echo(text: str) -> str:
    return text


async def slow_then_echo() -> str:
    acts = workflow.proxy_activities(activities=[slow, echo])
    await acts.slow(0.5)  # index 0: run inline by the dispatching worker, for 0.5 s
    return str(await acts.echo("after-slow"))


async def sleep_then_echo() -> str:
    acts = workflow.proxy_activities(activities=[slow, echo])
    await workflow.sleep_for(0.05)  # index 1: answered long before index 0
    return str(await acts.echo("after-sleep"))


async def slow_activity_races_a_sleep() -> list[str]:
    return list(await asyncio.gather(slow_then_echo(), sleep_then_echo()))


async def test_an_inline_continuation_does_not_reuse_an_activation(hm: Harness) -> None:
    """The sleep's run delivers index 1 as activation 1 and records echo("after-sleep")
    at index 2. The continuation of the slow activity then replays the history it read
    before that (index 1 still pending), delivers index 0 as activation 1 too, and
    issues echo("after-slow") at index 2: its insert is silently skipped. The next run
    replays activation 1 as {0, 1}: the slow branch resumes first, issues
    echo("after-slow") at index 2, and the unchanged workflow fails with
    NonDeterminismError (before the fix)."""
    mf = await hm.memflow()
    await mf.worker("q", workflows=[slow_activity_races_a_sleep], activities=[slow, echo])
    handle = await mf.workflow.start("t", "slow_activity_races_a_sleep", "stale", [], "q")
    assert await handle.result(timeout=20) == ["after-slow", "after-sleep"]
    timeline = (await handle.export()).timeline
    assert sorted((e.name, str(e.args)) for e in timeline) == sorted(
        [
            ("slow", "[0.5]"),
            ("sleep", "0.05"),
            ("echo", "['after-slow']"),
            ("echo", "['after-sleep']"),
        ]
    )


# -- 2. a recorded inline failure is raised as another class on replay ---------


async def hook_target() -> None:
    return None


async def hooks_once_the_job_closed() -> None:
    await workflow.sleep_for(0.2)  # the main function has returned by now
    try:
        await workflow.hook(None, "hook_target", [])
        caught = "nothing"
    except WorkflowClosed:
        caught = "WorkflowClosed"
    entity = await workflow.entity()
    await entity.append("caught", caught)
    await workflow.sleep_for(0.05)  # the next run replays the failed hook call
    await entity.append("caught", caught)


async def returns_at_once() -> str:
    await workflow.hook(None, "hooks_once_the_job_closed", [])
    return "main done"


async def test_a_recorded_inline_failure_replays_as_the_same_class(hm: Harness) -> None:
    """The first run raised WorkflowClosed at ``workflow.hook`` (the job had ended) and
    the hook caught it; the replay rebuilt the recorded failure as WorkflowFailed, which
    the same ``except WorkflowClosed`` does not catch: the hook failed (before the fix)."""
    mf = await hm.memflow()
    await mf.worker("q", workflows=[returns_at_once, hooks_once_the_job_closed, hook_target])
    handle = await mf.workflow.start("t", "returns_at_once", "closed-hook", [], "q")
    assert await handle.result(timeout=10) == "main done"
    deadline = time.monotonic() + 10
    hooks: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        hooks = (await handle.export()).hooks
        if hooks and all(h["status"] != "running" for h in hooks):
            break
        await asyncio.sleep(0.05)
    assert [(h["workflow_name"], h["status"]) for h in hooks] == [
        ("hooks_once_the_job_closed", "completed")
    ]
    assert (await handle.entity())["caught"] == ["WorkflowClosed", "WorkflowClosed"]


# -- 3. exec_child of a child that another call started --------------------------


async def doubles(n: int) -> int:
    await workflow.sleep_for(0.05)
    return n * 2


async def starts_then_awaits() -> Any:
    child_id = f"{workflow.info().workflow_id}-kid"
    await workflow.start_child("c", "doubles", workflow_id=child_id, args=[4])
    try:
        return await workflow.exec_child("c", "doubles", workflow_id=child_id, args=[4])
    except WorkflowFailed as failed:
        return failed.type_name


async def awaits_one_id_twice() -> Any:
    child_id = f"{workflow.info().workflow_id}-kid"
    outcomes = await asyncio.gather(
        workflow.exec_child("c", "doubles", workflow_id=child_id, args=[1]),
        workflow.exec_child("c", "doubles", workflow_id=child_id, args=[1]),
        return_exceptions=True,
    )
    return [o.type_name if isinstance(o, WorkflowFailed) else o for o in outcomes]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("starts_then_awaits", "DuplicateWorkflow"),
        ("awaits_one_id_twice", [2, "DuplicateWorkflow"]),
    ],
)
async def test_exec_child_of_a_child_another_call_started_does_not_stall(
    hm: Harness, name: str, expected: Any
) -> None:
    """The child row answers the call that created it (parent index), so an exec_child
    that found it running waited forever for an answer that goes elsewhere (before the
    fix: both workflows never finished)."""
    mf = await hm.memflow()
    await mf.worker("q", workflows=[starts_then_awaits, awaits_one_id_twice, doubles])
    handle = await mf.workflow.start("t", name, f"{name}-1", [], "q")
    assert await handle.result(timeout=10) == expected


# -- 4. a cancelled wait keeps its waiter ----------------------------------------


async def waits_or_ticks(signal_id: str) -> Any:
    """Wait for a message, doing something every tick: a wait that loses the race is
    cancelled and a new one issued."""
    for _ in range(40):
        message = asyncio.ensure_future(workflow.wait_for(signal_id))
        tick = asyncio.ensure_future(workflow.sleep_for(0.05))
        done, pending = await asyncio.wait({message, tick}, return_when=asyncio.FIRST_COMPLETED)
        for loser in pending:
            loser.cancel()
        if message in done:
            return message.result()
    return "no message"


async def test_a_signal_is_not_swallowed_by_a_cancelled_wait(hm: Harness) -> None:
    """The signal went to the oldest waiter, the first (cancelled) wait's, and was
    dropped there; the live wait never got it (before the fix: 'no message')."""
    mf = await hm.memflow()
    await mf.worker("q", workflows=[waits_or_ticks])
    handle = await mf.workflow.start("t", "waits_or_ticks", "ticks", ["ticks-msg"], "q")
    await asyncio.sleep(0.3)
    await mf.workflow.signal("ticks-msg", {"hello": 1})
    assert await handle.result(timeout=20) == {"hello": 1}


async def first_of_wait_and_sleep(signal_id: str) -> str:
    message = asyncio.ensure_future(workflow.wait_for(signal_id))
    tick = asyncio.ensure_future(workflow.sleep_for(0.01))
    await asyncio.wait({message, tick}, return_when=asyncio.FIRST_COMPLETED)
    message.cancel()
    return "ended"


async def waits_a_while(signal_id: str) -> Any:
    return await workflow.wait_for(signal_id, timeout=5)


async def test_a_finished_jobs_wait_does_not_take_a_later_signal(hm: Harness) -> None:
    """A job that returned while its wait was pending kept the waiter: a later signal
    with that id went to it, and the job waiting now timed out (before the fix)."""
    mf = await hm.memflow()
    await mf.worker("q", workflows=[first_of_wait_and_sleep, waits_a_while])
    first = await mf.workflow.start("t", "first_of_wait_and_sleep", "gone", ["shared-id"], "q")
    assert await first.result(timeout=10) == "ended"
    second = await mf.workflow.start("t", "waits_a_while", "waiting", ["shared-id"], "q")
    await asyncio.sleep(0.2)
    await mf.workflow.signal("shared-id", 42)
    assert await second.result(timeout=10) == 42


async def test_a_signal_that_reached_a_cancelled_wait_first_is_handed_on(
    hm: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrow order: the signal takes the cancelled wait's waiter before the run
    that cancelled it commits (and removes it). The run that then delivers that answer
    into the cancelled branch hands the signal on to the live wait."""
    sent: list[str] = []
    finish_run = Engine.finish_run

    async def signal_first(self: Engine, task: Any, run: Any, outcome: Any, *rest: Any) -> Any:
        if outcome.abandoned and not sent:
            sent.append(task.job_id)
            await self.send_signal("race-msg", "raced", 60.0)
        return await finish_run(self, task, run, outcome, *rest)

    monkeypatch.setattr(Engine, "finish_run", signal_first)
    mf = await hm.memflow()
    await mf.worker("q", workflows=[waits_or_ticks])
    handle = await mf.workflow.start("t", "waits_or_ticks", "race", ["race-msg"], "q")
    assert await handle.result(timeout=20) == "raced"
    assert sent == ["race"]


async def test_a_signal_that_reached_an_ended_threads_wait_first_is_handed_on(
    hm: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same order at the end: the signal takes the waiter of a wait the job then
    returns without. No run of the finished job follows to hand it on, so the run that
    ends the job does, and the next job waiting on the id gets it."""
    sent: list[str] = []
    ended = asyncio.Event()  # the run that sent it has committed the job's end
    finish_run = Engine.finish_run

    async def signal_first(self: Engine, task: Any, run: Any, outcome: Any, *rest: Any) -> Any:
        if outcome.status == "completed" and outcome.abandoned and not sent:
            sent.append(task.job_id)
            await self.send_signal("ended-id", "raced", 60.0)
            try:
                return await finish_run(self, task, run, outcome, *rest)
            finally:
                ended.set()
        return await finish_run(self, task, run, outcome, *rest)

    # The order under test: the signal's wake-up is read only after that commit
    # (else a run it woke may read the answered wait first and end the job
    # with it: another order, as legitimate, that this test is not about).
    load_run = Engine.load_run

    async def after_the_end(self: Engine, task: Any, *rest: Any) -> Any:
        if sent and task.job_id == sent[0]:
            await ended.wait()
        return await load_run(self, task, *rest)

    monkeypatch.setattr(Engine, "load_run", after_the_end)

    monkeypatch.setattr(Engine, "finish_run", signal_first)
    # The sleep's armed timer resumes the cached run in process: that run ends
    # the job through continue_inline (the same general path for its end).
    continue_inline = Engine.continue_inline

    async def signal_first_inline(
        self: Engine, run: Any, answers: Any, outcome: Any, *rest: Any
    ) -> Any:
        if outcome.status == "completed" and outcome.abandoned and not sent:
            sent.append(run.job.id)
            await self.send_signal("ended-id", "raced", 60.0)
            try:
                return await continue_inline(self, run, answers, outcome, *rest)
            finally:
                ended.set()
        return await continue_inline(self, run, answers, outcome, *rest)

    monkeypatch.setattr(Engine, "continue_inline", signal_first_inline)
    mf = await hm.memflow()
    await mf.worker("q", workflows=[first_of_wait_and_sleep, waits_a_while])
    first = await mf.workflow.start("t", "first_of_wait_and_sleep", "ends", ["ended-id"], "q")
    assert await first.result(timeout=10) == "ended"
    assert sent == ["ends"]
    second = await mf.workflow.start("t", "waits_a_while", "next", ["ended-id"], "q")
    assert await second.result(timeout=10) == "raced"
