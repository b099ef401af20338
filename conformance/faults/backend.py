"""A backend that wraps another one and injects faults, driven by a seeded RNG.

Why: the engine promises that crashes, dropped connections and lost wake-ups
never lose a job nor record a step twice.  Those paths are rare in tests that
run against a healthy database; this wrapper makes them common and repeatable.

It is configured like any backend (``backend="faults"``); its own options are
below, every other option goes to the wrapped backend, which is created through
the same plugin machinery (``resolve_backend``), never imported::

    MemFlow.init(app_id="a", backend="faults", inner="postgres", seed=7,
                 p_crash=0.02, p_lose_before=0.02, p_lose_after=0.02, p_wake=0.1,
                 budget=40, client_faults=True, dsn="postgresql://...")

Options (probabilities are per opportunity, 0 disables the kind):

``inner``          the wrapped backend's name (default ``memory``).
``seed``           seed of the ``random.Random`` that takes every decision.
``budget``         at most this many faults in all (then the wrapper is
                   transparent), so a run always terminates.
``p_crash``        after a transaction of a *supervised* worker ends (committed),
                   raise :class:`InjectedCrash` in the code that committed and
                   mark the worker dead: from then on every call it makes raises
                   ``InjectedCrash`` and nothing it does commits, as if the
                   process had died.  Only workers started inside a
                   :class:`CrashScope` can crash (the soak's supervisor does
                   that); elsewhere the kind is off, since nobody would restart
                   the worker.
``p_lose_before``  a Store/Stream/Signal call, a transaction's BEGIN or its
                   COMMIT, fails with ``BackendUnavailable`` *before* it
                   happens: the transaction rolls back as the error leaves
                   ``async with``.
``p_lose_after``   a write transaction commits and its caller gets
                   ``BackendUnavailable`` anyway: the ambiguous commit of a
                   connection cut during COMMIT (for ``single=True`` claims: the
                   tasks are leased, their rows never reach the worker).
``p_lose_wait``    ``wait_for_tasks`` (and ``watch_job``) fails with
                   ``BackendUnavailable``, as PostgreSQL's does when the server
                   is unreachable (it reads the next due time first).  Its own
                   kind because an idle worker's claim loop does not expect it.
``p_wake``         a ``wait_for_tasks`` or ``JobWatch.wait`` returns at once
                   (spurious), late (after its wake-up, a random extra pause) or
                   only at its timeout (the wake-up was dropped).  Random delays
                   per waiter also reorder wake-ups.  Never a correctness issue:
                   polling is the safety net.
``client_faults``  also apply ``p_lose_*`` to calls that no worker makes (the
                   client API: start, signal, result, export).  Callers must
                   then retry ``BackendUnavailable`` as a user would; the soak
                   does, the conformance suite does not, so it is off by default.

Who is calling is known without help from the engine: a supervised worker runs
inside a :class:`CrashScope` (a context variable its tasks inherit); any other
worker's tasks are recognised by their root coroutine, a ``Worker`` method.
Everything else is a client.

The decisions come from one ``random.Random(seed)`` in call order, so a seed
fixes the fault sequence; with several workers the interleaving (and therefore
which call meets which decision) can still vary from run to run.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, cast

from attrs import define, field

from hotmesh_core.errors import BackendUnavailable
from hotmesh_core.plugins import resolve_backend
from hotmesh_core.protocols import Backend, JobWatch, Signal, Store, Stream

__all__ = [
    "FAULT_OPTIONS",
    "CrashScope",
    "FaultConfig",
    "FaultsBackend",
    "InjectedCrash",
    "in_scope",
]

log = logging.getLogger("hotmesh.faults")

FAULT_OPTIONS = (
    "inner",
    "seed",
    "budget",
    "p_crash",
    "p_lose_before",
    "p_lose_after",
    "p_lose_wait",
    "p_wake",
    "client_faults",
)

T = TypeVar("T")

#: The most a "late" wake-up adds to a wait (seconds): late, not stuck.
LATE_WAKE_MAX = 0.25


class InjectedCrash(BaseException):
    """The worker's process died here (injected).

    A ``BaseException`` on purpose: the worker's ``except Exception`` clauses
    must not swallow it, exactly as they could not stop a SIGKILL.
    """


class CrashScope:
    """One supervised worker "process": dies once, then every call it makes fails.

    Run the worker's start with :func:`in_scope` around the worker's start; the worker's
    background tasks and handlers inherit it.  The supervisor awaits
    :attr:`died` and then replaces the worker.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.dead = False
        self.died = asyncio.Event()
        self.cause = ""

    def die(self, cause: str) -> None:
        if not self.dead:
            self.dead = True
            self.cause = cause
            self.died.set()

    def check(self) -> None:
        """A dead process does nothing more: every further call raises."""
        if self.dead:
            raise InjectedCrash(f"worker process {self.name!r} is dead ({self.cause})")


_SCOPE: contextvars.ContextVar[CrashScope | None] = contextvars.ContextVar(
    "hotmesh_faults_scope", default=None
)


def in_scope(scope: CrashScope, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run ``coroutine`` (a worker's ``start()``) as a task of ``scope``: the
    tasks it creates copy its context, so they all belong to the scope."""
    context = contextvars.copy_context()
    context.run(_SCOPE.set, scope)
    return context.run(asyncio.create_task, coroutine)


@define
class FaultConfig:
    """The fault options of one :class:`FaultsBackend` (see the module docstring)."""

    inner: str = "memory"
    seed: int = 0
    budget: int = 100
    p_crash: float = 0.0
    p_lose_before: float = 0.0
    p_lose_after: float = 0.0
    p_lose_wait: float = 0.0
    p_wake: float = 0.0
    client_faults: bool = False

    @classmethod
    def split(cls, options: dict[str, Any]) -> tuple[FaultConfig, dict[str, Any]]:
        """Our options, and the rest (for the wrapped backend)."""
        ours = {key: options[key] for key in FAULT_OPTIONS if key in options}
        rest = {key: value for key, value in options.items() if key not in FAULT_OPTIONS}
        config = cls(
            inner=str(ours.get("inner", "memory")),
            seed=int(ours.get("seed", 0)),
            budget=int(ours.get("budget", 100)),
            p_crash=float(ours.get("p_crash", 0.0)),
            p_lose_before=float(ours.get("p_lose_before", 0.0)),
            p_lose_after=float(ours.get("p_lose_after", 0.0)),
            p_lose_wait=float(ours.get("p_lose_wait", 0.0)),
            p_wake=float(ours.get("p_wake", 0.0)),
            client_faults=bool(ours.get("client_faults", False)),
        )
        if config.inner == "faults":
            raise ValueError("the faults backend cannot wrap itself")
        return config, rest


# Who is calling: a supervised worker (its scope), another worker, or a client.
WORKER = "worker"
CLIENT = "client"
Role = CrashScope | str


def current_role() -> Role:
    scope = _SCOPE.get()
    if scope is not None:
        return scope
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return CLIENT
    coro = task.get_coro() if task is not None else None
    qualname = getattr(coro, "__qualname__", "")
    if isinstance(qualname, str) and qualname.startswith("Worker."):
        return WORKER
    return CLIENT


def engine_caller() -> str:
    """The innermost ``hotmesh_core`` function on the stack (``engine.finish_run``):
    which transition a fault hit, for the log."""
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("hotmesh_core."):
            return f"{module.rpartition('.')[2]}.{frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


@define
class Injected:
    """One fault, for the log a failing seed prints."""

    kind: str
    where: str
    who: str


@define
class FaultLog:
    counts: Counter[str] = field(factory=Counter)
    events: list[Injected] = field(factory=list)


class FaultsBackend:
    """The ``faults`` backend: the inner backend, with faults (module docstring)."""

    name = "faults"

    def __init__(self, app_id: str, options: dict[str, Any]) -> None:
        self.config, inner_options = FaultConfig.split(options)
        self.inner: Backend = resolve_backend(self.config.inner, app_id, inner_options)
        self.app_id = app_id
        self.rng = random.Random(self.config.seed)
        self.remaining = self.config.budget
        self.log = FaultLog()

    # -- what the wrapped backend has, we have ---------------------------------
    @property
    def capabilities(self) -> frozenset[str]:
        return self.inner.capabilities

    def __getattr__(self, attribute: str) -> Any:
        # ``clock``, ``state``, ``buckets``...: whatever else the inner backend offers.
        if attribute.startswith("__") or attribute == "inner":
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    def now(self) -> float:
        return self.inner.now()

    async def maintain(self) -> int:
        role = current_role()
        self._alive(role)
        self._lose_before(role, "maintain")
        return await self.inner.maintain()

    # -- deciding --------------------------------------------------------------
    @property
    def injected(self) -> Counter[str]:
        return self.log.counts

    def _roll(self, probability: float) -> bool:
        if probability <= 0.0 or self.remaining <= 0:
            return False
        return self.rng.random() < probability

    def _record(self, kind: str, where: str, role: Role) -> None:
        self.remaining -= 1
        who = role.name if isinstance(role, CrashScope) else role
        where = f"{where} in {engine_caller()}"
        self.log.counts[kind] += 1
        self.log.events.append(Injected(kind, where, who))
        log.info("injected %s at %s (%s)", kind, where, who)

    def spend(self, kind: str, where: str, role: Role) -> bool:
        """Count a fault injected from outside (the soak's random kills), within the budget."""
        if self.remaining <= 0:
            return False
        self._record(kind, where, role)
        return True

    @staticmethod
    def _alive(role: Role) -> None:
        if isinstance(role, CrashScope):
            role.check()

    def _may_lose(self, role: Role) -> bool:
        return role != CLIENT or self.config.client_faults

    def _lose_before(self, role: Role, where: str, kind: str = "lose_before") -> None:
        probability = self.config.p_lose_wait if kind == "lose_wait" else self.config.p_lose_before
        if self._may_lose(role) and self._roll(probability):
            self._record(kind, where, role)
            raise BackendUnavailable(f"injected: connection lost before {where}")

    def before_call(self, role: Role, where: str) -> None:
        """Every Store/Stream/Signal call passes here first."""
        self._alive(role)
        self._lose_before(role, where)

    # -- transactions ----------------------------------------------------------
    @asynccontextmanager
    async def transaction(
        self, *, readonly: bool = False, single: bool = False
    ) -> AsyncIterator[FaultTransaction]:
        role = current_role()
        self._alive(role)
        self._lose_before(role, "BEGIN")
        kind = "readonly" if readonly else "single" if single else "write"
        after = False
        async with self.inner.transaction(readonly=readonly, single=single) as inner_tx:
            yield FaultTransaction(self, inner_tx, role)
            # Still inside the inner transaction: raising here rolls it back.
            self._alive(role)  # a dead process commits nothing
            self._lose_before(role, f"COMMIT ({kind})")
            after = not readonly and self._may_lose(role) and self._roll(self.config.p_lose_after)
        if after:
            self._record("lose_after", f"COMMIT ({kind})", role)
            raise BackendUnavailable(
                "injected: connection lost during COMMIT (the transaction did commit)"
            )
        if isinstance(role, CrashScope) and self._roll(self.config.p_crash):
            self._record("crash", f"after COMMIT ({kind})", role)
            role.die(f"crashed after a {kind} commit")
            raise InjectedCrash(f"worker process {role.name!r} crashed after a {kind} commit")

    # -- wake-ups --------------------------------------------------------------
    def _wake_fault(self, role: Role, where: str) -> str | None:
        if not self._roll(self.config.p_wake):
            return None
        kind = self.rng.choice(("wake_early", "wake_late", "wake_drop"))
        self._record(kind, where, role)
        return kind

    async def perturbed_wait(
        self, role: Role, where: str, wait: Callable[[float], Any], timeout: float
    ) -> None:
        """``await wait(timeout)``, returned early, late, or only at the timeout."""
        fault = self._wake_fault(role, where)
        if fault == "wake_early":
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        began = loop.time()
        extra = self.rng.uniform(0.0, min(timeout, LATE_WAKE_MAX)) if fault == "wake_late" else 0
        await wait(timeout)
        if fault == "wake_late":
            await asyncio.sleep(extra)
        elif fault == "wake_drop":
            await asyncio.sleep(max(0.0, timeout - (loop.time() - began)))
        self._alive(role)

    async def wait_for_tasks(self, queues: Sequence[str], timeout: float) -> None:
        role = current_role()
        self._alive(role)
        self._lose_before(role, "wait_for_tasks", "lose_wait")

        async def inner_wait(seconds: float) -> None:
            await self.inner.wait_for_tasks(queues, seconds)

        await self.perturbed_wait(role, "wait_for_tasks", inner_wait, timeout)

    def watch_job(self, job_id: str) -> AbstractAsyncContextManager[JobWatch]:
        return self._watch_job(job_id)

    @asynccontextmanager
    async def _watch_job(self, job_id: str) -> AsyncIterator[JobWatch]:
        role = current_role()
        self._alive(role)
        self._lose_before(role, "watch_job", "lose_wait")
        async with self.inner.watch_job(job_id) as watch:
            yield _FaultWatch(self, watch)


class _FaultWatch:
    def __init__(self, backend: FaultsBackend, watch: JobWatch) -> None:
        self._backend = backend
        self._watch = watch

    async def wait(self, timeout: float) -> None:
        role = current_role()
        self._backend.before_call(role, "JobWatch.wait")
        await self._backend.perturbed_wait(role, "JobWatch.wait", self._watch.wait, timeout)


class _FaultRole:
    """A Store, Stream or Signal of the inner transaction whose calls may fail first.

    Generic on purpose: every coroutine method the inner object has (today's
    protocol and whatever is added later) goes through :meth:`FaultsBackend.before_call`.
    """

    def __init__(self, backend: FaultsBackend, inner: Any, role_name: str, who: Role) -> None:
        self._backend = backend
        self._inner = inner
        self._role_name = role_name
        self._who = who

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._inner, attribute)
        if not inspect.iscoroutinefunction(value):
            return value
        backend, where, who = self._backend, f"{self._role_name}.{attribute}", self._who

        async def call(*args: Any, **kwargs: Any) -> Any:
            backend.before_call(who, where)
            return await value(*args, **kwargs)

        call.__name__ = attribute
        return call


class FaultTransaction:
    """The inner transaction, with its three roles wrapped."""

    def __init__(self, backend: FaultsBackend, inner: Any, who: Role) -> None:
        self._inner = inner
        self._store = _FaultRole(backend, inner.store, "Store", who)
        self._stream = _FaultRole(backend, inner.stream, "Stream", who)
        self._signal = _FaultRole(backend, inner.signal, "Signal", who)

    @property
    def store(self) -> Store:
        return cast(Store, self._store)

    @property
    def stream(self) -> Stream:
        return cast(Stream, self._stream)

    @property
    def signal(self) -> Signal:
        return cast(Signal, self._signal)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)
