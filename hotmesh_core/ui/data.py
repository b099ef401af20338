"""What the dashboard shows, as plain data (no web framework here).

Every read goes through the client API (``handle.export()``,
``client.workflow.dead_letters``) or the backend protocols in a read-only
transaction (``Store.page_jobs``, ``Stream.queue_stats``); nothing here knows
a storage detail. The pages (:mod:`hotmesh_core.ui.app`) render these views.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define, field

from .. import entity_query as query
from ..client import TimelineEntry, WorkflowExport
from ..errors import HotMeshError
from ..memflow import Client
from ..models import (
    MAIN_THREAD,
    TERMINAL_STATUSES,
    DeadLetter,
    EntityChange,
    Job,
    WorkerPresence,
)
from ..observe import DiffEntry, QueueStats, RunCursor, diff, entity_at, version_at
from ..presence import SEEN_WITHIN
from ..serde import ensure_json, structure

__all__ = [
    "Bar",
    "Dashboard",
    "MemoryView",
    "OperationsView",
    "RunFilters",
    "RunRow",
    "RunView",
    "RunsPage",
    "parse_where",
]

PAGE_SIZE = 50
STATUSES = ("pending", "running", "completed", "failed", "cancelled", "interrupted")


class InvalidFilter(HotMeshError, ValueError):
    """A filter of the runs page that cannot be understood."""


def parse_where(text: str) -> dict[str, Any]:
    """Entity-field filters as typed in the search box: a JSON object in the
    query language of ``mf.entity.find`` (``{"score": {"$gte": 0.8}}``, ``$or``...),
    or ``path=value`` pairs separated by commas or new lines, each value JSON if
    it parses (``count=3``, ``done=true``) and a string otherwise."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidFilter(f"entity fields: invalid JSON ({error.msg})") from None
        if not isinstance(parsed, dict):
            raise InvalidFilter("entity fields: a JSON object, or path=value pairs")
        where: dict[str, Any] = parsed
    else:
        where = {}
        for pair in text.replace("\n", ",").split(","):
            if not pair.strip():
                continue
            path, equals, raw = pair.partition("=")
            if not equals:
                raise InvalidFilter(f"entity fields: {pair.strip()!r} is not path=value")
            try:
                value: Any = json.loads(raw.strip())
            except json.JSONDecodeError:
                value = raw.strip()
            where[path.strip()] = value
    where = dict(ensure_json(where, what="entity fields"))
    query.parse_where(where)  # InvalidQuery names a bad operator or operand
    return where


@define
class RunFilters:
    status: str | None = None
    workflow_name: str | None = None
    entity: str | None = None
    id_prefix: str | None = None
    where: dict[str, Any] = field(factory=dict)
    created_from: float | None = None
    created_to: float | None = None


@define(frozen=True)
class RunRow:
    workflow_id: str
    workflow_name: str
    entity: str
    status: str
    task_queue: str
    created_at: float
    finished_at: float | None
    duration: float | None  # finished minus started; None while it runs
    parent_id: str | None


@define(frozen=True)
class RunsPage:
    rows: list[RunRow]
    next_cursor: str | None  # the page after this one, None at the end


@define(frozen=True)
class Bar:
    """One step on the waterfall: its offsets on the run's time axis, in percent."""

    entry: TimelineEntry
    left: float
    width: float
    duration: float | None
    version: int  # the entity's version once the step was done (its memory then)
    child_id: str | None = None


@define(frozen=True)
class Lane:
    """One thread of the run: main, or a hook (by its function's name)."""

    dimension: str
    label: str
    status: str
    bars: list[Bar]


@define(frozen=True)
class Pending:
    """Something the run waits for: a signal (``wait``/``exec_hook``) or a timer."""

    thread: str
    dimension: str
    index: int
    kind: str
    name: str
    since: float
    due: float | None


@define(frozen=True)
class SignalRow:
    direction: str  # "received" or "sent"
    signal_id: str
    thread: str
    dimension: str
    index: int
    data: Any
    at: float | None


@define(frozen=True)
class RunView:
    export: WorkflowExport
    lanes: list[Lane]
    pending: list[Pending]
    signals: list[SignalRow]
    children: list[RunRow]
    start: float
    end: float
    now: float

    @property
    def finished(self) -> bool:
        return self.export.status in TERMINAL_STATUSES


@define(frozen=True)
class ChangeRow:
    change: EntityChange
    thread: str  # "main", a hook's name, or "outside" (a caller with no thread)


@define(frozen=True)
class MemoryView:
    workflow_id: str
    entity: str
    status: str
    version: int
    document: dict[str, Any]  # now
    changes: list[ChangeRow]
    at_version: int | None
    document_at: dict[str, Any] | None  # as it stood at ``at_version``
    diff_from: int | None
    diff_to: int | None
    differences: list[DiffEntry] | None


@define(frozen=True)
class OperationsView:
    queues: list[QueueStats]
    dead_letters: list[DeadLetter]
    now: float
    # Live workers of each queue shown: those that announced themselves in the
    # last presence.SEEN_WITHIN seconds (hotmesh_core.presence), busy or idle.
    live_workers: dict[str, list[WorkerPresence]] = field(factory=dict)


def _row(job: Job) -> RunRow:
    duration = None if job.finished_at is None else job.finished_at - job.created_at
    return RunRow(
        job.id,
        job.workflow_name,
        job.entity,
        job.status,
        job.task_queue,
        job.created_at,
        job.finished_at,
        duration,
        job.parent_id,
    )


def _signal_of(entry: TimelineEntry) -> str:
    """The signal id a wait/exec_hook step listens to (its recorded name or args)."""
    if entry.kind == "exec_hook" and isinstance(entry.args, list) and entry.args:
        last = entry.args[-1]
        if isinstance(last, dict) and isinstance(last.get("signal"), str):
            return str(last["signal"])
    return entry.name


class Dashboard:
    """The dashboard's reads (and, when allowed, actions) over one app's client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.backend = client.backend

    @property
    def app_id(self) -> str:
        return self.client.app_id

    # -- runs ----------------------------------------------------------------------

    async def runs(
        self, filters: RunFilters, *, cursor: str | None = None, limit: int = PAGE_SIZE
    ) -> RunsPage:
        if filters.where and filters.entity is None:
            raise InvalidFilter("searching entity fields needs an entity type")
        before = None if not cursor else RunCursor.decode(cursor)
        async with self.backend.transaction(readonly=True) as tx:
            jobs = await tx.store.page_jobs(
                entity=filters.entity,
                status=filters.status,
                workflow_name=filters.workflow_name,
                id_prefix=filters.id_prefix,
                where=filters.where or None,
                created_from=filters.created_from,
                created_to=filters.created_to,
                before=before,
                limit=limit + 1,
            )
        more = len(jobs) > limit
        jobs = jobs[:limit]
        following = RunCursor.after(jobs[-1].created_at, jobs[-1].id).encode() if more else None
        return RunsPage([_row(job) for job in jobs], following)

    # -- one run -------------------------------------------------------------------

    async def run(self, workflow_id: str) -> RunView:
        handle = await self.client.workflow.get_handle(workflow_id)
        export = await handle.export()
        async with self.backend.transaction(readonly=True) as tx:
            children = await tx.store.page_jobs(parent_id=export.workflow_id, limit=500)
        now = self.backend.now()
        changes = _changes(export)
        steps = export.timeline
        end = export.finished_at or max(
            [now, *(s.finished_at or s.started_at for s in steps)], default=now
        )
        # A later generation (continue_as_new) keeps the job's creation time:
        # its axis starts at its own first step.
        first = export.created_at if export.generation == 0 or not steps else float("inf")
        start = min([first, *(s.started_at for s in steps)])
        span = max(end - start, 1e-6)
        child_at = {
            (c.parent_dimension or MAIN_THREAD, c.parent_index): c.id
            for c in children
            if c.parent_index is not None
        }
        labels = {MAIN_THREAD: (export.workflow_name, export.status)}
        for hook in export.hooks:
            labels[str(hook["dimension"])] = (str(hook["workflow_name"]), str(hook["status"]))
        entity_versions = {
            (c.dimension or MAIN_THREAD, c.index): c.version for c in changes if c.index is not None
        }

        def thread(dimension: str) -> str:
            return "main" if dimension == MAIN_THREAD else labels.get(dimension, (dimension,))[0]

        lanes: dict[str, list[Bar]] = {dimension: [] for dimension in labels}
        pending: list[Pending] = []
        signals: list[SignalRow] = []
        for entry in steps:
            finish = entry.finished_at
            shown_end = finish if finish is not None else end
            child_id = child_at.get((entry.dimension, entry.index))
            if entry.kind == "start_child" and isinstance(entry.result, str):
                child_id = entry.result
            version = entity_versions.get(
                (entry.dimension, entry.index),
                version_at(changes, finish if finish is not None else now),
            )
            lanes.setdefault(entry.dimension, []).append(
                Bar(
                    entry,
                    left=100.0 * (entry.started_at - start) / span,
                    width=max(100.0 * (shown_end - entry.started_at) / span, 0.4),
                    duration=None if finish is None else finish - entry.started_at,
                    version=version,
                    child_id=child_id,
                )
            )
            if entry.status == "pending" and export.status not in TERMINAL_STATUSES:
                due = _due(entry)
                pending.append(
                    Pending(
                        thread(entry.dimension),
                        entry.dimension,
                        entry.index,
                        entry.kind,
                        _signal_of(entry) if entry.kind == "exec_hook" else entry.name,
                        entry.started_at,
                        due,
                    )
                )
            if entry.kind in ("wait", "exec_hook") and entry.status == "done":
                signals.append(
                    SignalRow(
                        "received",
                        _signal_of(entry),
                        thread(entry.dimension),
                        entry.dimension,
                        entry.index,
                        entry.result,
                        entry.finished_at,
                    )
                )
            elif entry.kind == "signal":
                data = entry.args.get("data") if isinstance(entry.args, dict) else entry.args
                signals.append(
                    SignalRow(
                        "sent",
                        entry.name,
                        thread(entry.dimension),
                        entry.dimension,
                        entry.index,
                        data,
                        entry.started_at,
                    )
                )
        ordered = sorted(lanes, key=lambda d: (d != MAIN_THREAD, _first(lanes[d]), d))
        return RunView(
            export=export,
            lanes=[Lane(d, thread(d), labels.get(d, ("", "?"))[1], lanes[d]) for d in ordered],
            pending=pending,
            signals=signals,
            children=[_row(c) for c in children],
            start=start,
            end=end,
            now=now,
        )

    # -- its memory ----------------------------------------------------------------

    async def memory(
        self,
        workflow_id: str,
        *,
        at: int | None = None,
        diff_from: int | None = None,
        diff_to: int | None = None,
    ) -> MemoryView:
        handle = await self.client.workflow.get_handle(workflow_id)
        export = await handle.export()
        changes = _changes(export)
        names = {str(h["dimension"]): str(h["workflow_name"]) for h in export.hooks}
        rows = [
            ChangeRow(
                c,
                "outside"
                if c.dimension is None
                else "main"
                if c.dimension == MAIN_THREAD
                else names.get(c.dimension, c.dimension),
            )
            for c in changes
        ]
        versions = {c.version for c in changes} | {0}
        for value, what in ((at, "version"), (diff_from, "from"), (diff_to, "to")):
            if value is not None and value not in versions:
                raise InvalidFilter(f"entity {what}: there is no version {value}")
        document_at = None if at is None else entity_at(changes, at)
        differences = None
        if diff_from is not None and diff_to is not None:
            differences = diff(entity_at(changes, diff_from), entity_at(changes, diff_to))
        return MemoryView(
            workflow_id=export.workflow_id,
            entity=export.entity,
            status=export.status,
            version=export.version,
            document=export.context,
            changes=rows,
            at_version=at,
            document_at=document_at,
            diff_from=diff_from,
            diff_to=diff_to,
            differences=differences,
        )

    # -- operations ----------------------------------------------------------------

    async def operations(self) -> OperationsView:
        async with self.backend.transaction(readonly=True) as tx:
            queues = await tx.stream.queue_stats()
            live = {
                q.queue: await tx.store.workers(q.queue, seen_within=SEEN_WITHIN) for q in queues
            }
        letters = await self.client.workflow.dead_letters(limit=100)
        return OperationsView(queues, letters, self.backend.now(), live)

    # -- actions (only with --allow-actions; the app checks) ----------------------

    async def signal(self, signal_id: str, data: Any) -> bool:
        return await self.client.workflow.signal(signal_id, data)

    async def interrupt(self, workflow_id: str, reason: str | None) -> bool:
        handle = await self.client.workflow.get_handle(workflow_id)
        return await handle.interrupt(reason)

    async def run_action(self, workflow_id: str, action: str) -> Any:
        """``cancel`` or ``resume``, where this HotMesh's handles have them."""
        handle = await self.client.workflow.get_handle(workflow_id)
        method = getattr(handle, action, None)
        if action not in HANDLE_ACTIONS or method is None:
            raise InvalidFilter(f"this HotMesh has no {action!r} for runs")
        return await method()


#: Run actions beyond interrupt, offered when ``WorkflowHandle`` has them.
HANDLE_ACTIONS = ("cancel", "resume")


def available_actions() -> list[str]:
    from ..client import WorkflowHandle

    return [name for name in HANDLE_ACTIONS if callable(getattr(WorkflowHandle, name, None))]


def _first(bars: list[Bar]) -> float:
    return min((b.entry.started_at for b in bars), default=float("inf"))


def _due(entry: TimelineEntry) -> float | None:
    """When a pending sleep fires, or a pending wait times out (None: never)."""
    if entry.kind == "sleep" and isinstance(entry.args, (int, float)):
        return entry.started_at + float(entry.args)
    if entry.kind == "wait" and isinstance(entry.args, dict):
        timeout = entry.args.get("timeout")
        if isinstance(timeout, (int, float)):
            return entry.started_at + float(timeout)
    return None


def _changes(export: WorkflowExport) -> list[EntityChange]:
    return [structure(change, EntityChange) for change in export.entity_changes]
