"""``Store.advance`` and ``create_job(run=)``: one run's commit as one call, with
the reference semantics of ``hotmesh_core.advance.apply_advance`` (the memory
backend runs it; PostgreSQL runs it as one statement). Each test drives the
protocol directly and checks what a worker would then see."""

from __future__ import annotations

from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core.advance import Advance, Answer, Dispatch, Finish, Superseded
from hotmesh_core.models import ErrorInfo, Job, Step, Task

pytestmark = pytest.mark.asyncio

QUEUE = "adv"


def _job(job_id: str) -> Job:
    return Job(id=job_id, entity="e", workflow_name="wf", task_queue=QUEUE, args=[1])


def _run(job_id: str) -> Task:
    return Task(queue=QUEUE, kind="run", job_id=job_id, dimension="", name="wf")


def _step(job_id: str, index: int, status: str = "pending") -> Step:
    return Step(
        job_id=job_id,
        dimension="",
        index=index,
        kind="activity",
        name="act",
        args=[index],
        status=status,
        wake_queue=QUEUE,
        wake_name="wf",
    )


def _activity(job_id: str, index: int) -> Task:
    return Task(
        queue=QUEUE,
        kind="activity",
        job_id=job_id,
        dimension="",
        name="act",
        index=index,
        payload={"args": [index]},
    )


async def _claim(mf: Any, owner: str = "w#1") -> list[Task]:
    async with mf.backend.transaction() as tx:
        found: list[Task] = await tx.stream.claim(
            QUEUE, owner=owner, lease=30, workflow_names=["wf"], activity_names=["act"], limit=50
        )
    return found


async def _started(mf: Any, job_id: str) -> None:
    async with mf.backend.transaction() as tx:
        _job_row, created = await tx.store.create_job(_job(job_id), run=_run(job_id))
        assert created
    (run,) = await _claim(mf)
    assert (run.kind, run.job_id) == ("run", job_id)
    async with mf.backend.transaction() as tx:
        await tx.stream.ack(run.id)


async def test_a_start_enqueues_its_first_run_once(hm: Harness) -> None:
    mf = await hm.memflow()
    async with mf.backend.transaction(single=True) as tx:
        job, created = await tx.store.create_job(_job("a1"), run=_run("a1"))
    assert created and job.id == "a1" and job.args == [1]
    async with mf.backend.transaction(single=True) as tx:
        again, created = await tx.store.create_job(_job("a1"), run=_run("a1"))
    assert not created and again.id == "a1"
    claimed = await _claim(mf)
    assert [(t.kind, t.job_id) for t in claimed] == [("run", "a1")]


async def test_a_start_with_expire_in_a_single_call(hm: Harness) -> None:
    mf = await hm.memflow()
    job = Job(id="a2", entity="e", workflow_name="wf", task_queue=QUEUE, expire=3600.0)
    async with mf.backend.transaction(single=True) as tx:
        _stored, created = await tx.store.create_job(job, run=_run("a2"))
    assert created
    async with mf.backend.transaction(single=True) as tx:
        _stored, created = await tx.store.create_job(job, run=_run("a2"))
    assert not created
    assert [t.job_id for t in await _claim(mf)] == ["a2"]


async def test_dispatches_record_steps_and_lease_or_queue_their_tasks(hm: Harness) -> None:
    mf = await hm.memflow()
    await _started(mf, "a3")
    plan = Advance(
        "a3",
        "",
        running=True,
        dispatches=[
            Dispatch(_step("a3", 0), _activity("a3", 0), owner="w#r1", lease=30),
            Dispatch(_step("a3", 1), _activity("a3", 1)),
        ],
    )
    async with mf.backend.transaction(single=True) as tx:
        done = await tx.store.advance(plan)
    assert done.finished is False
    assert all(task_id is not None for task_id in done.task_ids)
    async with mf.backend.transaction(readonly=True) as tx:
        job = await tx.store.get_job("a3")
        steps = await tx.store.load_steps("a3", "")
    assert job is not None and job.status == "running"
    assert [(s.index, s.status, s.args) for s in steps] == [
        (0, "pending", [0]),
        (1, "pending", [1]),
    ]
    # The leased one is not anyone's; the other is.
    assert [(t.index, t.attempts) for t in await _claim(mf, "w2#1")] == [(1, 1)]
    # The same dispatches again (a racing run of the thread): no new task.
    async with mf.backend.transaction(single=True) as tx:
        again = await tx.store.advance(Advance("a3", "", dispatches=plan.dispatches))
    assert again.task_ids == [None, None]
    assert await _claim(mf, "w3#1") == []


async def test_answers_record_ack_and_end_the_job(hm: Harness) -> None:
    mf = await hm.memflow()
    await _started(mf, "a4")
    async with mf.backend.transaction(single=True) as tx:
        first = await tx.store.advance(
            Advance(
                "a4",
                "",
                running=True,
                dispatches=[Dispatch(_step("a4", 0), _activity("a4", 0), owner="w#r1", lease=30)],
            )
        )
    (task_id,) = first.task_ids
    assert task_id is not None
    async with mf.backend.transaction(single=True) as tx:
        done = await tx.store.advance(
            Advance(
                "a4",
                "",
                answers=[Answer(task_id, 0, result={"v": 2}, attempts=1)],
                delivered=(1, [0]),
                finish=Finish("completed", result=3),
            )
        )
    assert done.finished is True
    async with mf.backend.transaction(readonly=True) as tx:
        job = await tx.store.get_job("a4")
        (step,) = await tx.store.load_steps("a4", "")
    assert job is not None and (job.status, job.result, job.activation) == ("completed", 3, 1)
    assert job.finished_at is not None
    assert (step.status, step.result, step.activation, step.attempts) == ("done", {"v": 2}, 1, 1)
    assert await _claim(mf, "w9#1") == []  # the task was acked, its lease does not run out
    # A job that ended does not end again.
    async with mf.backend.transaction(single=True) as tx:
        late = await tx.store.advance(Advance("a4", "", finish=Finish("failed")))
    assert late.finished is False


async def test_an_answer_recorded_elsewhere_supersedes_and_changes_nothing(hm: Harness) -> None:
    mf = await hm.memflow()
    await _started(mf, "a5")
    async with mf.backend.transaction(single=True) as tx:
        first = await tx.store.advance(
            Advance(
                "a5",
                "",
                running=True,
                dispatches=[
                    Dispatch(_step("a5", 0), _activity("a5", 0), owner="w#r1", lease=30),
                    Dispatch(_step("a5", 1), _activity("a5", 1), owner="w#r1", lease=30),
                ],
            )
        )
    ids = [task_id for task_id in first.task_ids if task_id is not None]
    async with mf.backend.transaction() as tx:  # another worker answered step 1
        assert await tx.store.resolve_step("a5", "", 1, result="theirs") is not None
    with pytest.raises(Superseded):
        async with mf.backend.transaction(single=True) as tx:
            await tx.store.advance(
                Advance(
                    "a5",
                    "",
                    answers=[Answer(ids[0], 0, result="ours"), Answer(ids[1], 1, result="ours")],
                    delivered=(1, [0, 1]),
                    dispatches=[Dispatch(_step("a5", 2), _activity("a5", 2))],
                )
            )
    async with mf.backend.transaction(readonly=True) as tx:
        job = await tx.store.get_job("a5")
        steps = await tx.store.load_steps("a5", "")
    assert job is not None and job.activation == 0
    assert [(s.index, s.status, s.result) for s in steps] == [
        (0, "pending", None),
        (1, "done", "theirs"),
    ]


async def test_a_moved_activation_supersedes_and_changes_nothing(hm: Harness) -> None:
    mf = await hm.memflow()
    await _started(mf, "a6")
    async with mf.backend.transaction(single=True) as tx:
        await tx.store.advance(
            Advance("a6", "", running=True, dispatches=[Dispatch(_step("a6", 0), None)])
        )
    async with mf.backend.transaction() as tx:
        assert await tx.store.resolve_step("a6", "", 0, error=ErrorInfo("E", "no")) is not None
        assert await tx.store.mark_delivered("a6", "", [0], 1)  # another run delivered it
    with pytest.raises(Superseded):
        async with mf.backend.transaction(single=True) as tx:
            await tx.store.advance(
                Advance(
                    "a6",
                    "",
                    delivered=(1, [0]),
                    finish=Finish("failed", error=ErrorInfo("E", "no")),
                    acks=[],
                )
            )
    async with mf.backend.transaction(readonly=True) as tx:
        job = await tx.store.get_job("a6")
    assert job is not None and job.status == "running"


async def test_an_interrupted_job_takes_no_new_step(hm: Harness) -> None:
    mf = await hm.memflow()
    await _started(mf, "a7")
    async with mf.backend.transaction() as tx:
        assert await tx.store.set_job_status("a7", "interrupted") is not None
    async with mf.backend.transaction(single=True) as tx:
        done = await tx.store.advance(
            Advance("a7", "", dispatches=[Dispatch(_step("a7", 0), _activity("a7", 0))])
        )
    assert done.task_ids == [None]
    async with mf.backend.transaction(readonly=True) as tx:
        assert await tx.store.load_steps("a7", "") == []
    assert await _claim(mf) == []


async def test_a_wake_joins_a_queued_run_and_values_are_recorded(hm: Harness) -> None:
    mf = await hm.memflow()
    await _started(mf, "a8")
    value = Step(
        job_id="a8",
        dimension="",
        index=0,
        kind="now",
        name="now",
        status="done",
        result=12.5,
        wake_queue=QUEUE,
        wake_name="wf",
    )
    async with mf.backend.transaction() as tx:
        await tx.stream.enqueue(_run("a8"))
    async with mf.backend.transaction(single=True) as tx:
        await tx.store.advance(Advance("a8", "", values=[value], wake=_run("a8")))
    assert [(t.kind, t.job_id) for t in await _claim(mf)] == [("run", "a8")]  # one, not two
    async with mf.backend.transaction(readonly=True) as tx:
        (stored,) = await tx.store.load_steps("a8", "")
    assert (stored.kind, stored.status, stored.result) == ("now", "done", 12.5)


async def test_load_thread_reads_the_job_its_thread_and_steps(hm: Harness) -> None:
    from hotmesh_core.models import Thread

    mf = await hm.memflow()
    await _started(mf, "a9")
    async with mf.backend.transaction(single=True) as tx:
        await tx.store.advance(
            Advance(
                "a9",
                "",
                dispatches=[Dispatch(_step("a9", i), None) for i in range(3)],
            )
        )
    async with mf.backend.transaction(readonly=True) as tx:
        job, thread, steps = await tx.store.load_thread("a9", "")
        _job, _thread, some = await tx.store.load_thread("a9", "", [2, 0])
        missing = await tx.store.load_thread("nope", "")
        no_hook = await tx.store.load_thread("a9", "hook-x")
    assert job is not None and job.id == "a9" and thread is None
    assert [s.index for s in steps] == [0, 1, 2] and steps[1].args == [1]
    assert [s.index for s in some] == [0, 2]
    assert missing == (None, None, [])
    assert no_hook[0] is not None and no_hook[1:] == (None, [])
    async with mf.backend.transaction() as tx:
        assert await tx.store.create_thread(
            Thread(job_id="a9", dimension="hook-y", workflow_name="wf", task_queue=QUEUE)
        )
    async with mf.backend.transaction(readonly=True) as tx:
        _job, hook, hook_steps = await tx.store.load_thread("a9", "hook-y")
    assert hook is not None and (hook.dimension, hook.status) == ("hook-y", "running")
    assert hook_steps == []


async def test_a_retry_moves_a_task_only_for_the_worker_holding_it(hm: Harness) -> None:
    # fail_activity repeated after a lost COMMIT (it did commit) must not push
    # the retry back again, nor take the task from the worker now running it.
    mf = await hm.memflow()
    async with mf.backend.transaction() as tx:
        await tx.stream.enqueue(_activity("a10", 0))
    (task,) = await _claim(mf, "w1#1")
    async with mf.backend.transaction() as tx:
        await tx.stream.retry(task.id, delay=0.0, owner="w1#1")
    (again,) = await _claim(mf, "w2#1")  # visible at once, and w2's now
    async with mf.backend.transaction() as tx:
        await tx.stream.retry(task.id, delay=0.0, owner="w1#1")  # the repeat: nothing
    assert await _claim(mf, "w3#1") == []
    assert again.id == task.id and again.attempts == 2


async def test_an_answer_whose_task_must_exist_needs_its_task(hm: Harness) -> None:
    # A timer fired in-process by the worker that armed it (not claimed): the
    # job interrupted meanwhile deleted the row, so nothing is answered.
    mf = await hm.memflow()
    await _started(mf, "a11")
    sleep = Step(
        job_id="a11",
        dimension="",
        index=0,
        kind="sleep",
        name="sleep",
        status="pending",
        wake_queue=QUEUE,
        wake_name="wf",
    )
    timer = Task(queue=QUEUE, kind="timer", job_id="a11", dimension="", name="wf", index=0)
    async with mf.backend.transaction(single=True) as tx:
        done = await tx.store.advance(
            Advance("a11", "", running=True, dispatches=[Dispatch(sleep, timer, delay=3600)])
        )
    (timer_id,) = done.task_ids
    assert timer_id is not None
    fire = Advance("a11", "", answers=[Answer(timer_id, 0)], wake=_run("a11"))
    async with mf.backend.transaction() as tx:
        assert await tx.stream.remove_job_tasks("a11") == 1  # as an interrupt does
        assert await tx.stream.ack(timer_id) is False
    with pytest.raises(Superseded):
        async with mf.backend.transaction(single=True) as tx:
            await tx.store.advance(fire)
    async with mf.backend.transaction(readonly=True) as tx:
        (step,) = await tx.store.load_steps("a11", "")
    assert step.status == "pending"
    assert await _claim(mf) == []


def _wait_step(job_id: str, index: int) -> Step:
    return Step(
        job_id=job_id,
        dimension="",
        index=index,
        kind="wait",
        name="sig",
        status="pending",
        wake_queue=QUEUE,
        wake_name="wf",
    )


async def test_a_wait_takes_a_buffered_signal_or_leaves_a_waiter(hm: Harness) -> None:
    mf = await hm.memflow()
    await _started(mf, "a12")
    sig_a, sig_b = "a12-early", "a12-late"
    timeout = Task(
        queue=QUEUE,
        kind="timer",
        job_id="a12",
        dimension="",
        name="wf",
        index=1,
        payload={"signal": sig_b, "timeout": 3600},
    )
    async with mf.backend.transaction(single=True) as tx:
        assert await tx.signal.deliver(sig_a, {"n": 1}, expire=60) is False  # buffered
    async with mf.backend.transaction(single=True) as tx:
        done = await tx.store.advance(
            Advance(
                "a12",
                "",
                running=True,
                dispatches=[
                    Dispatch(_wait_step("a12", 0), signal_id=sig_a),
                    Dispatch(_wait_step("a12", 1), timeout, delay=3600, signal_id=sig_b),
                ],
            )
        )
    assert done.task_ids[0] is None and done.task_ids[1] is not None  # the timeout's timer
    async with mf.backend.transaction(readonly=True) as tx:
        steps = await tx.store.load_steps("a12", "")
    assert [(s.index, s.status, s.result) for s in steps] == [
        (0, "done", {"n": 1}),
        (1, "pending", None),
    ]
    assert [(t.kind, t.job_id) for t in await _claim(mf)] == [("run", "a12")]  # woken once
    async with mf.backend.transaction(single=True) as tx:
        assert await tx.signal.deliver(sig_b, "late", expire=60) is True  # the waiter took it
    async with mf.backend.transaction(readonly=True) as tx:
        (_first, second) = await tx.store.load_steps("a12", "")
    assert (second.status, second.result) == ("done", "late")


async def test_recorded_steps_go_in_before_the_activation_that_delivers_them(
    hm: Harness,
) -> None:
    """A job's first inline step, run before its dispatch was committed: the run's
    start, the step done, its delivery (the CAS marks it) and the next dispatch
    in one advance; a second such advance (a racing run) is superseded whole."""
    mf = await hm.memflow()
    await _started(mf, "a20")
    done_step = Step(
        job_id="a20",
        dimension="",
        index=0,
        kind="activity",
        name="act",
        args=[0],
        status="done",
        result="first",
        attempts=1,
        wake_queue=QUEUE,
        wake_name="wf",
    )
    plan = Advance(
        "a20",
        "",
        recorded=[done_step],
        delivered=(1, [0]),
        running=True,
        dispatches=[Dispatch(_step("a20", 1), _activity("a20", 1))],
    )
    async with mf.backend.transaction(single=True) as tx:
        done = await tx.store.advance(plan)
    assert done.task_ids[0] is not None
    async with mf.backend.transaction(readonly=True) as tx:
        job = await tx.store.get_job("a20")
        steps = await tx.store.load_steps("a20", "")
    assert job is not None and (job.status, job.activation) == ("running", 1)
    assert [(s.index, s.status, s.result, s.attempts, s.activation) for s in steps] == [
        (0, "done", "first", 1, 1),
        (1, "pending", None, 0, None),
    ]
    again = Advance("a20", "", recorded=[done_step], delivered=(1, [0]))
    with pytest.raises(Superseded):
        async with mf.backend.transaction(single=True) as tx:
            await tx.store.advance(again)
    async with mf.backend.transaction(readonly=True) as tx:
        assert len(await tx.store.load_steps("a20", "")) == 2  # nothing of it was written


def _cancel_request(job_id: str) -> Step:
    return Step(
        job_id=job_id,
        dimension="",
        index=-1,
        kind="cancel",
        name="cancel",
        args={"reason": None},
        status="done",
        wake_queue=QUEUE,
        wake_name="wf",
    )


async def test_a_delivery_that_leaves_a_cancel_request_behind_supersedes(hm: Harness) -> None:
    """A cancel request recorded while a run was under way is delivered by the
    next activation of the main thread: one that delivers other answers without
    it gives way, by ``mark_delivered`` and by ``advance`` alike (an inline chain
    of activities would otherwise run the workflow to its end, never cancelled)."""
    mf = await hm.memflow()
    await _started(mf, "a20")
    async with mf.backend.transaction(single=True) as tx:
        await tx.store.advance(Advance("a20", "", dispatches=[Dispatch(_step("a20", 0))]))
    async with mf.backend.transaction() as tx:
        assert await tx.store.insert_step(_cancel_request("a20"))
        assert await tx.store.resolve_step("a20", "", 0, result="r")
    with pytest.raises(Superseded):
        async with mf.backend.transaction(single=True) as tx:
            await tx.store.advance(Advance("a20", "", delivered=(1, [0])))
    async with mf.backend.transaction() as tx:
        assert not await tx.store.mark_delivered("a20", "", [0], 1)
    async with mf.backend.transaction() as tx:
        job = await tx.store.get_job("a20")
        assert job is not None and job.activation == 0
        # Delivered with it, the request goes (first), and later deliveries pass.
        assert await tx.store.mark_delivered("a20", "", [-1, 0], 1)
    async with mf.backend.transaction() as tx:
        await tx.store.insert_step(_step("a20", 1, status="done"))
    async with mf.backend.transaction(single=True) as tx:
        await tx.store.advance(Advance("a20", "", delivered=(2, [1])))


async def test_advance_many_applies_each_on_its_own_and_none_where_one_fails(
    hm: Harness,
) -> None:
    """Group commit (``advance_many``): the plans that hold commit together, in
    one transaction; one superseded (its answer taken by another worker) is
    None in its place and leaves nothing behind, not even its dispatch."""
    hm.require("advance_many")
    mf = await hm.memflow()
    for job_id in ("m1", "m2", "m3"):
        await _started(mf, job_id)
    async with mf.backend.transaction(single=True) as tx:
        first = await tx.store.advance(
            Advance(
                "m2",
                "",
                running=True,
                dispatches=[Dispatch(_step("m2", 0), _activity("m2", 0), owner="w#r1", lease=30)],
            )
        )
    (m2_task,) = first.task_ids
    assert m2_task is not None
    async with mf.backend.transaction() as tx:  # another worker answered m2's step
        assert await tx.store.resolve_step("m2", "", 0, result="theirs") is not None
    plans = [
        Advance("m3", "", running=True, recorded=[_step("m3", 0, "done")], delivered=(1, [0])),
        Advance(
            "m2",
            "",
            answers=[Answer(m2_task, 0, result="ours")],
            delivered=(1, [0]),
            dispatches=[Dispatch(_step("m2", 1), _activity("m2", 1))],
        ),
        Advance("m1", "", running=True, finish=Finish("completed", result="one")),
    ]
    async with mf.backend.transaction(single=True) as tx:
        done = await tx.store.advance_many(plans)
    assert [None if d is None else d.finished for d in done] == [False, None, True]
    async with mf.backend.transaction(readonly=True) as tx:
        jobs = {job.id: job for job in await tx.store.get_jobs(["m1", "m2", "m3"])}
        m2_steps = await tx.store.load_steps("m2", "")
        m3_steps = await tx.store.load_steps("m3", "")
    assert (jobs["m1"].status, jobs["m1"].result) == ("completed", "one")
    assert (jobs["m3"].status, jobs["m3"].activation) == ("running", 1)
    assert [(s.index, s.status, s.activation) for s in m3_steps] == [(0, "done", 1)]
    # The superseded plan wrote nothing: no answer, no new step, no new task.
    assert jobs["m2"].activation == 0
    assert [(s.index, s.status, s.result) for s in m2_steps] == [(0, "done", "theirs")]
    assert await _claim(mf, "w5#1") == []
    # Applied again alone, it fails as it would have.
    with pytest.raises(Superseded):
        async with mf.backend.transaction(single=True) as tx:
            await tx.store.advance(plans[1])


async def test_advance_many_keeps_the_order_of_one_jobs_plans(hm: Harness) -> None:
    """Two plans of one job in one group apply in the order given: the second
    delivers what the first recorded (activation 1, then 2)."""
    hm.require("advance_many")
    mf = await hm.memflow()
    await _started(mf, "m4")
    plans = [
        Advance("m4", "", running=True, recorded=[_step("m4", 0, "done")], delivered=(1, [0])),
        Advance("m4", "", recorded=[_step("m4", 1, "done")], delivered=(2, [1])),
    ]
    async with mf.backend.transaction(single=True) as tx:
        done = await tx.store.advance_many(plans)
    assert [d is not None for d in done] == [True, True]
    async with mf.backend.transaction(readonly=True) as tx:
        job = await tx.store.get_job("m4")
        steps = await tx.store.load_steps("m4", "")
    assert job is not None and job.activation == 2
    assert [(s.index, s.activation) for s in steps] == [(0, 1), (1, 2)]
