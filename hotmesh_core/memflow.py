"""``MemFlow``: the entry point — a client, workers, entity queries, one backend."""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterable
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from .cache import DEFAULT_MAX_CACHED_WORKFLOWS, DEFAULT_STICKY_WAIT
from .client import WorkflowClient
from .codec import CodecBackend
from .config import choose_backend, validate_app_id, validate_name
from .entity import EntityClient
from .interceptors import Interceptor
from .plugins import resolve_backend
from .protocols import Backend
from .worker import Functions, Worker

__all__ = ["Client", "MemFlow"]


class Client:
    """The client surface without workers: ``.workflow`` and ``.entity``."""

    def __init__(self, backend: Backend, interceptors: Iterable[Interceptor] = ()) -> None:
        self.backend = backend
        self.app_id = backend.app_id
        self.interceptors = list(interceptors)  # hotmesh_core.interceptors
        self.workflow = WorkflowClient(backend, self.interceptors)
        self.entity = EntityClient(backend)

    @property
    def clock(self) -> Any:
        """The backend's clock (a ``VirtualClock`` in tests that asked for one)."""
        return getattr(self.backend, "clock", None)

    async def shutdown(self) -> None:
        await self.backend.close()

    close = shutdown

    @classmethod
    async def _open(cls, app_id: str, backend: str | None, options: dict[str, Any]) -> Any:
        name = choose_backend(backend)
        options = dict(options)
        codec = options.pop("codec", None)  # every stored payload through it (codec.py)
        interceptors = list(options.pop("interceptors", None) or ())
        instance = resolve_backend(name, validate_app_id(app_id), options)
        await instance.open()
        if codec is not None:
            instance = cast(Backend, CodecBackend(instance, codec))
        return cls(instance, interceptors)


class MemFlow(Client):
    """A client plus the workers of this process."""

    def __init__(self, backend: Backend, interceptors: Iterable[Interceptor] = ()) -> None:
        super().__init__(backend, interceptors)
        self.workers: list[Worker] = []
        self._announcers: list[Any] = []

    @classmethod
    def init(cls, app_id: str, backend: str | None = None, **options: Any) -> _Opening[MemFlow]:
        """Connect to (and provision) app ``app_id``: ``await`` it or ``async with`` it."""
        return _Opening(cls, app_id, backend, options)

    @staticmethod
    def Client(app_id: str, backend: str | None = None, **options: Any) -> _Opening[Client]:
        """Open a client without workers (``await`` it or ``async with`` it)."""
        return _Opening(Client, app_id, backend, options)

    async def worker(
        self,
        task_queue: str,
        workflows: Functions | None = None,
        activities: Functions | None = None,
        *,
        concurrency: int = 10,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        worker_id: str | None = None,
        max_cached_workflows: int = DEFAULT_MAX_CACHED_WORKFLOWS,
        sticky_wait: float = DEFAULT_STICKY_WAIT,
        interceptors: Iterable[Interceptor] = (),
    ) -> Worker:
        """Start a worker for ``task_queue`` in this process (stopped by ``shutdown``).

        ``worker_id``: a stable name, unique among live workers of the queue
        (a pod or host name, say). A worker started again under the same id
        takes back at once the tasks it held when it died, instead of waiting
        for their leases to run out. Without it, every start is a new worker.

        ``max_cached_workflows``: how many suspended workflow runs the worker
        keeps in memory to resume with their next answers instead of replaying
        their history (constant cost per step); 0 replays every time.

        ``sticky_wait``: the run tasks of a workflow whose run another worker
        keeps cached are left to that worker this long (then any worker takes
        them, and at once when that worker stops): a workflow's steps stay on
        the worker that can resume it without a replay.

        ``interceptors``: this worker's, after those given to ``MemFlow.init``
        (:mod:`hotmesh_core.interceptors`).
        """
        worker = Worker(
            self.backend,
            validate_name(task_queue, "task_queue"),
            workflows=workflows,
            activities=activities,
            concurrency=concurrency,
            lease=lease,
            poll_interval=poll_interval,
            worker_id=None if worker_id is None else validate_name(worker_id, "worker_id"),
            max_cached_workflows=max_cached_workflows,
            sticky_wait=sticky_wait,
            interceptors=[*self.interceptors, *interceptors],
        )
        await worker.start()
        self.workers.append(worker)
        # Say what it serves, so a waiting job can tell why (hotmesh runs show).
        from .presence import Announcer

        self._announcers.append(await Announcer(worker).start())
        return worker

    async def shutdown(self) -> None:
        """Drain and stop this process's workers, then close the backend."""
        # All at once: each announcer withdraws its announcement in a
        # transaction and each worker drains, and with the database away each
        # would wait out the pool's timeout in turn (adversarial finding).
        await asyncio.gather(
            *(announcer.stop() for announcer in self._announcers),
            *(worker.stop() for worker in self.workers),
        )
        self._announcers.clear()
        self.workers.clear()
        await self.backend.close()


C = TypeVar("C", bound=Client)


class _Opening(Generic[C]):
    """Makes ``MemFlow.init(...)`` both awaitable and an async context manager."""

    def __init__(
        self, cls: type[C], app_id: str, backend: str | None, options: dict[str, Any]
    ) -> None:
        self._cls = cls
        self._args = (app_id, backend, options)
        self._opened: C | None = None

    async def _open(self) -> C:
        opened: C = await self._cls._open(*self._args)
        return opened

    def __await__(self) -> Generator[Any, None, C]:
        return self._open().__await__()

    async def __aenter__(self) -> C:
        self._opened = await self._open()
        return self._opened

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._opened is not None:
            await self._opened.shutdown()
