"""Entities: the durable JSON memory of a job.

:class:`WorkflowEntity` is what ``await workflow.entity()`` returns inside a
workflow or hook: every method is one atomic, recorded operation applied by the
backend (never read-modify-write here).  :class:`EntityClient` is
``mf.entity``: queries over entities from outside.
"""

from __future__ import annotations

from typing import Any

from attrs import define

from .entity_ops import split_path
from .models import Job
from .protocols import Backend
from .replay import Run
from .serde import ensure_json

__all__ = ["EntityClient", "EntityRecord", "WorkflowEntity"]


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


class EntityClient:
    """``mf.entity``: find entities by the JSON fields of their document."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def find(
        self,
        entity: str,
        where: dict[str, Any] | None = None,
        *,
        limit: int = 100,
        order_by: str | None = None,
    ) -> list[EntityRecord]:
        """Entities of type ``entity`` whose fields (dotted paths) equal the given values.

        ``order_by`` is ``created_at``, ``updated_at``, ``id`` or a dotted entity
        path, with a leading ``-`` for descending order.
        """
        for path in where or {}:
            split_path(path)
        if order_by is not None:
            split_path(order_by.lstrip("-"))
        if limit < 1:
            raise ValueError("limit must be at least 1")
        async with self._backend.transaction(readonly=True) as tx:
            jobs = await tx.store.find_jobs(
                entity=entity,
                where=ensure_json(where or {}, what="where"),
                limit=limit,
                order_by=order_by,
            )
        return [EntityRecord.from_job(job) for job in jobs]
