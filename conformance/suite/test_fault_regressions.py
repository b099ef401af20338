"""Defects found by trying the engine adversarially; each test failed before its fix.

They inject the fault at the exact point that lost work (a crash right after a
commit, a connection cut mid-operation, a claim whose answer never arrived)
through the engine's and the worker's own seams, so they run unchanged on every
backend. Broad, seeded fault injection lives in ``conformance.faults``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import RetryPolicy, WorkflowFailed, workflow
from hotmesh_core.engine import Engine
from hotmesh_core.errors import BackendUnavailable
from hotmesh_core.models import Job, Step
from hotmesh_core.worker import Worker

pytestmark = pytest.mark.asyncio


# -- 1. replay order of gathered multi-step branches ---------------------------


async def echo(text: str) -> str:
    # "a" answers fast, "b" slowly: the first execution interleaves a-1, b-1, a-2...
    await asyncio.sleep(0.005 if text.startswith("a") else 0.03)
    return text


async def two_step_branch(tag: str) -> list[str]:
    acts = workflow.proxy_activities(activities=[echo])
    first = await acts.echo(f"{tag}-1")
    second = await acts.echo(f"{tag}-2")
    return [first, second]


async def gathered_branches() -> list[list[str]]:
    return list(await asyncio.gather(two_step_branch("a"), two_step_branch("b")))


async def test_gathered_branches_keep_their_own_results(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[gathered_branches], activities=[echo])
    handles = [
        await mf.workflow.start("t", "gathered_branches", f"g{i}", [], "q") for i in range(4)
    ]
    for handle in handles:
        assert await handle.result(timeout=30) == [["a-1", "a-2"], ["b-1", "b-2"]]
        steps = [(e.name, e.args, e.result) for e in (await handle.export()).timeline]
        # Every call recorded once, with its own answer.
        assert sorted(str(s) for s in steps) == sorted(
            str(("echo", [text], text)) for text in ["a-1", "a-2", "b-1", "b-2"]
        )


async def mixed_branch(tag: str) -> str:
    acts = workflow.proxy_activities(activities=[echo])
    entity = await workflow.entity()
    first = await acts.echo(f"{tag}-1")
    await entity.append("seen", first)
    await workflow.sleep_for(0.01 if tag == "a" else 0.05)
    return await acts.echo(f"{tag}-2")


async def mixed_gather() -> list[str]:
    return list(await asyncio.gather(mixed_branch("a"), mixed_branch("b")))


async def test_gathered_branches_of_mixed_calls_replay_deterministically(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[mixed_gather], activities=[echo])
    handle = await mf.workflow.start("t", "mixed_gather", "mixed", [], "q")
    assert await handle.result(timeout=30) == ["a-2", "b-2"]
    assert sorted((await handle.entity())["seen"]) == ["a-1", "b-1"]


async def first_of_two() -> str:
    acts = workflow.proxy_activities(activities=[echo])
    entity = await workflow.entity()
    fast = asyncio.ensure_future(acts.echo("a-fast"))
    slow = asyncio.ensure_future(acts.echo("b-slow"))
    done, _pending = await asyncio.wait([fast, slow], return_when=asyncio.FIRST_COMPLETED)
    # Both may have answered together; what matters is that a replay sees the same.
    seen = "+".join(sorted(t.result() for t in done))
    await entity.set({"first": seen})  # recorded with its argument
    await workflow.sleep_for(0.05)  # a later run replays the race
    await asyncio.gather(fast, slow)
    return seen


async def test_first_completed_is_replayed_as_it_happened(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[first_of_two], activities=[echo])
    for i in range(3):
        handle = await mf.workflow.start("t", "first_of_two", f"race{i}", [], "q")
        seen = await handle.result(timeout=30)
        assert seen in ("a-fast", "a-fast+b-slow", "b-slow")
        assert (await handle.entity())["first"] == seen


ARGUMENT: dict[str, str] = {}


async def shifting_argument(key: str) -> str:
    acts = workflow.proxy_activities(activities=[echo])
    first = await acts.echo(ARGUMENT.get(key, "a-first"))
    ARGUMENT[key] = "a-changed"  # the deployed code now passes another argument
    await workflow.sleep_for(0.05)
    return first


async def test_a_changed_argument_is_nondeterminism(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker(
        "q", workflows=[shifting_argument], activities=[echo], max_cached_workflows=0
    )  # a deploy: a new process
    handle = await mf.workflow.start("t", "shifting_argument", "arg", [mf.app_id], "q")
    with pytest.raises(WorkflowFailed) as caught:
        await handle.result(timeout=10)
    assert caught.value.type_name == "NonDeterminismError"
    assert "a-changed" in caught.value.message and "a-first" in caught.value.message


# -- 2. a crash right after an inline activity's answer commits ----------------


async def plus_one(value: int) -> int:
    return value + 1


async def step_then_append() -> int:
    acts = workflow.proxy_activities(activities=[plus_one])
    entity = await workflow.entity()
    first = await acts.plus_one(1)
    await entity.append("log", first)  # an inline effect right after the answer
    return int(await acts.plus_one(first))


class Crash(BaseException):
    """Stands for the process dying: no handler in the worker catches it."""


async def test_a_crash_after_the_answers_commit_loses_nothing(
    hm: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed: list[str] = []
    record_answers = Engine.record_answers

    async def then_crash(self: Engine, *args: Any, **kwargs: Any) -> Any:
        leased = await record_answers(self, *args, **kwargs)
        if not crashed:
            crashed.append(leased.id)
            raise Crash  # committed; the process is gone before its next statement
        return leased

    monkeypatch.setattr(Engine, "record_answers", then_crash)
    # A job's first step runs before its dispatch commits (Worker._run_deferred):
    # its results are recorded, with the run's start, by record_deferred.
    record_deferred = Engine.record_deferred

    async def then_crash_deferred(self: Engine, *args: Any, **kwargs: Any) -> None:
        await record_deferred(self, *args, **kwargs)
        if not crashed:
            crashed.append("first step")
            raise Crash

    monkeypatch.setattr(Engine, "record_deferred", then_crash_deferred)
    mf = await hm.memflow()
    first = Worker(mf.backend, "q", workflows=[step_then_append], activities=[plus_one], lease=1)
    await first.start()
    handle = await mf.workflow.start("t", "step_then_append", "crash", [], "q")
    deadline = time.monotonic() + 10
    while not crashed and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert crashed, "the inline path was not taken"
    await first.stop(drain=False)
    await mf.worker("q", workflows=[step_then_append], activities=[plus_one], lease=1)
    assert await handle.result(timeout=20) == 3
    assert (await handle.entity())["log"] == [2]


# -- 3. a dropped connection during an entity operation ------------------------


async def appends_twice() -> list[Any]:
    entity = await workflow.entity()
    await entity.append("items", "one")
    await workflow.sleep_for(0.01)
    result: list[Any] = await entity.append("items", "two")
    return result


async def test_a_dropped_connection_is_not_a_recorded_failure(
    hm: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuts: list[str] = []
    apply_inline = Engine._apply_inline

    async def cut_once(self: Engine, tx: Any, run: Any, command: Any) -> Any:
        if command.kind == "entity" and len(cuts) < 2:
            cuts.append(command.name)
            raise BackendUnavailable("the connection to the database was lost (injected)")
        return await apply_inline(self, tx, run, command)

    monkeypatch.setattr(Engine, "_apply_inline", cut_once)
    mf = await hm.memflow()
    await mf.worker("q", workflows=[appends_twice])
    handle = await mf.workflow.start("t", "appends_twice", "cut", [], "q")
    assert await handle.result(timeout=20) == ["one", "two"]
    assert cuts == ["append", "append"]
    timeline = (await handle.export()).timeline
    assert [(e.kind, e.status) for e in timeline if e.kind == "entity"] == [
        ("entity", "done"),
        ("entity", "done"),
    ]


# -- 4. a claim that committed but whose rows never arrived --------------------


class LosesClaimAnswers:
    """A backend whose next ``lose`` claims that lease something lose their answer."""

    def __init__(self, inner: Any, lose: int) -> None:
        self._inner = inner
        self.lose = lose
        self.lost: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @asynccontextmanager
    async def transaction(self, **options: Any) -> AsyncIterator[Any]:
        claimed: list[Any] = []
        async with self._inner.transaction(**options) as tx:
            claim: Callable[..., Any] = tx.stream.claim

            async def remember(*args: Any, **kwargs: Any) -> Any:
                tasks = await claim(*args, **kwargs)
                claimed.extend(tasks)
                return tasks

            if options.get("single") and self.lose:
                tx.stream.claim = remember
            yield tx
        if claimed and self.lose:
            self.lose -= 1
            self.lost.extend(task.id for task in claimed)
            raise BackendUnavailable("the connection was lost before the claim's rows arrived")


async def test_a_lost_claim_is_handed_back_at_once(hm: Harness) -> None:
    mf = await hm.memflow()
    flaky = LosesClaimAnswers(mf.backend, lose=1)
    worker = Worker(
        flaky,
        "q",
        workflows=[step_then_append],
        activities=[plus_one],
        lease=60,
        poll_interval=0.1,
    )
    await worker.start()
    try:
        began = time.monotonic()
        handle = await mf.workflow.start("t", "step_then_append", "lost-claim", [], "q")
        assert await handle.result(timeout=20) == 3
        assert flaky.lost, "no claim answer was lost"
        # Not a whole 60 s lease: the worker handed its lost claim back.
        assert time.monotonic() - began < 15
    finally:
        await worker.stop(drain=False)


# -- 5. nothing of an interrupted job runs -------------------------------------

RAN: list[str] = []


async def record_run(tag: str) -> str:
    RAN.append(tag)
    return tag


async def waits_on_elsewhere(tag: str) -> str:
    acts = workflow.proxy_activities(activities=["record_run"], task_queue="elsewhere")
    return str(await acts.record_run(tag))


async def test_an_interrupted_jobs_queued_activity_never_runs(hm: Harness) -> None:
    mf = await hm.memflow()
    tag = f"{mf.app_id}-interrupted"
    await mf.worker("q", workflows=[waits_on_elsewhere])
    handle = await mf.workflow.start("t", "waits_on_elsewhere", "int", [tag], "q")
    deadline = time.monotonic() + 10
    while (await handle.status()) != "running" and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert await handle.interrupt()
    await mf.worker("elsewhere", activities=[record_run], poll_interval=0.05)
    other = await mf.workflow.start("t", "waits_on_elsewhere", "int-2", [tag + "-2"], "q")
    assert await other.result(timeout=20) == tag + "-2"  # the elsewhere worker is serving
    assert tag not in RAN


# -- 6. user code that raises what no handler expects --------------------------


async def exits() -> None:
    raise SystemExit(3)


async def interrupts_keyboard() -> None:
    raise KeyboardInterrupt


def activity_exits() -> None:
    raise SystemExit("from an activity")


async def calls_exiting_activity() -> None:
    acts = workflow.proxy_activities(
        activities=[activity_exits],
        retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=0.01),
    )
    await acts.activity_exits()


def hangs(seconds: float) -> str:
    time.sleep(seconds)
    return "late"


def quick(value: int) -> int:
    return value * 2


async def many_hung_then_quick(count: int) -> list[Any]:
    slow = workflow.proxy_activities(
        activities=[hangs],
        start_to_close=0.2,
        retry_policy=RetryPolicy(maximum_attempts=1),
    )
    fast = workflow.proxy_activities(
        activities=[quick], start_to_close=2, retry_policy=RetryPolicy(maximum_attempts=1)
    )
    outcomes: list[Any] = []
    for result in await asyncio.gather(
        *(slow.hangs(8.0) for _ in range(count)), return_exceptions=True
    ):
        outcomes.append(type(result).__name__)
    outcomes.append(await fast.quick(21))
    return outcomes


async def test_system_exit_fails_the_workflow_not_the_worker(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker(
        "q",
        workflows=[exits, interrupts_keyboard, calls_exiting_activity, step_then_append],
        activities=[activity_exits, plus_one],
    )
    for name in ["exits", "interrupts_keyboard", "calls_exiting_activity"]:
        handle = await mf.workflow.start("t", name, name, [], "q")
        with pytest.raises(WorkflowFailed):
            await handle.result(timeout=20)
    # ...and the worker still serves.
    handle = await mf.workflow.start("t", "step_then_append", "after", [], "q")
    assert await handle.result(timeout=20) == 3


async def test_hung_sync_activities_do_not_starve_later_ones(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker(
        "q", workflows=[many_hung_then_quick], activities=[hangs, quick], concurrency=50
    )
    handle = await mf.workflow.start("t", "many_hung_then_quick", "hung", [40], "q")
    outcomes = await handle.result(timeout=30)
    assert outcomes[:-1] == ["ActivityFailed"] * 40
    assert outcomes[-1] == 42


# -- 7. errors that cannot be stored as they are -------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


async def raises_nul() -> None:
    raise ValueError("bad\x00byte and a lone \ud800 surrogate")


async def raises_unprintable() -> None:
    raise Unprintable


async def test_unstorable_errors_still_fail_the_job_readably(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[raises_nul, raises_unprintable])
    handle = await mf.workflow.start("t", "raises_nul", "nul", [], "q")
    with pytest.raises(WorkflowFailed) as caught:
        await handle.result(timeout=20)
    assert caught.value.type_name == "ValueError"
    assert "bad\\x00byte" in caught.value.message
    handle = await mf.workflow.start("t", "raises_unprintable", "unprintable", [], "q")
    with pytest.raises(WorkflowFailed) as caught:
        await handle.result(timeout=20)
    assert caught.value.type_name == "Unprintable"
    assert "could not be read" in caught.value.message


# -- 8. names no worker serves --------------------------------------------------


async def test_work_for_a_name_nobody_serves_is_reported(
    hm: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    mf = await hm.memflow()
    worker = await mf.worker("q", workflows=[step_then_append], activities=[plus_one])
    await mf.workflow.start("t", "step_then_apend", "typo", [], "q")  # misspelt
    with caplog.at_level("WARNING", logger="hotmesh.worker"):
        unserved = await worker.report_unserved(older_than=0)
        again = await worker.report_unserved(older_than=0)
    assert [(e.kind, e.name, e.count) for e in unserved] == [("run", "step_then_apend", 1)]
    assert [(e.kind, e.name) for e in again] == [("run", "step_then_apend")]
    warnings = [r.getMessage() for r in caplog.records if "step_then_apend" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once while it lasts, not on every pass
    assert "does not serve" in warnings[0] and "step_then_append" in warnings[0]


# -- the delivery contract two racing runs rely on ------------------------------


async def job_with_answered_steps(backend: Any, job_id: str, count: int) -> None:
    """A job whose main thread has ``count`` answered, undelivered activity steps."""
    async with backend.transaction() as tx:
        await tx.store.create_job(Job(id=job_id, entity="t", workflow_name="w", task_queue="q"))
        for index in range(count):
            await tx.store.insert_step(
                Step(
                    job_id=job_id,
                    dimension="",
                    index=index,
                    kind="activity",
                    name="a",
                    status="done",
                    result=index,
                )
            )


async def test_an_activation_is_delivered_once_whichever_steps(hm: Harness) -> None:
    mf = await hm.memflow()
    await job_with_answered_steps(mf.backend, "acts", 3)
    async with mf.backend.transaction() as tx:
        assert await tx.store.mark_delivered("acts", "", [0], 1)
    async with mf.backend.transaction() as tx:
        # A run that saw other answers cannot take activation 1 too, nor skip one.
        assert not await tx.store.mark_delivered("acts", "", [1], 1)
        assert not await tx.store.mark_delivered("acts", "", [1], 3)
    async with mf.backend.transaction() as tx:
        assert await tx.store.mark_delivered("acts", "", [1, 2], 2)
        steps = await tx.store.load_steps("acts", "")
    assert [s.activation for s in steps] == [1, 2, 2]
