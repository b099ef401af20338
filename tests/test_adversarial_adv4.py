"""Adversarial tests (adv4) of the in-process shortcuts: the deferred first step,
signals handed over, armed timers, eager starts and local results, under crashes,
cut connections, races and odd workflows, on both backends.

Narrow races are driven by hand (a patched engine call that waits for the
test), never left to timing.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hotmesh_core import MemFlow, RetryPolicy, workflow
from hotmesh_core.errors import ActivityFailed
from hotmesh_postgres.testing import test_dsn

BACKENDS = ["memory", "postgres"]


@asynccontextmanager
async def app(backend: str, **extra: Any) -> AsyncIterator[MemFlow]:
    options: dict[str, Any] = dict(extra)
    if backend == "postgres":
        options.update(dsn=test_dsn(), drop_on_close=True)
    async with MemFlow.init(
        app_id=f"adv4{uuid.uuid4().hex[:10]}", backend=backend, **options
    ) as mf:
        yield mf


async def until(condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


CALLS: dict[str, int] = {}
GATES: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    GATES.clear()


def called(key: str) -> int:
    CALLS[key] = CALLS.get(key, 0) + 1
    return CALLS[key]


async def echo(key: str) -> str:
    called(key)
    return key


async def gate(key: str) -> str:
    called(key)
    await GATES[key].wait()
    return key


async def flaky(key: str) -> str:
    if called(key) == 1:
        raise RuntimeError(f"{key} fails once")
    return key


class Opaque:
    pass


async def not_json(key: str) -> Any:
    called(key)
    return Opaque()


def shape(export: Any) -> list[tuple[Any, ...]]:
    """What a user sees of a timeline, times and random values aside."""
    out = []
    for e in export.timeline:
        value = e.result if e.kind not in ("now", "random", "uuid4", "value") else type(e.result)
        out.append((e.dimension, e.index, e.kind, e.name, e.status, value, e.attempts))
    return out


# -- the deferred first step: every shape of first run ------------------------------


async def first_mix(key: str, generation: int) -> dict[str, Any]:
    acts = workflow.proxy_activities(
        activities=[echo, flaky, not_json],
        retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=0.05),
    )
    started = workflow.now()
    rolled = workflow.random()
    ident = workflow.uuid4()
    a, b, c = await asyncio.gather(
        acts.echo(f"{key}-a"), acts.flaky(f"{key}-f{generation}"), acts.echo(f"{key}-c")
    )
    entity = await workflow.entity()
    await entity.merge({"seen": [a, b, c], "g": generation})
    try:
        await acts.not_json(f"{key}-n{generation}")
        odd = "stored"
    except ActivityFailed as failed:
        odd = failed.type_name
    after = workflow.now()
    got = await workflow.wait_for(f"{key}-sig{generation}")
    if generation == 0:
        await workflow.continue_as_new(key, 1)
    return {
        "abc": [a, b, c],
        "odd": odd,
        "got": got,
        "ordered": after >= started,
        "types": [type(rolled).__name__, type(ident).__name__],
        "entity": await entity.get(),
    }


@pytest.mark.parametrize("backend", BACKENDS)
async def test_first_steps_of_every_shape_equal_the_ordinary_path(backend: str) -> None:
    """A cached worker defers a job's first step; an uncached one never does.
    Both must store and return the same: values, a gather with a retried
    activity, an entity change after it, a non-JSON result, a signal sent
    before its wait, continue_as_new."""
    results = {}
    shapes = {}
    async with app(backend) as mf:
        for queue, cache in (("cached", 100), ("plain", 0)):
            await mf.worker(
                queue,
                workflows=[first_mix],
                activities=[echo, flaky, not_json],
                max_cached_workflows=cache,
            )
            key = f"mix-{queue}"
            for generation in (0, 1):
                await mf.workflow.signal(f"{key}-sig{generation}", {"g": generation})
            handle = await mf.workflow.start("t", "first_mix", key, [key, 0], queue)
            result = await handle.result(timeout=30)
            results[queue] = {**result, "abc": [x.split("-", 2)[-1] for x in result["abc"]]}
            results[queue]["entity"]["seen"] = [
                x.split("-", 2)[-1] for x in result["entity"]["seen"]
            ]
            shapes[queue] = repr(shape(await handle.export())).replace(queue, "Q")
            assert CALLS[f"{key}-f0"] == 2 and CALLS[f"{key}-f1"] == 2
            assert CALLS[f"{key}-a"] == 2  # once a generation
    assert results["cached"] == results["plain"]
    assert results["cached"]["odd"] == "SerializationError"
    assert results["cached"]["got"] == {"g": 1}
    assert shapes["cached"] == shapes["plain"]


# -- crashes around the deferred first step ------------------------------------------


async def gate_then_note(key: str) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[gate, echo])
    first = await acts.gate(key)
    entity = await workflow.entity()
    await entity.append("notes", first)  # a durable side effect: record_deferred first
    second = await acts.echo(f"{key}-2")
    return {"first": first, "second": second, "entity": await entity.get()}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_worker_dying_in_a_first_step_leaves_it_to_another(backend: str) -> None:
    """stop(drain=False) (a crash) while a job's first activity runs before anything
    of the run committed: another worker runs the run and the activity again."""
    key = f"die-{uuid.uuid4().hex[:6]}"
    GATES[key] = asyncio.Event()
    async with app(backend) as mf:
        first = await mf.worker("q", workflows=[gate_then_note], activities=[gate, echo], lease=0.5)
        handle = await mf.workflow.start("t", "gate_then_note", key, [key], "q")
        await until(lambda: CALLS.get(key) == 1, what="the first attempt")
        await first.stop(drain=False)
        GATES[key].set()
        await mf.worker("q", workflows=[gate_then_note], activities=[gate, echo], lease=0.5)
        result = await handle.result(timeout=20)
        assert result == {"first": key, "second": f"{key}-2", "entity": {"notes": [key]}}
        assert CALLS[key] == 2  # at least once
        kinds = [(e.index, e.kind, e.status, e.attempts) for e in (await handle.export()).timeline]
        assert kinds == [(0, "activity", "done", 1), (1, "entity", "done", 0),
                         (2, "activity", "done", 1), (3, "entity", "done", 0)]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_worker_dying_after_recording_a_first_step_loses_nothing(backend: str) -> None:
    """The crash comes after record_deferred committed the activity's step (the
    resumed run reached a durable side effect) and before that effect: the next
    worker delivers the recorded result, runs the side effect once, finishes."""
    key = f"rec-{uuid.uuid4().hex[:6]}"
    GATES[key] = asyncio.Event()
    GATES[key].set()
    async with app(backend) as mf:
        first = await mf.worker("q", workflows=[gate_then_note], activities=[gate, echo], lease=0.5)
        recorded = asyncio.Event()
        original = first.engine.record_deferred

        async def record_then_hang(*args: Any, **kwargs: Any) -> None:
            await original(*args, **kwargs)
            recorded.set()
            await asyncio.Event().wait()  # the process dies here

        first.engine.record_deferred = record_then_hang  # type: ignore[method-assign]
        handle = await mf.workflow.start("t", "gate_then_note", key, [key], "q")
        await asyncio.wait_for(recorded.wait(), 10)
        await first.stop(drain=False)
        await mf.worker("q", workflows=[gate_then_note], activities=[gate, echo], lease=0.5)
        result = await handle.result(timeout=20)
        assert result == {"first": key, "second": f"{key}-2", "entity": {"notes": [key]}}
        assert CALLS[key] == 1  # recorded: not run again
        export = await handle.export()
        kinds = [(e.index, e.kind, e.status, e.attempts) for e in export.timeline]
        assert kinds == [(0, "activity", "done", 1), (1, "entity", "done", 0),
                         (2, "activity", "done", 1), (3, "entity", "done", 0)]  # fmt: skip
        assert [c["version"] for c in export.entity_changes] == [1]


# -- signals -------------------------------------------------------------------------


async def listen_same(signal_id: str, count: int) -> list[Any]:
    return [await workflow.wait_for(signal_id) for _ in range(count)]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_signals_of_one_id_sent_back_to_back_arrive_each_once_in_order(
    backend: str,
) -> None:
    async with app(backend) as mf:
        await mf.worker("q", workflows=[listen_same])
        handle = await mf.workflow.start("t", "listen_same", "same", ["s-same", 6], "q")
        for _ in range(500):
            timeline = (await handle.export()).timeline
            if any(e.kind == "wait" for e in timeline):
                break
            await asyncio.sleep(0.01)
        for number in range(6):
            await mf.workflow.signal("s-same", number)
        assert await handle.result(timeout=20) == list(range(6))


# -- worker processes SIGKILLed while they take every shortcut ------------------------

WORKER = Path(__file__).with_name("adv4_worker.py")


def spawn(dsn: str, app_id: str, log_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), dsn, app_id, str(log_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )


async def ready(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    line = await asyncio.to_thread(process.stdout.readline)
    assert line.strip() == "ready"


async def test_worker_processes_killed_at_random_lose_and_duplicate_nothing(
    tmp_path: Path,
) -> None:
    dsn, app_id = test_dsn(), f"adv4k{uuid.uuid4().hex[:10]}"
    client = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn, drop_on_close=True)
    processes = [spawn(dsn, app_id, tmp_path) for _ in range(2)]
    try:
        for process in processes:
            await ready(process)
        count = 40
        drivers = [
            await client.workflow.start("t", "driver", f"d{i}", [f"j{i}"], "adv4")
            for i in range(count)
        ]
        chaos = random.Random(3)
        for _ in range(6):
            await asyncio.sleep(chaos.uniform(0.2, 0.6))
            victim = processes.pop(chaos.randrange(len(processes)))
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
            fresh = spawn(dsn, app_id, tmp_path)
            await ready(fresh)
            processes.append(fresh)
        for handle in drivers:
            await handle.result(timeout=120)
        chains = [await client.workflow.get_handle(f"j{i}") for i in range(count)]
        results = [await handle.result(timeout=120) for handle in chains]
        for i, result in enumerate(results):
            assert result == {
                "abc": [1, 2, 3],
                "got": {"for": f"j{i}"},
                "entity": {"seen": [1, 3]},
            }
            export = await chains[i].export()
            kinds = [(e.index, e.kind, e.status) for e in export.timeline]
            assert kinds == [
                (0, "activity", "done"),
                (1, "entity", "done"),
                (2, "sleep", "done"),
                (3, "activity", "done"),
                (4, "wait", "done"),
                (5, "activity", "done"),
                (6, "entity", "done"),
                (7, "entity", "done"),
            ], f"j{i}"
            assert [c["version"] for c in export.entity_changes] == [1, 2]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        await client.shutdown()
    executions = Counter(
        line for log in tmp_path.glob("worker-*.log") for line in log.read_text().split()
    )
    for i in range(count):
        for value in range(3):
            assert executions[f"j{i}:{value}"] >= 1  # at least once


# -- an activity whose own code raises CancelledError --------------------------------


async def cancels_itself(key: str) -> str:
    """What an activity sees when something it awaits was cancelled (a client
    library's request task, say): a CancelledError that is not a cancel of it."""
    called(key)
    inner = asyncio.ensure_future(asyncio.sleep(10))
    inner.cancel()
    return await inner  # type: ignore[no-any-return]


def cancels_in_thread(key: str) -> str:
    called(key)
    raise asyncio.CancelledError("raised by a sync activity")


async def calls_cancelling(key: str, name: str) -> str:
    acts = workflow.proxy_activities(
        activities=[cancels_itself, cancels_in_thread],
        retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=0.05),
    )
    try:
        await getattr(acts, name)(key)
    except ActivityFailed as failed:
        return failed.type_name
    return "returned"


@pytest.mark.parametrize("name", ["cancels_itself", "cancels_in_thread"])
@pytest.mark.parametrize("cache", [100, 0])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_activity_raising_cancelled_error_fails_by_its_retry_policy(
    backend: str, cache: int, name: str
) -> None:
    """Its retry policy applies (two attempts), then the workflow sees it fail; it
    was retried at every lease, forever, recording nothing (the job stuck)."""
    key = f"cx-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        await mf.worker(
            "q",
            workflows=[calls_cancelling],
            activities=[cancels_itself, cancels_in_thread],
            lease=0.5,
            max_cached_workflows=cache,
        )
        handle = await mf.workflow.start("t", "calls_cancelling", key, [key, name], "q")
        assert await handle.result(timeout=20) == "CancelledError"
        assert CALLS[key] == 2
        [activity] = [e for e in (await handle.export()).timeline if e.kind == "activity"]
        assert (activity.status, activity.attempts, activity.error.type_name) == (
            "failed", 2, "CancelledError"
        )  # fmt: skip


# -- a deferred first step whose activity is retried, and a lost answer ----------------


async def one_flaky(key: str) -> str:
    acts = workflow.proxy_activities(
        activities=[flaky], retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=0.05)
    )
    return await acts.flaky(key)  # type: ignore[no-any-return]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_retried_first_step_whose_commit_answer_is_lost_hands_its_lease_back(
    backend: str,
) -> None:
    """The first activity fails and will be retried: the run commits the ordinary
    way, leasing the activity's task to this worker, and the answer of that commit
    is lost with the connection. The lease goes back at once (as for every commit
    that leases to its worker), not a whole lease (60 s) later."""
    from hotmesh_core.errors import BackendUnavailable

    key = f"lost-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        worker = await mf.worker("q", workflows=[one_flaky], activities=[flaky], lease=60)
        original = worker.engine.finish_run
        lost: list[bool] = []

        async def commit_then_lose(*args: Any, **kwargs: Any) -> Any:
            leased = await original(*args, **kwargs)
            if not lost and leased:
                lost.append(True)
                raise BackendUnavailable("the answer of the commit was lost")
            return leased

        worker.engine.finish_run = commit_then_lose  # type: ignore[method-assign]
        handle = await mf.workflow.start("t", "one_flaky", key, [key], "q")
        assert await handle.result(timeout=20) == key
        assert lost


# -- cancel, interrupt and continue_as_new around deferred first steps --------------


async def cleans_up(key: str) -> str:
    acts = workflow.proxy_activities(activities=[gate, echo])
    try:
        first = await acts.gate(key)
        await acts.echo(f"{key}-after")
        return f"not cancelled: {first}"
    except asyncio.CancelledError:
        return await acts.echo(f"{key}-cleanup")  # type: ignore[no-any-return]


@pytest.mark.parametrize("cache", [100, 0])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_cancel_during_a_first_step_reaches_the_workflow(backend: str, cache: int) -> None:
    key = f"cc-{uuid.uuid4().hex[:6]}"
    GATES[key] = asyncio.Event()
    async with app(backend) as mf:
        await mf.worker(
            "q", workflows=[cleans_up], activities=[gate, echo], max_cached_workflows=cache
        )
        handle = await mf.workflow.start("t", "cleans_up", key, [key], "q")
        await until(lambda: CALLS.get(key) == 1, what="the first activity")
        assert await handle.cancel("stop") is True
        GATES[key].set()
        assert await handle.result(timeout=20) == f"{key}-cleanup"
        assert f"{key}-after" not in CALLS
        export = await handle.export()
        assert [e.kind for e in export.timeline if e.index >= 0] == ["activity", "activity"]


async def parent_of_gated(key: str) -> str:
    return await workflow.exec_child("t", "one_gate", args=[key], task_queue="q")  # type: ignore[no-any-return]


async def one_gate(key: str) -> str:
    acts = workflow.proxy_activities(activities=[gate])
    return await acts.gate(key)  # type: ignore[no-any-return]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_interrupting_a_parent_during_its_childs_first_step_records_nothing_after(
    backend: str,
) -> None:
    from hotmesh_core.errors import WorkflowInterrupted

    key = f"pc-{uuid.uuid4().hex[:6]}"
    GATES[key] = asyncio.Event()
    async with app(backend) as mf:
        await mf.worker("q", workflows=[parent_of_gated, one_gate], activities=[gate])
        handle = await mf.workflow.start("t", "parent_of_gated", key, [key], "q")
        await until(lambda: CALLS.get(key) == 1, what="the child's activity")
        assert await handle.interrupt("enough") is True
        GATES[key].set()
        with pytest.raises(WorkflowInterrupted):
            await handle.result(timeout=20)
        jobs = await mf.workflow.list_runs(workflow_name="one_gate")
        assert [j.status for j in jobs] == ["interrupted"]
        await asyncio.sleep(0.3)  # the child's first step, if it were to commit anyway
        child_handle = await mf.workflow.get_handle(jobs[0].workflow_id)
        assert (await child_handle.export()).timeline == []
        assert await child_handle.status() == "interrupted"


async def generations(key: str, left: int, seen: list[Any]) -> list[Any]:
    acts = workflow.proxy_activities(activities=[echo])
    got = await acts.echo(f"{key}-{left}")
    value = await workflow.wait_for(f"{key}-g{left}")
    seen = [*seen, got.rsplit("-", 1)[-1], value]
    if left == 0:
        return seen
    await workflow.continue_as_new(key, left - 1, seen)
    return []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_generations_each_deferred_and_signalled_in_process(backend: str) -> None:
    key = f"gen-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        await mf.worker("q", workflows=[generations], activities=[echo])
        handle = await mf.workflow.start("t", "generations", key, [key, 8, []], "q")
        for left in range(8, -1, -1):
            # Sent while the generation runs its first step, or before: kept or handed.
            await mf.workflow.signal(f"{key}-g{left}", left * 10)
        result = await handle.result(timeout=30)
        assert result == [x for left in range(8, -1, -1) for x in (str(left), left * 10)]
        assert all(CALLS[f"{key}-{left}"] == 1 for left in range(9))
        export = await handle.export()
        assert export.generation == 8
        assert [(e.index, e.kind, e.status) for e in export.timeline] == [
            (0, "activity", "done"),
            (1, "wait", "done"),
        ]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_first_step_whose_commit_is_lost_does_not_run_its_activity_again(
    backend: str,
) -> None:
    """The connection is lost in the one call that commits a deferred first step
    (nothing written): the worker repeats the engine's work once the database
    is back, never the activity, which ran (as on every other path)."""
    from hotmesh_core.errors import BackendUnavailable

    key = f"again-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        worker = await mf.worker("q", workflows=[one_count], activities=[echo])
        original = worker.engine.continue_deferred
        lost: list[bool] = []

        async def lose_once(*args: Any, **kwargs: Any) -> Any:
            if not lost:
                lost.append(True)
                raise BackendUnavailable("the connection was lost before the commit")
            return await original(*args, **kwargs)

        worker.engine.continue_deferred = lose_once  # type: ignore[method-assign]
        handle = await mf.workflow.start("t", "one_count", key, [key], "q")
        assert await handle.result(timeout=20) == key
        assert lost and CALLS[key] == 1
        kinds = [(e.index, e.kind, e.status) for e in (await handle.export()).timeline]
        assert kinds == [(0, "activity", "done")]


async def one_count(key: str) -> str:
    acts = workflow.proxy_activities(activities=[echo])
    return await acts.echo(key)  # type: ignore[no-any-return]


async def echo_and_flaky(key: str) -> list[str]:
    acts = workflow.proxy_activities(
        activities=[echo, flaky], retry_policy=RetryPolicy(initial_interval=0.05)
    )
    return list(await asyncio.gather(acts.echo(f"{key}-e"), acts.flaky(f"{key}-f")))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_retried_first_step_whose_commit_is_lost_does_not_run_it_again(
    backend: str,
) -> None:
    """As above, when one of the first step's activities is to be retried (the run
    commits the ordinary way): the commit is repeated, not the activities."""
    from hotmesh_core.errors import BackendUnavailable

    key = f"again-r-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        worker = await mf.worker("q", workflows=[echo_and_flaky], activities=[echo, flaky])
        original = worker.engine.finish_run
        lost: list[bool] = []

        async def lose_once(*args: Any, **kwargs: Any) -> Any:
            if not lost:
                lost.append(True)
                raise BackendUnavailable("the connection was lost before the commit")
            return await original(*args, **kwargs)

        worker.engine.finish_run = lose_once  # type: ignore[method-assign]
        handle = await mf.workflow.start("t", "echo_and_flaky", key, [key], "q")
        assert await handle.result(timeout=20) == [f"{key}-e", f"{key}-f"]
        assert lost and CALLS[f"{key}-e"] == 1 and CALLS[f"{key}-f"] == 2


# -- hooks whose first step is deferred ---------------------------------------------


async def hook_step(key: str, config: dict[str, Any]) -> None:
    acts = workflow.proxy_activities(activities=[echo])
    got = await acts.echo(key)
    entity = await workflow.entity()
    await entity.append("hooks", got)
    await workflow.signal(config["signal"], {"hook": got})


async def runs_hooks(key: str, count: int) -> dict[str, Any]:
    answers = await asyncio.gather(
        *(workflow.exec_hook("q", "hook_step", [f"{key}-{i}"]) for i in range(count))
    )
    entity = await workflow.entity()
    return {"answers": list(answers), "hooks": sorted((await entity.get())["hooks"])}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_hooks_whose_first_step_is_deferred_each_answer_once(backend: str) -> None:
    key = f"hk-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        await mf.worker("q", workflows=[runs_hooks, hook_step], activities=[echo])
        handle = await mf.workflow.start("t", "runs_hooks", key, [key, 5], "q")
        result = await handle.result(timeout=30)
        names = [f"{key}-{i}" for i in range(5)]
        assert result == {"answers": [{"hook": n} for n in names], "hooks": sorted(names)}
        assert all(CALLS[n] == 1 for n in names)
