"""Entities: the durable JSON memory of a job.

:class:`WorkflowEntity` is what ``await workflow.entity()`` returns inside a
workflow or hook: every method is one atomic, recorded operation applied by the
backend (never read-modify-write here).  :class:`EntityClient` is
``mf.entity``: queries over entities from outside.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from attrs import define, evolve

from .config import validate_name, validate_workflow_id
from .entity_ops import ENTITY_OPS, EntityPathError, split_path
from .entity_query import (
    MAX_LIMIT,
    SEARCH_SET,
    InvalidQuery,
    JobQuery,
    check_limit,
    decode_cursor,
    encode_cursor,
    index_name,
    parse_order,
    parse_where,
)
from .errors import WorkflowNotFound
from .models import EntityChange, EntityOp, Job
from .protocols import Backend
from .replay import Run
from .serde import ensure_json
from .transactions import joined

__all__ = [
    "Change",
    "EntityClient",
    "EntityPage",
    "EntityRecord",
    "WorkflowEntity",
    "WorkflowSearch",
    "watch_job",
]


class WorkflowEntity:
    """The entity of the running job; shared by its main function and its hooks."""

    def __init__(self, run: Run) -> None:
        self._run = run

    @property
    def id(self) -> str:
        return self._run.job.id

    @property
    def type(self) -> str:
        return self._run.job.entity

    async def _op(self, op: str, path: str | None = None, value: Any = None) -> Any:
        if path is not None:
            split_path(path)
        value = ensure_json(value, what=f"the value of entity.{op}")
        return await self._run.call(
            "entity", op, {"path": path, "value": value}, path=path, value=value
        )

    async def set(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole document."""
        result: dict[str, Any] = await self._op("set", None, doc)
        return result

    async def merge(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Deep-merge ``doc`` into the document (objects merge at every depth)."""
        result: dict[str, Any] = await self._op("merge", None, doc)
        return result

    async def get(self, path: str | None = None) -> Any:
        """The document, or the value at ``path`` (None when absent)."""
        return await self._op("get", path)

    async def append(self, path: str, value: Any) -> list[Any]:
        result: list[Any] = await self._op("append", path, value)
        return result

    async def prepend(self, path: str, value: Any) -> list[Any]:
        result: list[Any] = await self._op("prepend", path, value)
        return result

    async def increment(self, path: str, by: int | float = 1) -> int | float:
        result: int | float = await self._op("increment", path, by)
        return result

    async def toggle(self, path: str) -> bool:
        result: bool = await self._op("toggle", path)
        return result

    async def set_if_not_exists(self, path: str, value: Any) -> Any:
        """Set ``path`` unless it exists; return the value now there."""
        return await self._op("set_if_not_exists", path, value)

    async def delete(self, path: str) -> Any:
        """Remove ``path``; return the value removed (None when absent)."""
        return await self._op("delete", path)


class WorkflowSearch:
    """The job's search fields, set during the run (``await workflow.search().set``)."""

    def __init__(self, run: Run) -> None:
        self._run = run

    async def set(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Set these search fields (others are kept); return all of them. Recorded
        like an entity operation: applied once, a replay returns the recorded
        result. ``mf.workflow.search(where=...)`` sees them once the step commits."""
        if not isinstance(fields, dict) or not all(isinstance(k, str) and k for k in fields):
            raise InvalidQuery("search().set takes a dict with non-empty string keys")
        value = ensure_json(fields, what="the search fields")
        result: dict[str, Any] = await self._run.call(
            "entity", SEARCH_SET, {"value": value}, value=value
        )
        return result


@define(frozen=True)
class EntityRecord:
    """One entity as ``mf.entity.find`` returns it."""

    workflow_id: str
    entity: str
    context: dict[str, Any]
    version: int
    status: str
    created_at: float
    updated_at: float

    @classmethod
    def from_job(cls, job: Job) -> EntityRecord:
        return cls(
            job.id, job.entity, job.context, job.version, job.status, job.created_at, job.updated_at
        )


class EntityPage(list[EntityRecord]):
    """A page of ``find``: a list of records, plus ``cursor`` for the next page
    (``find(..., after=page.cursor)``), None when this page is the last."""

    cursor: str | None = None


@define(frozen=True)
class Change:
    """One committed entity change, as ``watch`` streams it."""

    workflow_id: str
    version: int
    operation: str
    path: str | None
    value: Any
    thread: str | None  # the dimension that made it ("" the main function), None outside
    index: int | None
    at: float

    @classmethod
    def from_change(cls, change: EntityChange) -> Change:
        return cls(
            change.job_id,
            change.version,
            change.op,
            change.path,
            change.value,
            change.dimension,
            change.index,
            change.at,
        )


WATCH_BATCH = 500  # changes read per round trip while catching up
WATCH_SAFETY = 30.0  # seconds between safety re-reads when no note arrives
WATCH_MARGIN = 5.0  # seconds re-read before the last note, when notes were missed


async def watch_job(
    backend: Backend, workflow_id: str, since_version: int | None
) -> AsyncGenerator[Change, None]:
    """The job's entity changes after ``since_version`` (None: from now), as they
    commit, in version order, each once. Subscribed before the first read, so
    nothing committed in between is missed; each read starts after the last
    version yielded, so nothing repeats."""
    if since_version is not None and (
        not isinstance(since_version, int) or isinstance(since_version, bool) or since_version < 0
    ):
        raise InvalidQuery(f"since_version must be a version (an int >= 0), not {since_version!r}")
    async with backend.watch_changes() as feed:
        last = since_version
        if last is None:
            async with backend.transaction(readonly=True) as tx:
                job = await tx.store.get_job(workflow_id)
            if job is None:
                raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
            last = job.version
        while True:
            async with backend.transaction(readonly=True) as tx:
                changes = await tx.store.changes_after(workflow_id, last, WATCH_BATCH)
            for change in changes:
                last = change.version
                yield Change.from_change(change)
            if len(changes) == WATCH_BATCH:
                continue  # catching up
            while True:
                notes = await feed.wait(WATCH_SAFETY)
                if notes is None or not notes:  # missed notes, or the safety re-read
                    break
                if any(job_id == workflow_id and version > last for job_id, version in notes):
                    break


class EntityClient:
    """``mf.entity``: find, count and watch entities by the JSON fields of their document.

    ``where`` is in the query language of :mod:`hotmesh_core.entity_query`
    (operators ``$gt $gte $lt $lte $ne $in $nin $exists $contains $like``,
    ``$and``/``$or``; a plain value means equality).
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def _query(
        self,
        entity: str | None,
        where: dict[str, Any] | None,
        *,
        order_by: str | None = None,
        limit: int = 100,
        target: str = "context",
        **filters: Any,
    ) -> JobQuery:
        if entity is not None:
            validate_name(entity, "entity")
        return JobQuery(
            where=parse_where(where),
            entity=entity,
            target=target,
            order=parse_order(order_by),
            limit=check_limit(limit),
            **filters,
        )

    async def _page(self, query: JobQuery, after: str | None) -> EntityPage:
        if after is not None:
            query = evolve(query, after=decode_cursor(query, after))
        # One row more than asked: whether there is a next page, without an empty last one.
        async with self._backend.transaction(readonly=True) as tx:
            found = await tx.store.query_jobs(evolve(query, limit=query.limit + 1))
        page = EntityPage(EntityRecord.from_job(job) for job, _key in found[: query.limit])
        if len(found) > query.limit:
            page.cursor = encode_cursor(query, found[query.limit - 1][1])
        return page

    async def find(
        self,
        entity: str,
        where: dict[str, Any] | None = None,
        *,
        limit: int = 100,
        order_by: str | None = None,
        after: str | None = None,
    ) -> EntityPage:
        """Entities of type ``entity`` matching ``where``, in ``order_by`` order
        (``created_at`` by default; ``updated_at``, ``id`` or a dotted entity path;
        ``-`` for descending), at most ``limit``. The page's ``cursor`` given as
        ``after=`` reads the next page (keyset: no offset, nothing skipped or
        repeated). Bad input raises :class:`InvalidQuery` naming the operator.
        """
        return await self._page(self._query(entity, where, order_by=order_by, limit=limit), after)

    async def find_one(
        self, entity: str, where: dict[str, Any] | None = None, *, order_by: str | None = None
    ) -> EntityRecord | None:
        """The first entity ``find`` would return, or None."""
        page = await self.find(entity, where, limit=1, order_by=order_by)
        return page[0] if page else None

    async def count(self, entity: str, where: dict[str, Any] | None = None) -> int:
        """How many entities of type ``entity`` match ``where``."""
        query = self._query(entity, where)
        async with self._backend.transaction(readonly=True) as tx:
            return await tx.store.count_jobs(query)

    async def get(self, workflow_id: str) -> EntityRecord | None:
        """The entity of job ``workflow_id``, or None when there is no such job."""
        async with self._backend.transaction(readonly=True) as tx:
            job = await tx.store.get_job(validate_workflow_id(workflow_id))
        return None if job is None else EntityRecord.from_job(job)

    async def update(
        self,
        workflow_id: str,
        operation: str,
        path: str | None = None,
        value: Any = None,
        *,
        connection: Any = None,
    ) -> Any:
        """Apply one entity operation (``set``, ``merge``, ``append``, ``increment``...,
        as inside a workflow) to job ``workflow_id``'s entity from outside; return
        its result. Atomic, versioned and logged like any other (``thread`` None).
        With ``connection``, in your transaction (:mod:`hotmesh_core.transactions`)."""
        if operation not in ENTITY_OPS:
            raise EntityPathError(
                f"unknown entity operation {operation!r} (known: {', '.join(sorted(ENTITY_OPS))})"
            )
        if path is not None:
            split_path(path)
        if operation == "increment" and value is None:
            value = 1  # as entity.increment(path) inside a workflow
        op = EntityOp(operation, path, ensure_json(value, what=f"the value of entity.{operation}"))
        backend = await joined(self._backend, connection)
        validate_workflow_id(workflow_id)
        async with backend.transaction() as tx:
            if await tx.store.get_job(workflow_id) is None:
                raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
            result, _version = await tx.store.apply_entity(
                workflow_id, op, dimension=None, index=None
            )
        return result

    async def create_index(
        self,
        entity: str,
        path: str | None = None,
        *,
        kind: str = "btree",
        where: dict[str, Any] | None = None,
    ) -> str:
        """Make an index serving ``find`` on ``entity`` (idempotent); return its name.

        ``kind="btree"``: on the JSON value at ``path`` (equality, ``$in``,
        ``$ne``, number ranges, ``$exists``, ``$nin``), or on the job id when no
        path is given (a partial index, with ``where``); ``"text"``: on the
        string at ``path`` in code point order (string ranges, ``$like``
        prefixes); ``"gin"``: the whole entity, ``jsonb_path_ops``
        (``$contains``). ``where`` makes it partial. In PostgreSQL it is made
        on every partition of ``jobs``, present and future.
        """
        validate_name(entity, "entity")
        parts = None if path is None else tuple(split_path(path))
        node = parse_where(where)
        name = index_name(entity, parts, kind, node)
        async with self._backend.transaction() as tx:
            await tx.store.create_index(name, entity, parts, kind, node)
        return name

    async def watch(
        self, entity: str, where: dict[str, Any] | None = None
    ) -> AsyncGenerator[Change, None]:
        """Changes, as they commit, to any entity of type ``entity`` that matches
        ``where`` once changed (its document after the change). Each change is
        yielded once, in version order per job; runs until you stop iterating.
        When the backend may have missed notes (PostgreSQL's listener
        reconnected), the jobs updated since shortly before are read again."""
        query = self._query(entity, where, order_by="updated_at")
        seen: dict[str, int] = {}  # job id -> last version yielded
        async with self._backend.watch_changes() as feed:
            started = heard = self._backend.now()
            while True:
                notes = await feed.wait(WATCH_SAFETY)
                if notes == []:
                    continue  # quiet
                if notes is None:
                    since = heard - WATCH_MARGIN  # the listener was away: read again
                    found = evolve(query, updated_since=since, limit=MAX_LIMIT)
                    firsts: dict[str, int] = {}
                else:
                    firsts = {}
                    for job_id, version in notes:
                        firsts[job_id] = min(version, firsts.get(job_id, version))
                    found = evolve(query, ids=tuple(firsts), limit=len(firsts))
                heard = self._backend.now()
                async with self._backend.transaction(readonly=True) as tx:
                    batches = [
                        await tx.store.changes_after(
                            job.id, seen.get(job.id, firsts.get(job.id, 1) - 1), WATCH_BATCH
                        )
                        for job, _key in await tx.store.query_jobs(found)
                    ]
                for changes in batches:
                    for change in changes:
                        if change.job_id not in seen and notes is None and change.at < started:
                            continue  # made before this watch began
                        seen[change.job_id] = change.version
                        yield Change.from_change(change)
