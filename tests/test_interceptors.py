"""Interceptors, headers and ``activity.info()`` (hotmesh_core.interceptors)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from hotmesh_core import (
    ActivityFailed,
    MemFlow,
    RetryPolicy,
    SerializationError,
    WorkflowFailed,
    WorkflowNotFound,
    activity,
    workflow,
)
from hotmesh_core.interceptors import (
    HEADERS_KEY,
    ActivityInfo,
    Interceptor,
    OutboundCall,
    Proceed,
    StartInput,
    WorkerEvent,
    WorkflowInfo,
)
from hotmesh_postgres.testing import test_dsn

seen: list[ActivityInfo] = []
tries: dict[str, int] = {}


async def note(label: str) -> str:
    seen.append(activity.info())
    return label


def note_sync(label: str) -> str:  # a sync activity runs in a thread of its own
    seen.append(activity.info())
    return label


async def flaky(key: str) -> int:
    tries[key] = tries.get(key, 0) + 1
    if tries[key] < 2:
        raise ConnectionError("not yet")
    return activity.info().attempt


async def kid(label: str) -> str:
    acts = workflow.proxy_activities(activities=[note])
    result: str = await acts.note(label)
    return result


async def side(label: str, config: dict[str, Any]) -> None:
    acts = workflow.proxy_activities(activities=[note_sync])
    await workflow.signal(config["signal"], await acts.note_sync(label))


async def parent(key: str) -> list[Any]:
    acts = workflow.proxy_activities(
        activities=[note, flaky], retry_policy=RetryPolicy(initial_interval="0.01 seconds")
    )
    first = await acts.note("main")
    entity = await workflow.entity()
    await entity.merge({"first": first})
    child = await workflow.exec_child("kids", "kid", args=["child"])
    hooked = await workflow.exec_hook(None, "side", ["hook"])
    attempt = await acts.flaky(key)
    return [first, child, hooked, attempt]


class Recorder(Interceptor):
    def __init__(self, label: str, log: list[Any]) -> None:
        self.label = label
        self.log = log
        self.events: list[WorkerEvent] = []

    async def start_workflow(self, start: StartInput, proceed: Proceed) -> Any:
        start.headers[f"{self.label}-start"] = start.workflow_name
        self.log.append((self.label, "start", start.workflow_id))
        return await proceed()

    async def execute_workflow(self, info: WorkflowInfo, proceed: Proceed) -> Any:
        self.log.append((self.label, "run", info.workflow_name, info.dimension))
        outcome = await proceed()
        self.log.append((self.label, "ran", info.workflow_name, outcome.status))
        return outcome

    async def workflow_call(self, call: OutboundCall, proceed: Proceed) -> Any:
        where = f"{call.workflow.workflow_id}/{call.workflow.dimension}"
        self.log.append(
            (self.label, "call", where, call.kind, call.name, call.index, call.replaying)
        )
        call.headers[f"{self.label}-call"] = f"{call.kind}:{call.index}"
        return await proceed()

    async def execute_activity(self, info: ActivityInfo, proceed: Proceed) -> Any:
        self.log.append((self.label, "activity", info.activity_name, info.attempt))
        return await proceed()

    def worker_event(self, event: WorkerEvent) -> None:
        self.events.append(event)


def backend_options(backend: str) -> dict[str, Any]:
    return {"dsn": test_dsn(), "drop_on_close": True} if backend == "postgres" else {}


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_headers_reach_every_activity_child_and_hook_with_activity_info(
    backend: str,
) -> None:
    seen.clear()
    key = uuid.uuid4().hex
    log: list[Any] = []
    outer, inner = Recorder("outer", log), Recorder("inner", log)
    app = f"ic{uuid.uuid4().hex[:10]}"
    async with MemFlow.init(app, backend, interceptors=[outer], **backend_options(backend)) as mf:
        await mf.worker(
            "q",
            workflows=[parent, kid, side],
            activities=[note, note_sync, flaky],
            interceptors=[inner],
            max_cached_workflows=0,  # every run replays: replayed calls are seen as such
        )
        handle = await mf.workflow.start(
            "p", "parent", f"job-{key}", [key], "q", headers={"tenant": "acme"}
        )
        assert await handle.result(timeout=30) == ["main", "child", "hook", 2]
        assert f"job-{key}" in await mf.workflow.search(workflow_name="parent")

    by_label = {info.activity_name + ":" + str(info.workflow_name): info for info in seen}
    main = by_label["note:parent"]
    assert (main.workflow_id, main.dimension, main.task_queue, main.attempt) == (
        f"job-{key}",
        "",
        "q",
        1,
    )
    # The start headers, plus what each interceptor added at start and at the call.
    assert main.headers == {
        "tenant": "acme",
        "outer-start": "parent",
        "inner-call": "activity:0",
        "outer-call": "activity:0",
    }
    child = by_label["note:kid"]
    assert child.workflow_id == f"job-{key}-c-2"
    assert child.headers["tenant"] == "acme"
    assert child.headers["outer-call"] == "activity:0"  # the child's own call
    hooked = by_label["note_sync:side"]
    assert hooked.workflow_id == f"job-{key}" and hooked.dimension != ""
    assert hooked.headers["tenant"] == "acme"

    # The MemFlow's interceptor is the outer one; each call is new exactly once.
    assert log[0] == ("outer", "start", f"job-{key}")
    runs = [entry for entry in log if entry[1] == "run"]
    assert runs[0] == ("outer", "run", "parent", "")
    assert runs[1] == ("inner", "run", "parent", "")
    calls = [entry for entry in log if entry[0] == "outer" and entry[1] == "call"]
    new = [entry[2:6] for entry in calls if not entry[6]]
    assert len(new) == len(set(new)), new
    top = f"job-{key}/"
    assert (top, "activity", "note", 0) in new and (top, "entity", "merge", 1) in new
    assert (top, "child", "kid", 2) in new and (top, "exec_hook", "side", 3) in new
    assert (f"job-{key}-c-2/", "activity", "note", 0) in new
    replayed = [entry for entry in calls if entry[6]]
    assert replayed, "max_cached_workflows=0 replays, and says so"
    attempts = [entry[3] for entry in log if entry[:3] == ("inner", "activity", "flaky")]
    assert attempts == [1, 2]
    assert any(event.kind == "claimed" and event.count >= 1 for event in inner.events)
    assert any(event.kind == "failed" and event.name == "flaky" for event in inner.events)


async def test_headers_are_kept_when_the_workflow_sets_search_fields() -> None:
    async def tags() -> str:
        await workflow.search().set({"color": "red"})
        result: str = await workflow.proxy_activities(activities=[note]).note("x")
        return result

    seen.clear()
    async with MemFlow.init("ic-search", "memory") as mf:
        await mf.worker("q", workflows={"tags": tags}, activities=[note])
        handle = await mf.workflow.start("t", "tags", "t1", [], "q", headers={"user": "ann"})
        assert await handle.result(timeout=10) == "x"
        assert seen[-1].headers == {"user": "ann"}
        async with mf.backend.transaction(readonly=True) as tx:
            job = await tx.store.get_job("t1")
        assert job is not None
        assert job.search == {"color": "red", HEADERS_KEY: {"user": "ann"}}


async def test_an_interceptor_can_refuse_an_activity() -> None:
    class NeedsToken(Interceptor):
        async def execute_activity(self, info: ActivityInfo, proceed: Proceed) -> Any:
            if info.headers.get("token") != "secret":
                raise PermissionError(f"no token for {info.activity_name}")
            return await proceed()

    async def guarded() -> str:
        acts = workflow.proxy_activities(
            activities=[note], retry_policy=RetryPolicy(maximum_attempts=1)
        )
        try:
            result: str = await acts.note("in")
        except ActivityFailed as failed:
            return f"refused: {failed}"
        return result

    async with MemFlow.init("ic-auth", "memory", interceptors=[NeedsToken()]) as mf:
        await mf.worker("q", workflows=[guarded], activities=[note])
        ok = await mf.workflow.start("g", "guarded", "ok", [], "q", headers={"token": "secret"})
        assert await ok.result(timeout=10) == "in"
        no = await mf.workflow.start("g", "guarded", "no", [], "q")
        refused = await no.result(timeout=10)
        assert refused.startswith("refused:") and "no token for note" in refused


async def test_an_outbound_hook_that_raises_fails_the_workflow_not_the_worker() -> None:
    class Forbids(Interceptor):
        async def workflow_call(self, call: OutboundCall, proceed: Proceed) -> Any:
            if call.kind == "sleep":
                raise PermissionError("no sleeping here")
            return await proceed()

    async def sleepy() -> str:
        await workflow.sleep_for(0.01)
        return "slept"

    async with MemFlow.init("ic-out", "memory", interceptors=[Forbids()]) as mf:
        await mf.worker("q", workflows=[sleepy])
        handle = await mf.workflow.start("s", "sleepy", "s1", [], "q")
        with pytest.raises(WorkflowFailed, match="no sleeping here"):
            await handle.result(timeout=10)


def test_activity_info_outside_an_activity_is_an_error() -> None:
    assert not activity.in_activity()
    with pytest.raises(RuntimeError, match="only available inside an activity"):
        activity.info()


async def test_headers_that_are_not_strings_are_refused_naming_them() -> None:
    async with MemFlow.init("ic-bad", "memory") as mf:
        with pytest.raises(SerializationError, match=r"'n': 3 is not"):
            await mf.workflow.start("b", "parent", "bad", [], "q", headers={"n": 3})  # type: ignore[dict-item]
        with pytest.raises(WorkflowNotFound):
            await mf.workflow.get_handle("bad")
