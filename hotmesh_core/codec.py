"""Payload codecs: every stored argument, result, error, entity document, entity
change, task argument and signal passes through one (``MemFlow.init(...,
codec=...)``), for encryption or compression.

:class:`CodecBackend` wraps the configured backend: values are encoded on
their way into the Store, Stream and Signal roles and decoded on their way out,
so the engine only ever sees plain values and a backend only ever stores
encoded ones. An encoded value is a JSON object ``{"$codec": name, ...}``; a
value without that mark is read as it is (an app can turn a codec on later).

Entity operations cannot run inside the database on an encrypted document, so
under a codec the wrapper locks the job's row (``Store.lock_entity``), applies
the operation with the reference semantics (:func:`hotmesh_core.entity_ops.
apply_op`) and writes the new document and its change (``Store.write_entity``)
in the same transaction: the row lock keeps concurrent changes from losing an
update, as the in-database operations do.

Queries cannot look inside encoded documents: ``mf.entity.find`` with a
``where``, an ``order_by`` on an entity path, and ``create_index`` raise
:class:`NotQueryable` instead of answering wrongly. Search fields
(``search=``, ``workflow.search().set``) are what an app chooses to expose to
queries: they are stored as given (document what you put there).

:class:`AesGcmCodec` (package ``cryptography``) encrypts with AES-256-GCM under
named keys; rotation: put the new key first (it encrypts from then on) and keep
the old ones (they still decrypt what they encrypted) until every record
written under them has expired or been rewritten.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from attrs import evolve

from .advance import Advance, Advanced, Handoff
from .entity_ops import READ_ONLY_OPS, apply_op
from .entity_query import AllOf, InvalidQuery, JobQuery
from .errors import HotMeshError, WorkflowNotFound
from .models import DeadLetter, EntityChange, EntityOp, ErrorInfo, Job, Step, Task, Thread

__all__ = ["AesGcmCodec", "Codec", "CodecBackend", "CodecError", "NotQueryable"]

MARK = "$codec"
TEXT_MARK = "\x1ehm-codec:"  # an encoded error text (ErrorInfo's fields are strings)


class Codec(Protocol):
    """Turns a JSON value into another JSON value and back."""

    name: str

    def encode(self, value: Any) -> dict[str, Any]: ...

    def decode(self, encoded: dict[str, Any]) -> Any: ...


class CodecError(HotMeshError):
    """A stored value cannot be decoded (a key that is no longer configured,
    tampered data, another codec)."""


class NotQueryable(InvalidQuery):
    """A query that would have to look inside values a codec encoded."""


class AesGcmCodec:
    """AES-256-GCM under named keys: ``AesGcmCodec({"2026-12": key, "2026-01": old})``
    encrypts with the first key and decrypts with any. A key is 32 bytes
    (``AesGcmCodec.new_key()``)."""

    name = "aesgcm"

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:  # pragma: no cover - the "encryption" extra
            raise CodecError("AesGcmCodec needs `pip install cryptography`") from None
        if not keys:
            raise CodecError("AesGcmCodec needs at least one key")
        self._ciphers = {}
        for key_id, key in keys.items():
            if not isinstance(key, bytes) or len(key) != 32:
                raise CodecError(f"key {key_id!r} must be 32 bytes (AES-256)")
            self._ciphers[key_id] = AESGCM(key)
        self._current = next(iter(keys))

    @staticmethod
    def new_key() -> bytes:
        return os.urandom(32)

    def encode(self, value: Any) -> dict[str, Any]:
        nonce = os.urandom(12)
        plain = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        sealed = self._ciphers[self._current].encrypt(nonce, plain, self._current.encode())
        data = base64.b64encode(nonce + sealed).decode()
        return {MARK: self.name, "key": self._current, "data": data}

    def decode(self, encoded: dict[str, Any]) -> Any:
        key_id = encoded.get("key")
        cipher = self._ciphers.get(key_id) if isinstance(key_id, str) else None
        if cipher is None:
            raise CodecError(f"no key {key_id!r} configured to decrypt a stored value")
        raw = base64.b64decode(encoded["data"])
        try:
            plain = cipher.decrypt(raw[:12], raw[12:], key_id.encode())  # type: ignore[union-attr]
        except Exception:
            raise CodecError(f"a stored value does not decrypt with key {key_id!r}") from None
        return json.loads(plain)


class _Values:
    """Encoding and decoding of each record's user data."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def enc(self, value: Any) -> Any:
        return self.codec.encode(value)

    def dec(self, value: Any) -> Any:
        if isinstance(value, dict) and MARK in value:
            if value[MARK] != self.codec.name:
                raise CodecError(
                    f"a value encoded by codec {value[MARK]!r}, not {self.codec.name!r}"
                )
            return self.codec.decode(value)
        return value

    def enc_text(self, text: str) -> str:
        return TEXT_MARK + json.dumps(self.enc(text), separators=(",", ":")) if text else text

    def dec_text(self, text: str) -> str:
        if text.startswith(TEXT_MARK):
            return str(self.dec(json.loads(text[len(TEXT_MARK) :])))
        return text

    def enc_error(self, error: ErrorInfo | None) -> ErrorInfo | None:
        if error is None:
            return None
        return ErrorInfo(
            error.type_name, self.enc_text(error.message), self.enc_text(error.traceback)
        )

    def dec_error(self, error: ErrorInfo | None) -> ErrorInfo | None:
        if error is None:
            return None
        return ErrorInfo(
            error.type_name, self.dec_text(error.message), self.dec_text(error.traceback)
        )

    def enc_job(self, job: Job) -> Job:
        return evolve(
            job,
            args=self.enc(job.args),
            context=self.enc(job.context),
            result=self.enc(job.result),
            error=self.enc_error(job.error),
        )

    def dec_job(self, job: Job | None) -> Any:
        if job is None:
            return None
        return evolve(
            job,
            args=self.dec(job.args),
            context=self.dec(job.context),
            result=self.dec(job.result),
            error=self.dec_error(job.error),
        )

    def enc_thread(self, thread: Thread) -> Thread:
        return evolve(thread, args=self.enc(thread.args), error=self.enc_error(thread.error))

    def dec_thread(self, thread: Thread | None) -> Any:
        if thread is None:
            return None
        return evolve(thread, args=self.dec(thread.args), error=self.dec_error(thread.error))

    def enc_step(self, step: Step) -> Step:
        return evolve(
            step,
            args=self.enc(step.args),
            result=self.enc(step.result),
            error=self.enc_error(step.error),
        )

    def dec_step(self, step: Step | None) -> Any:
        if step is None:
            return None
        return evolve(
            step,
            args=self.dec(step.args),
            result=self.dec(step.result),
            error=self.dec_error(step.error),
        )

    def enc_task(self, task: Task) -> Task:
        if "args" not in task.payload:
            return task
        return evolve(task, payload={**task.payload, "args": self.enc(task.payload["args"])})

    def dec_task(self, task: Task) -> Task:
        if "args" not in task.payload:
            return task
        return evolve(task, payload={**task.payload, "args": self.dec(task.payload["args"])})

    def dec_change(self, change: EntityChange) -> EntityChange:
        return evolve(change, value=self.dec(change.value))


def _refuse(query: JobQuery) -> None:
    if query.target != "context":
        return  # search fields are stored as given
    if query.where != AllOf(()) or query.order.field == "path":
        raise NotQueryable(REFUSED)


REFUSED = (
    "this app's entities are encoded by a codec (encryption): a query cannot look inside"
    " them. Query search fields instead (search=, workflow.search().set)"
)


class _Role:
    """Delegates to the wrapped role; subclasses transform the calls that carry user data."""

    def __init__(self, inner: Any, values: _Values) -> None:
        self._inner = inner
        self._v = values

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)


class _Store(_Role):
    async def create_job(
        self, job: Job, *, run: Task | None = None, owner: str | None = None, lease: float = 0.0
    ) -> tuple[Job, bool]:
        encoded = None if run is None else self._v.enc_task(run)
        stored, created = await self._inner.create_job(
            self._v.enc_job(job), run=encoded, owner=owner, lease=lease
        )
        if run is not None and encoded is not None and owner is not None and created:
            run.id, run.attempts, run.lease_owner = encoded.id, 1, owner
        return self._v.dec_job(stored), created

    async def advance(self, plan: Advance) -> Advanced:
        v = self._v
        encoded = evolve(
            plan,
            answers=[
                evolve(a, result=v.enc(a.result), error=v.enc_error(a.error)) for a in plan.answers
            ],
            recorded=[v.enc_step(step) for step in plan.recorded],
            values=[v.enc_step(step) for step in plan.values],
            dispatches=[
                evolve(
                    d,
                    step=v.enc_step(d.step),
                    task=None if d.task is None else v.enc_task(d.task),
                )
                for d in plan.dispatches
            ],
            finish=None
            if plan.finish is None
            else evolve(
                plan.finish,
                result=v.enc(plan.finish.result),
                error=v.enc_error(plan.finish.error),
            ),
        )
        return await self._inner.advance(encoded)  # type: ignore[no-any-return]

    async def get_job(self, job_id: str) -> Job | None:
        return self._v.dec_job(await self._inner.get_job(job_id))  # type: ignore[no-any-return]

    async def get_awaited_job(self, job_id: str) -> Job | None:
        return self._v.dec_job(await self._inner.get_awaited_job(job_id))  # type: ignore[no-any-return]

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        return [self._v.dec_job(job) for job in await self._inner.get_jobs(job_ids)]

    async def set_job_status(
        self, job_id: str, status: str, *, result: Any = None, error: ErrorInfo | None = None
    ) -> Job | None:
        job = await self._inner.set_job_status(
            job_id, status, result=self._v.enc(result), error=self._v.enc_error(error)
        )
        return self._v.dec_job(job)  # type: ignore[no-any-return]

    async def continue_job(self, job_id: str, args: list[Any]) -> Job | None:
        return self._v.dec_job(await self._inner.continue_job(job_id, self._v.enc(args)))  # type: ignore[no-any-return]

    async def reopen_job(self, job_id: str, **options: Any) -> Job | None:
        return self._v.dec_job(await self._inner.reopen_job(job_id, **options))  # type: ignore[no-any-return]

    async def create_thread(self, thread: Thread) -> bool:
        return bool(await self._inner.create_thread(self._v.enc_thread(thread)))

    async def get_thread(self, job_id: str, dimension: str) -> Thread | None:
        return self._v.dec_thread(await self._inner.get_thread(job_id, dimension))  # type: ignore[no-any-return]

    async def finish_thread(
        self, job_id: str, dimension: str, status: str, error: ErrorInfo | None = None
    ) -> Thread | None:
        thread = await self._inner.finish_thread(
            job_id, dimension, status, self._v.enc_error(error)
        )
        return self._v.dec_thread(thread)  # type: ignore[no-any-return]

    async def threads(self, job_id: str) -> list[Thread]:
        return [self._v.dec_thread(t) for t in await self._inner.threads(job_id)]

    async def load_steps(self, *args: Any, **kwargs: Any) -> list[Step]:
        return [self._v.dec_step(s) for s in await self._inner.load_steps(*args, **kwargs)]

    async def insert_step(self, step: Step) -> bool:
        return bool(await self._inner.insert_step(self._v.enc_step(step)))

    async def load_thread(
        self, *args: Any, **kwargs: Any
    ) -> tuple[Job | None, Thread | None, list[Step]]:
        job, thread, steps = await self._inner.load_thread(*args, **kwargs)
        decoded = [self._v.dec_step(step) for step in steps]
        return self._v.dec_job(job), self._v.dec_thread(thread), decoded

    async def resolve_step(
        self,
        job_id: str,
        dimension: str,
        index: int,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
        attempts: int | None = None,
    ) -> Step | None:
        step = await self._inner.resolve_step(
            job_id,
            dimension,
            index,
            result=self._v.enc(result),
            error=self._v.enc_error(error),
            attempts=attempts,
        )
        return self._v.dec_step(step)  # type: ignore[no-any-return]

    async def note_attempt(
        self, job_id: str, dimension: str, index: int, attempts: int, error: ErrorInfo
    ) -> None:
        encoded = self._v.enc_error(error)
        assert encoded is not None
        await self._inner.note_attempt(job_id, dimension, index, attempts, encoded)

    async def apply_entity(
        self, job_id: str, op: EntityOp, *, dimension: str | None, index: int | None
    ) -> tuple[Any, int]:
        locked = await self._inner.lock_entity(job_id)
        if locked is None:
            raise WorkflowNotFound(f"no workflow with id {job_id!r}")
        context, version = locked
        new_doc, result, changed = apply_op(self._v.dec(context), op.op, op.path, op.value)
        if not changed or op.op in READ_ONLY_OPS:
            return result, version
        change = EntityChange(
            job_id, version + 1, op.op, op.path, self._v.enc(op.value), dimension, index
        )
        await self._inner.write_entity(job_id, self._v.enc(new_doc), change)
        return result, version + 1

    async def entity_changes(self, job_id: str) -> list[EntityChange]:
        return [self._v.dec_change(c) for c in await self._inner.entity_changes(job_id)]

    async def changes_after(self, job_id: str, version: int, limit: int) -> list[EntityChange]:
        found = await self._inner.changes_after(job_id, version, limit)
        return [self._v.dec_change(c) for c in found]

    async def find_jobs(self, **filters: Any) -> list[Job]:
        order = str(filters.get("order_by") or "created_at").lstrip("-")
        if filters.get("where") or order not in ("created_at", "updated_at", "id"):
            raise NotQueryable(REFUSED)
        return [self._v.dec_job(j) for j in await self._inner.find_jobs(**filters)]

    async def query_jobs(self, query: JobQuery) -> list[tuple[Job, list[Any]]]:
        _refuse(query)
        return [(self._v.dec_job(j), key) for j, key in await self._inner.query_jobs(query)]

    async def count_jobs(self, query: JobQuery) -> int:
        _refuse(query)
        return int(await self._inner.count_jobs(query))

    async def create_index(self, *args: Any, **kwargs: Any) -> None:
        raise NotQueryable(
            "this app's entities are encoded by a codec: an index on them would serve nothing"
        )


class _Stream(_Role):
    async def enqueue(self, task: Task, **options: Any) -> Any:
        return await self._inner.enqueue(self._v.enc_task(task), **options)

    async def claim(self, *args: Any, **kwargs: Any) -> list[Task]:
        return [self._v.dec_task(t) for t in await self._inner.claim(*args, **kwargs)]

    async def dead_letters(self, *args: Any, **kwargs: Any) -> list[DeadLetter]:
        return [
            evolve(d, task=self._v.dec_task(d.task), error=self._v.dec_error(d.error))
            for d in await self._inner.dead_letters(*args, **kwargs)
        ]

    async def dead_letter(self, task_id: str, error: ErrorInfo) -> None:
        await self._inner.dead_letter(task_id, self._v.enc_error(error))


class _Signal(_Role):
    async def deliver(
        self, signal_id: str, data: Any, *, expire: float, handoff: Handoff | None = None
    ) -> bool:
        return bool(
            await self._inner.deliver(signal_id, self._v.enc(data), expire=expire, handoff=handoff)
        )

    async def buffer(self, signal_id: str, data: Any, *, expire: float) -> None:
        await self._inner.buffer(signal_id, self._v.enc(data), expire=expire)

    async def take_buffered(self, signal_id: str) -> tuple[bool, Any]:
        found, data = await self._inner.take_buffered(signal_id)
        return found, self._v.dec(data) if found else data


class _Transaction:
    def __init__(self, inner: Any, values: _Values) -> None:
        self._inner = inner
        self.store = _Store(inner.store, values)
        self.stream = _Stream(inner.stream, values)
        self.signal = _Signal(inner.signal, values)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)


class CodecBackend:
    """The configured backend, with every stored payload passing through ``codec``."""

    def __init__(self, inner: Any, codec: Codec) -> None:
        self._inner = inner
        self._values = _Values(codec)
        self.codec = codec

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)

    @asynccontextmanager
    async def transaction(self, **options: Any) -> AsyncIterator[_Transaction]:
        async with self._inner.transaction(**options) as tx:
            yield _Transaction(tx, self._values)

    async def joined(self, connection: Any) -> CodecBackend:
        return CodecBackend(await self._inner.joined(connection), self.codec)
