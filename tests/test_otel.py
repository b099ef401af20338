"""OpenTelemetry traces and metrics (hotmesh_core.otel), read with the SDK's in-memory
exporter and metric reader."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from hotmesh_core import MemFlow, RetryPolicy, VirtualClock, WorkflowFailed, workflow
from hotmesh_core.engine import Engine
from hotmesh_core.otel import MetricsInterceptor, TracingInterceptor
from hotmesh_core.worker import Worker
from hotmesh_postgres.testing import test_dsn

pytest.importorskip("opentelemetry.sdk")  # the test extra installs it

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

tries: dict[str, int] = {}


async def greet(name: str) -> str:
    return f"hi {name}"


async def flaky(key: str) -> str:
    tries[key] = tries.get(key, 0) + 1
    if tries[key] < 2:
        raise ConnectionError("not yet")
    return "ok"


async def kid(name: str) -> str:
    result: str = await workflow.proxy_activities(activities=[greet]).greet(name)
    return result


async def side(config: dict[str, Any]) -> None:
    entity = await workflow.entity()
    await entity.merge({"hooked": True})
    await workflow.signal(config["signal"], "hooked")


async def main(name: str) -> list[str]:
    acts = workflow.proxy_activities(activities=[greet])
    first = await acts.greet(name)
    entity = await workflow.entity()
    await entity.merge({"first": first})
    child = await workflow.exec_child("kids", "kid", args=[name + "'s child"])
    hooked = await workflow.exec_hook(None, "side")
    return [first, child, hooked]


def tracing() -> tuple[TracingInterceptor, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TracingInterceptor(provider), exporter


def one(spans: list[ReadableSpan], name: str, **attributes: Any) -> ReadableSpan:
    found = [
        span
        for span in spans
        if span.name == name
        and all((span.attributes or {}).get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [s.name for s in spans])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


@pytest.mark.parametrize("cached", [True, False])
async def test_one_trace_for_a_workflow_its_activity_child_and_hook(cached: bool) -> None:
    interceptor, exporter = tracing()
    wid = f"w-{uuid.uuid4().hex[:8]}"
    async with MemFlow.init("otel", "memory", interceptors=[interceptor]) as mf:
        await mf.worker(
            "q",
            workflows=[main, kid, side],
            activities=[greet],
            max_cached_workflows=100 if cached else 0,  # 0: every run replays the history
        )
        handle = await mf.workflow.start("e", "main", wid, ["ann"], "q")
        assert await handle.result(timeout=20) == ["hi ann", "hi ann's child", "hooked"]
    spans = list(exporter.get_finished_spans())
    assert {span.context.trace_id for span in spans if span.context} == {
        spans[0].context.trace_id if spans[0].context else 0
    }, "every span of the workflow is in one trace"

    start = one(spans, "hotmesh.start main", **{"hotmesh.workflow_id": wid})
    assert start.parent is None
    runs = [s for s in spans if s.name == "hotmesh.run main"]
    assert len(runs) >= 3 and all(parent_of(run) == span_id(start) for run in runs)
    assert all((run.attributes or {})["hotmesh.workflow_id"] == wid for run in runs)
    if not cached:
        assert any((run.attributes or {})["hotmesh.replaying"] for run in runs)

    # The activity attempt is a child of the call that scheduled it, itself a
    # child of the run that made it; replays made neither again.
    schedule = one(spans, "hotmesh.schedule greet", **{"hotmesh.workflow_id": wid})
    assert parent_of(schedule) in {span_id(run) for run in runs}
    attempt = one(spans, "hotmesh.activity greet", **{"hotmesh.workflow_id": wid})
    assert parent_of(attempt) == span_id(schedule)
    assert (attempt.attributes or {})["hotmesh.attempt"] == 1
    assert (attempt.attributes or {})["hotmesh.workflow_name"] == "main"
    assert (attempt.attributes or {})["hotmesh.activity"] == "greet"
    merge = one(spans, "hotmesh.entity merge", **{"hotmesh.dimension": ""})
    assert parent_of(merge) in {span_id(run) for run in runs}

    # The child's runs hang under the call that started it; its activity under them.
    child_call = one(spans, "hotmesh.child kid")
    child_id = f"{wid}-c-2"
    child_runs = [s for s in spans if s.name == "hotmesh.run kid"]
    assert child_runs and all(parent_of(run) == span_id(child_call) for run in child_runs)
    assert all((run.attributes or {})["hotmesh.workflow_id"] == child_id for run in child_runs)
    child_attempt = one(spans, "hotmesh.activity greet", **{"hotmesh.workflow_id": child_id})
    child_schedule = one(spans, "hotmesh.schedule greet", **{"hotmesh.workflow_id": child_id})
    assert parent_of(child_attempt) == span_id(child_schedule)
    assert parent_of(child_schedule) in {span_id(run) for run in child_runs}

    # The hook: its start (a call of the main run), its runs, its entity op and signal.
    hook_call = one(spans, "hotmesh.hook side")
    assert parent_of(hook_call) in {span_id(run) for run in runs}
    hook_runs = [s for s in spans if s.name == "hotmesh.run side"]
    assert hook_runs
    dimension = (hook_runs[0].attributes or {})["hotmesh.dimension"]
    assert dimension != ""
    hook_merge = one(spans, "hotmesh.entity merge", **{"hotmesh.dimension": dimension})
    assert parent_of(hook_merge) in {span_id(run) for run in hook_runs}
    signal = one(spans, "hotmesh.signal", **{"hotmesh.dimension": dimension})
    assert parent_of(signal) in {span_id(run) for run in hook_runs}

    # Never a duplicate span for a durable call, however often replay re-ran it.
    def key(span: ReadableSpan) -> tuple[Any, ...]:
        attributes = span.attributes or {}
        names = ("hotmesh.workflow_id", "hotmesh.dimension", "hotmesh.index")
        return (span.name, *(attributes.get(name) for name in names))

    calls = Counter(key(span) for span in spans if not span.name.startswith("hotmesh.run "))
    assert max(calls.values()) == 1, calls


async def test_each_activity_attempt_is_a_span_and_a_failure_is_recorded() -> None:
    interceptor, exporter = tracing()
    key = uuid.uuid4().hex

    async def retries(key: str) -> str:
        acts = workflow.proxy_activities(
            activities=[flaky], retry_policy=RetryPolicy(initial_interval="0.01 seconds")
        )
        result: str = await acts.flaky(key)
        return result

    async with MemFlow.init("otel-retry", "memory", interceptors=[interceptor]) as mf:
        await mf.worker("q", workflows={"retries": retries}, activities=[flaky])
        handle = await mf.workflow.start("r", "retries", key, [key], "q")
        assert await handle.result(timeout=20) == "ok"
    attempts = [s for s in exporter.get_finished_spans() if s.name == "hotmesh.activity flaky"]
    assert sorted(int(str((s.attributes or {})["hotmesh.attempt"])) for s in attempts) == [1, 2]
    failed = next(s for s in attempts if (s.attributes or {})["hotmesh.attempt"] == 1)
    assert failed.status.status_code.name == "ERROR"
    assert any(event.name == "exception" for event in failed.events)


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    data = reader.get_metrics_data()
    found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    found.setdefault(metric.name, []).append((dict(point.attributes or {}), value))
    return found


def total(found: dict[str, list[tuple[dict[str, Any], Any]]], metric: str, **where: Any) -> Any:
    return sum(
        value
        for attributes, value in found.get(metric, [])
        if all(attributes.get(k) == v for k, v in where.items())
    )


def metering() -> tuple[MetricsInterceptor, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MetricsInterceptor(MeterProvider(metric_readers=[reader])), reader


async def test_tasks_claimed_and_failed_are_counted_per_queue() -> None:
    metrics, reader = metering()
    key = uuid.uuid4().hex

    async def retries(key: str) -> str:
        acts = workflow.proxy_activities(
            activities=[flaky], retry_policy=RetryPolicy(initial_interval="0.01 seconds")
        )
        result: str = await acts.flaky(key)
        return result

    async with MemFlow.init("otel-m", "memory", interceptors=[metrics]) as mf:
        await mf.worker("mq", workflows={"retries": retries}, activities=[flaky])
        handle = await mf.workflow.start("r", "retries", key, [key], "mq")
        assert await handle.result(timeout=20) == "ok"
    found = points(reader)
    # The first run, the retried attempt, the run it wakes (the first attempt
    # ran inline, leased by the run that dispatched it).
    assert total(found, "hotmesh.tasks.claimed", queue="mq") >= 3
    assert total(found, "hotmesh.tasks.failed", queue="mq", kind="activity", name="flaky") == 1
    assert total(found, "hotmesh.dead_letters") == 0


async def test_dead_letters_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken_timer(self: Engine, task: Any) -> None:
        raise RuntimeError("the timer path is broken")

    async def naps() -> str:
        await workflow.sleep_for(0.05)
        return "rested"

    monkeypatch.setattr(Engine, "fire_timer", broken_timer)

    # The in-process timer too (it would fire the sleep without the row).

    monkeypatch.setattr(Engine, "fire_armed_timer", broken_timer)
    # and its resumption of the cached run in this process, which answers it too
    monkeypatch.setattr(Worker, "_wake_in_process", broken_timer)
    metrics, reader = metering()
    mf = await MemFlow.init("otel-dl", "memory")
    worker = Worker(
        mf.backend,
        "dq",
        workflows={"naps": naps},
        lease=0.3,
        max_task_attempts=2,
        interceptors=[metrics],
    )
    await worker.start()
    try:
        handle = await mf.workflow.start("t", "naps", "poisoned", [], "dq")
        with pytest.raises(WorkflowFailed):
            await handle.result(timeout=15)
    finally:
        await worker.stop()
        await mf.shutdown()
    found = points(reader)
    assert total(found, "hotmesh.dead_letters", queue="dq", kind="timer") == 1
    assert total(found, "hotmesh.tasks.failed", queue="dq", kind="timer") == 2


async def test_a_lost_lease_is_counted() -> None:
    import asyncio

    metrics, reader = metering()
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await asyncio.sleep(30)
        return "late"

    async def quick() -> str:
        return "quick"

    async def waits() -> str:
        # A step after a signal: an activity task of its own (a job's first
        # steps run under its run's lease, whose loss counts as the run's).
        acts = workflow.proxy_activities(activities=[quick, slow])
        await acts.quick()
        await workflow.wait_for("otel-lease-go")
        result: str = await acts.slow()
        return result

    async with MemFlow.init("otel-lease", "memory") as mf:
        worker = Worker(
            mf.backend, "lq", workflows=[waits], activities=[quick, slow], lease=0.3,
            interceptors=[metrics],
        )  # fmt: skip
        await worker.start()
        try:
            handle = await mf.workflow.start("l", "waits", "l1", [], "lq")
            while await handle.status() != "running":
                await asyncio.sleep(0.01)
            await mf.workflow.signal("otel-lease-go", None)
            await asyncio.wait_for(started.wait(), 10)
            await handle.interrupt("enough")  # its activity task goes: the lease is lost
            for _ in range(100):
                if total(points(reader), "hotmesh.leases.lost", queue="lq"):
                    break
                await asyncio.sleep(0.05)
        finally:
            await worker.stop()
    assert total(points(reader), "hotmesh.leases.lost", queue="lq", kind="activity") == 1


async def test_queue_depth_and_age_per_queue() -> None:
    metrics, reader = metering()
    clock = VirtualClock(auto_skip=False)
    async with MemFlow.init("otel-q", "memory", interceptors=[metrics], clock=clock) as mf:
        for n in range(3):
            await mf.workflow.start("x", "nobody_serves_this", f"idle-{n}", [], "idle")
        clock.advance(5)
        await mf.workflow.start("x", "nobody_serves_this", "other", [], "other")
        clock.advance(2)
        await metrics.refresh(mf.backend)
        found = points(reader)
        assert total(found, "hotmesh.queue.depth", queue="idle") == 3
        assert total(found, "hotmesh.queue.depth", queue="other") == 1
        assert total(found, "hotmesh.queue.age", queue="idle") == pytest.approx(7, abs=0.5)
        assert total(found, "hotmesh.queue.age", queue="other") == pytest.approx(2, abs=0.5)
        assert total(found, "hotmesh.queue.leased", queue="idle") == 0

        # A worker reads its own queue's backlog (every 10 s; here at once).
        await mf.workflow.start("x", "nobody_serves_this", "idle-3", [], "idle")
        worker = await mf.worker("idle", workflows=[greet])
        await worker.report_unserved(older_than=0)
        found = points(reader)
        assert total(found, "hotmesh.queue.depth", queue="idle") == 4


async def test_the_trace_crosses_processes_in_the_headers_alone() -> None:
    """The client, the workflow's worker and the activity's worker each have their
    own tracer provider (as separate processes would) on one PostgreSQL app: the
    spans still form one trace, linked only by the stored ``traceparent``."""

    async def remote() -> str:
        acts = workflow.proxy_activities(activities=["greet"], task_queue="far")
        result: str = await acts.greet("bo")
        return result

    (client_tracing, client_spans) = tracing()
    (flow_tracing, flow_spans) = tracing()
    (far_tracing, far_spans) = tracing()
    app = f"otx{uuid.uuid4().hex[:10]}"
    options: dict[str, Any] = {"dsn": test_dsn()}
    async with (  # the first opened (it drops the app's schema) closes last
        MemFlow.init(
            app, "postgres", interceptors=[client_tracing], drop_on_close=True, **options
        ) as client,
        MemFlow.init(app, "postgres", interceptors=[far_tracing], **options) as far,
        MemFlow.init(app, "postgres", interceptors=[flow_tracing], **options) as flows,
    ):
        await far.worker("far", activities=[greet])
        await flows.worker("near", workflows={"remote": remote})
        handle = await client.workflow.start("r", "remote", "x1", [], "near")
        assert await handle.result(timeout=30) == "hi bo"
    (start,) = client_spans.get_finished_spans()
    schedule = next(s for s in flow_spans.get_finished_spans() if s.name.endswith("greet"))
    (attempt,) = far_spans.get_finished_spans()
    assert attempt.name == "hotmesh.activity greet"
    trace_ids = {span.context.trace_id for span in (start, schedule, attempt) if span.context}
    assert len(trace_ids) == 1
    assert parent_of(attempt) == span_id(schedule)
    runs = [s for s in flow_spans.get_finished_spans() if s.name == "hotmesh.run remote"]
    assert runs and all(parent_of(run) == span_id(start) for run in runs)
