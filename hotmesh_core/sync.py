"""A synchronous facade over the client operations, for code that is not async.

Scripts, Django or Flask views: ``hotmesh_core.sync.connect(...)`` runs an
event loop in a private daemon thread and forwards each call to it.  With the
memory backend the data lives in that loop, so use it with PostgreSQL to share
jobs with async workers elsewhere.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from .client import WorkflowExport, WorkflowHandle
from .durations import Duration
from .entity import EntityPage
from .memflow import Client, MemFlow

__all__ = ["SyncClient", "SyncHandle", "connect"]

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="hotmesh-sync", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class SyncHandle:
    def __init__(self, runner: _LoopThread, handle: WorkflowHandle) -> None:
        self._run = runner.run
        self._handle = handle
        self.workflow_id = handle.workflow_id

    def result(self, timeout: Duration | None = None) -> Any:
        return self._run(self._handle.result(timeout))

    def status(self) -> str:
        return self._run(self._handle.status())

    def state(self) -> dict[str, Any]:
        return self._run(self._handle.state())

    entity = state

    def interrupt(self, reason: str | None = None) -> bool:
        return self._run(self._handle.interrupt(reason))

    def export(self) -> WorkflowExport:
        return self._run(self._handle.export())


class SyncWorkflowClient:
    def __init__(self, runner: _LoopThread, client: Client) -> None:
        self._runner = runner
        self._client = client

    def start(
        self,
        entity: str,
        workflow_name: str,
        workflow_id: str | None = None,
        args: Iterable[Any] | None = None,
        task_queue: str = "default",
        search: dict[str, Any] | None = None,
        expire: Duration | None = None,
        **options: Any,
    ) -> SyncHandle:
        handle = self._runner.run(
            self._client.workflow.start(
                entity, workflow_name, workflow_id, args, task_queue, search, expire, **options
            )
        )
        return SyncHandle(self._runner, handle)

    def get_handle(self, workflow_id: str) -> SyncHandle:
        return SyncHandle(
            self._runner, self._runner.run(self._client.workflow.get_handle(workflow_id))
        )

    def signal(
        self,
        signal_id: str,
        data: Any = None,
        *,
        expire: Duration | None = None,
        connection: Any = None,
    ) -> bool:
        return self._runner.run(
            self._client.workflow.signal(signal_id, data, expire=expire, connection=connection)
        )

    def hook(
        self,
        workflow_id: str,
        task_queue: str,
        workflow_name: str,
        args: Iterable[Any] | None = None,
    ) -> str:
        return self._runner.run(
            self._client.workflow.hook(workflow_id, task_queue, workflow_name, args)
        )

    def search(self, where: dict[str, Any] | None = None, **filters: Any) -> list[str]:
        return self._runner.run(self._client.workflow.search(where, **filters))


class SyncEntityClient:
    def __init__(self, runner: _LoopThread, client: Client) -> None:
        self._runner = runner
        self._client = client

    def find(
        self,
        entity: str,
        where: dict[str, Any] | None = None,
        *,
        limit: int = 100,
        order_by: str | None = None,
        after: str | None = None,
    ) -> EntityPage:
        return self._runner.run(
            self._client.entity.find(entity, where, limit=limit, order_by=order_by, after=after)
        )


class SyncClient:
    """``client.workflow`` and ``client.entity``, blocking."""

    def __init__(self, runner: _LoopThread, client: Client) -> None:
        self._runner = runner
        self._client = client
        self.app_id = client.app_id
        self.workflow = SyncWorkflowClient(runner, client)
        self.entity = SyncEntityClient(runner, client)

    def close(self) -> None:
        self._runner.run(self._client.shutdown())
        self._runner.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(app_id: str, backend: str | None = None, **options: Any) -> SyncClient:
    """Open a blocking client for ``app_id`` (same configuration as ``MemFlow.init``)."""
    runner = _LoopThread()
    try:
        client = runner.run(_open_client(app_id, backend, options))
    except BaseException:
        runner.stop()
        raise
    return SyncClient(runner, client)


async def _open_client(app_id: str, backend: str | None, options: dict[str, Any]) -> Client:
    return await MemFlow.Client(app_id=app_id, backend=backend, **options)
