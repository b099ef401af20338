"""OpenTelemetry: traces and metrics, as interceptors (optional extra ``otel``).

``pip install 'hotmesh[otel]'`` (``opentelemetry-api``; configure an SDK and
exporters as usual), then::

    tracing, metrics = TracingInterceptor(), MetricsInterceptor()
    mf = await MemFlow.init("app", interceptors=[tracing, metrics])

**Spans** (tracer ``hotmesh``): ``hotmesh.start <workflow>`` around
``mf.workflow.start``; ``hotmesh.run <workflow>`` per run of a workflow or hook
by a worker; ``hotmesh.activity <name>`` per activity attempt, under the
``hotmesh.schedule <name>`` span of the call that dispatched it;
``hotmesh.entity <op>``, ``hotmesh.signal``, ``hotmesh.hook <name>``,
``hotmesh.child <name>`` per new durable call of those kinds (never for calls
that replay re-runs). Attributes: ``hotmesh.workflow_id``,
``hotmesh.workflow_name``, ``hotmesh.dimension``, ``hotmesh.task_queue``,
``hotmesh.activity``, ``hotmesh.attempt``, ``hotmesh.index``,
``hotmesh.replaying``. The W3C trace context (``traceparent``) travels in the
job's headers, so the runs, hooks, activities and children of one started
workflow share one trace, across processes: a run is a child of the start, an
activity attempt and a child's runs are children of the run that dispatched
them.

**Metrics** (meter ``hotmesh``): counters ``hotmesh.tasks.claimed``,
``hotmesh.tasks.failed`` (failed activity attempts and engine tasks),
``hotmesh.leases.lost`` (a task's lease lapsed or was taken while this worker
held it), ``hotmesh.dead_letters``; observable gauges, per ``queue``,
``hotmesh.queue.depth`` (ready tasks), ``hotmesh.queue.age`` (seconds the
oldest ready task has waited), and after :meth:`MetricsInterceptor.refresh`
``hotmesh.queue.delayed`` and ``hotmesh.queue.leased``. The gauges report the
last reading: each worker reads its queue's backlog every 10 s; call
``await metrics.refresh(mf.backend)`` (or :meth:`MetricsInterceptor.poll`) to
read every queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as missing:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "hotmesh_core.otel needs OpenTelemetry: pip install 'hotmesh[otel]'"
    ) from missing

from .interceptors import (
    ActivityInfo,
    Interceptor,
    OutboundCall,
    Proceed,
    StartInput,
    WorkerEvent,
    WorkflowInfo,
)
from .protocols import Backend

__all__ = ["MetricsInterceptor", "TracingInterceptor"]

_SPAN = "otel.span"
_PROPAGATOR = TraceContextTextMapPropagator()
# New calls of these kinds get a span; those that suspend the workflow get one
# that ends once the call is issued (their answer comes in another run).
_INLINE = {"entity": "entity", "signal": "signal", "start_child": "child", "hook": "hook"}
_SUSPENDING = {"activity": "schedule", "child": "child", "exec_hook": "hook"}


def _ids(info: WorkflowInfo) -> dict[str, Any]:
    return {
        "hotmesh.workflow_id": info.workflow_id,
        "hotmesh.workflow_name": info.workflow_name,
        "hotmesh.dimension": info.dimension,
        "hotmesh.task_queue": info.task_queue,
    }


class TracingInterceptor(Interceptor):
    """A span per start, workflow run, activity attempt, and new entity operation,
    signal, hook and child; linked through the ``traceparent`` header."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("hotmesh", tracer_provider=tracer_provider)

    async def start_workflow(self, start: StartInput, proceed: Proceed) -> Any:
        attributes = {
            "hotmesh.workflow_id": start.workflow_id,
            "hotmesh.workflow_name": start.workflow_name,
            "hotmesh.entity": start.entity,
            "hotmesh.task_queue": start.task_queue,
        }
        name = f"hotmesh.start {start.workflow_name}"
        kind = trace.SpanKind.PRODUCER
        with self.tracer.start_as_current_span(name, kind=kind, attributes=attributes):
            _PROPAGATOR.inject(start.headers)
            return await proceed()

    async def execute_workflow(self, info: WorkflowInfo, proceed: Proceed) -> Any:
        attributes = {
            **_ids(info),
            "hotmesh.replaying": info.replaying,
            "hotmesh.resumed": info.resumed,
        }
        parent = _PROPAGATOR.extract(info.headers)
        name = f"hotmesh.run {info.workflow_name}"
        with self.tracer.start_as_current_span(
            name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ) as span:
            # A cached run resumes in the context of its first execution: its
            # calls find the span of the current one here.
            info.state[_SPAN] = span
            outcome = await proceed()
            span.set_attribute("hotmesh.status", str(getattr(outcome, "status", "")))
            return outcome

    async def workflow_call(self, call: OutboundCall, proceed: Proceed) -> Any:
        what = _INLINE.get(call.kind) or _SUSPENDING.get(call.kind)
        if call.replaying or what is None:
            return await proceed()
        run_span = call.workflow.state.get(_SPAN)
        parent = None if run_span is None else trace.set_span_in_context(run_span)
        label = "hotmesh.signal" if call.kind == "signal" else f"hotmesh.{what} {call.name}"
        attributes = {
            **_ids(call.workflow),
            "hotmesh.kind": call.kind,
            "hotmesh.name": call.name,
            "hotmesh.index": call.index,
        }
        if call.kind == "activity":
            attributes["hotmesh.activity"] = call.name
        if call.kind in _SUSPENDING:
            with self.tracer.start_as_current_span(
                label, context=parent, kind=trace.SpanKind.PRODUCER, attributes=attributes
            ):
                _PROPAGATOR.inject(call.headers)  # the activity's or child's parent
            return await proceed()
        with self.tracer.start_as_current_span(label, context=parent, attributes=attributes):
            if call.kind == "start_child":
                _PROPAGATOR.inject(call.headers)
            return await proceed()

    async def execute_activity(self, info: ActivityInfo, proceed: Proceed) -> Any:
        attributes: dict[str, Any] = {
            "hotmesh.workflow_id": info.workflow_id,
            "hotmesh.workflow_name": info.workflow_name,
            "hotmesh.dimension": info.dimension,
            "hotmesh.task_queue": info.task_queue,
            "hotmesh.activity": info.activity_name,
            "hotmesh.attempt": info.attempt,
        }
        if info.index is not None:
            attributes["hotmesh.index"] = info.index
        parent = _PROPAGATOR.extract(info.headers)
        with self.tracer.start_as_current_span(
            f"hotmesh.activity {info.activity_name}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
        ):
            return await proceed()


class MetricsInterceptor(Interceptor):
    """Counters of what workers do and gauges of each queue's backlog."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter("hotmesh", meter_provider=meter_provider)
        self._counters = {
            "claimed": meter.create_counter(
                "hotmesh.tasks.claimed", unit="{task}", description="tasks claimed by workers"
            ),
            "failed": meter.create_counter(
                "hotmesh.tasks.failed",
                unit="{task}",
                description="failed activity attempts and engine tasks",
            ),
            "lease_lost": meter.create_counter(
                "hotmesh.leases.lost",
                unit="{lease}",
                description="leases that lapsed or were taken while a worker held them",
            ),
            "dead_letter": meter.create_counter(
                "hotmesh.dead_letters", unit="{task}", description="tasks dead-lettered"
            ),
        }
        # queue -> reading, as last seen
        self.depth: dict[str, int] = {}
        self.age: dict[str, float] = {}
        self.delayed: dict[str, int] = {}
        self.leased: dict[str, int] = {}
        for name, readings, unit, description in (
            ("hotmesh.queue.depth", self.depth, "{task}", "ready tasks waiting for a worker"),
            ("hotmesh.queue.age", self.age, "s", "how long the oldest ready task has waited"),
            ("hotmesh.queue.delayed", self.delayed, "{task}", "tasks not yet due"),
            ("hotmesh.queue.leased", self.leased, "{task}", "tasks being worked on"),
        ):
            meter.create_observable_gauge(
                name, callbacks=[_reader(readings)], unit=unit, description=description
            )
        self._poller: asyncio.Task[None] | None = None

    def worker_event(self, event: WorkerEvent) -> None:
        if event.kind == "backlog":
            self.depth[event.queue] = event.count
            oldest = min((entry.oldest for entry in event.backlog), default=None)
            self.age[event.queue] = 0.0 if oldest is None else max(0.0, event.now - oldest)
            return
        counter = self._counters.get(event.kind)
        if counter is None:
            return
        attributes = {"queue": event.queue}
        if event.task_kind:
            attributes["kind"] = event.task_kind
        if event.kind != "claimed" and event.name:
            attributes["name"] = event.name
        counter.add(event.count, attributes)

    async def refresh(self, backend: Backend) -> None:
        """Read every queue's statistics now (``Stream.queue_stats``)."""
        async with backend.transaction(readonly=True) as tx:
            stats = await tx.stream.queue_stats()
        now = backend.now()
        seen = set()
        for queue in stats:
            seen.add(queue.queue)
            self.depth[queue.queue] = queue.ready
            oldest = queue.oldest_ready
            self.age[queue.queue] = 0.0 if oldest is None else max(0.0, now - oldest)
            self.delayed[queue.queue] = queue.delayed
            self.leased[queue.queue] = queue.leased
        for readings in (self.depth, self.age, self.delayed, self.leased):
            for gone in set(readings) - seen:  # an empty queue is not listed
                readings[gone] = 0

    def poll(self, backend: Backend, interval: float = 10.0) -> asyncio.Task[None]:
        """Refresh every ``interval`` seconds in the background (until :meth:`stop`)."""

        async def loop() -> None:
            while True:
                with contextlib.suppress(Exception):
                    await self.refresh(backend)
                await asyncio.sleep(interval)

        self._poller = asyncio.create_task(loop(), name="hotmesh:metrics")
        return self._poller

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None


def _reader(readings: dict[str, Any]) -> Any:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, {"queue": queue}) for queue, value in list(readings.items())]

    return observe
