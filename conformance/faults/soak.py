"""The soak: the standard shapes through the ``faults`` backend, under supervised
workers that crash and are restarted, then every invariant checked.

How a crash is simulated: each worker runs in a :class:`CrashScope`.  When the
backend injects a crash (right after a commit) or the supervisor kills the
worker at a random moment, the scope is marked dead: every further call of the
worker raises :class:`InjectedCrash` and nothing it had in flight commits.  The
supervisor then stops it with ``Worker.stop(drain=False)`` (every in-flight task
cancelled, nothing acked — like a dying process; its memory is dropped with the
object) and starts a fresh ``Worker``: half the time under the same
``worker_id`` (which releases its leases at start), otherwise under a new id
(which waits the short soak lease out).

Clients retry ``BackendUnavailable`` as a user would: starts are idempotent by
workflow id, results and exports are reads; a signal is sent again (at worst a
second copy is kept for a waiter that never comes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from attrs import define, field

from hotmesh_core import MemFlow
from hotmesh_core.client import WorkflowExport, WorkflowHandle
from hotmesh_core.errors import BackendUnavailable, HotMeshError, WorkflowNotFound
from hotmesh_core.plugins import backend_test_options
from hotmesh_core.serde import unstructure
from hotmesh_core.worker import Worker

from .backend import CrashScope, FaultsBackend, InjectedCrash, in_scope
from .workload import ENTITY, WORKFLOWS, Activities, Shape, check_export, plan

__all__ = ["SeedReport", "SoakConfig", "SoakReport", "SupervisedWorker", "run_seed", "soak"]

log = logging.getLogger("hotmesh.faults.soak")

QUEUE = "soak"
T = TypeVar("T")


#: The settings of a soak that its command line carries (``--budget`` ...).
TUNABLES = (
    "budget",
    "p_crash",
    "p_lose_before",
    "p_lose_after",
    "p_lose_wait",
    "p_wake",
    "kill_rate",
    "lease",
    "poll_interval",
    "deadline",
)


@define
class SoakConfig:
    """Everything a soak run depends on (a failing seed prints it as a command)."""

    inner: str = "memory"
    inner_options: dict[str, Any] | None = None  # None: the inner backend's test options
    budget: int = 30  # faults per seed, all kinds together
    p_crash: float = 0.03
    p_lose_before: float = 0.02
    p_lose_after: float = 0.02
    p_lose_wait: float = 0.01
    p_wake: float = 0.1
    kill_rate: float = 0.3  # random kills per second (a crash not right after a commit)
    min_workers: int = 1
    max_workers: int = 3
    lease: float = 1.5
    poll_interval: float = 0.2
    deadline: float = 45.0  # seconds for every workflow of a seed to finish
    shapes: str = ""  # comma-separated workflow names to run (default: every shape)

    def command(self, seeds: str) -> str:
        """The command line that replays ``seeds`` with this configuration."""
        defaults = SoakConfig()
        parts = ["python -m conformance.faults", f"--inner {self.inner}", f"--seeds {seeds}"]
        for name in TUNABLES:
            value = getattr(self, name)
            if value != getattr(defaults, name):
                parts.append(f"--{name.replace('_', '-')} {value}")
        if self.shapes:
            parts.append(f"--shapes {self.shapes}")
        if (self.min_workers, self.max_workers) != (defaults.min_workers, defaults.max_workers):
            parts.append(f"--workers {self.min_workers}-{self.max_workers}")
        return " ".join(parts)


class SupervisedWorker(Worker):
    """A Worker whose process can die (:class:`InjectedCrash`).

    Its loops and handlers end quietly when the process is dead, so that
    ``stop(drain=False)`` can tear it down (``Worker.stop`` awaits its loops and
    would re-raise).  A claim loop that ends for any *other* reason is a defect
    (the worker would silently stop claiming): it is recorded, and the worker
    declared dead so the supervisor replaces it and the soak goes on.
    """

    def __init__(self, scope: CrashScope, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scope = scope
        self.loop_deaths: list[str] = []

    async def _claim_loop(self) -> None:
        try:
            await super()._claim_loop()
        except (InjectedCrash, asyncio.CancelledError):
            if not self.scope.dead:
                raise
        except BaseException as error:  # the defect this catches may be any exception
            self.loop_deaths.append(f"{type(error).__name__}: {error}")
            log.error("the claim loop of %s died: %r", self.id, error)
            self.scope.die(f"claim loop died: {error!r}")

    async def _expire_loop(self) -> None:
        with contextlib.suppress(InjectedCrash):
            await super()._expire_loop()

    # Signatures left open: these private methods may change under us.
    async def _handle(self, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(InjectedCrash):
            await super()._handle(*args, **kwargs)

    async def _heartbeat(self, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(InjectedCrash):
            await super()._heartbeat(*args, **kwargs)


@define
class Slot:
    base: str
    worker_id: str
    generation: int = 0
    scope: CrashScope | None = None
    worker: SupervisedWorker | None = None


class Supervisor:
    """Keeps ``n`` workers alive: replaces each one that dies, kills some at random."""

    def __init__(
        self,
        backend: FaultsBackend,
        config: SoakConfig,
        rng: random.Random,
        activities: Activities,
        count: int,
    ) -> None:
        self.backend = backend
        self.config = config
        self.rng = rng
        self.activities = activities
        self.slots = [Slot(f"w{i}", f"w{i}") for i in range(count)]
        self.restarts = Counter[str]()
        self.loop_deaths: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        for slot in self.slots:
            await self._spawn(slot)
            self._tasks.append(asyncio.create_task(self._keep_alive(slot)))
        if self.config.kill_rate > 0:
            self._tasks.append(asyncio.create_task(self._killer()))

    async def _spawn(self, slot: Slot) -> None:
        while True:
            scope = CrashScope(f"{slot.worker_id}#{slot.generation}")
            worker = SupervisedWorker(
                scope,
                self.backend,
                QUEUE,
                workflows=WORKFLOWS,
                activities=self.activities.functions(),
                lease=self.config.lease,
                poll_interval=self.config.poll_interval,
                worker_id=slot.worker_id,
            )
            slot.scope, slot.worker = scope, worker
            try:
                # Started inside its scope: every task it creates belongs to the scope.
                await in_scope(scope, worker.start())
            except InjectedCrash:
                return  # died while starting: _keep_alive replaces it
            except BackendUnavailable:
                # Start takes back its leases first; a process would fail and be restarted.
                self.restarts["start_failed"] += 1
                await asyncio.sleep(self.config.poll_interval)
                continue
            return

    async def _keep_alive(self, slot: Slot) -> None:
        while not self._stopping:
            assert slot.scope is not None and slot.worker is not None
            await slot.scope.died.wait()
            if self._stopping:
                return
            await slot.worker.stop(drain=False)
            self.loop_deaths.extend(slot.worker.loop_deaths)
            same = self.rng.random() < 0.5
            self.restarts["same_id" if same else "new_id"] += 1
            slot.generation += 1
            if not same:  # a stranger: it must wait out the dead worker's leases
                slot.worker_id = f"{slot.base}.{slot.generation}"
            await self._spawn(slot)

    async def _killer(self) -> None:
        """Kill a random worker now and then: a crash at any moment, not only after a commit."""
        while not self._stopping:
            await asyncio.sleep(self.rng.expovariate(self.config.kill_rate))
            slot = self.rng.choice(self.slots)
            if (
                slot.scope is not None
                and not slot.scope.dead
                and self.backend.spend("kill", "at a random moment", slot.scope)
            ):
                slot.scope.die("killed by the supervisor")

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in self.slots:
            if slot.worker is not None:
                await slot.worker.stop(drain=False)
                self.loop_deaths.extend(slot.worker.loop_deaths)


@define
class SeedReport:
    seed: int
    workflows: int = 0
    workers: int = 0
    lost: list[str] = field(factory=list)
    wrong: list[str] = field(factory=list)
    faults: Counter[str] = field(factory=Counter)
    restarts: Counter[str] = field(factory=Counter)
    activity_steps: int = 0
    rerun_activities: int = 0
    seconds: float = 0.0
    details: list[str] = field(factory=list)  # exports and fault logs of failures

    @property
    def ok(self) -> bool:
        return not self.lost and not self.wrong


async def _retry(operation: Callable[[], Awaitable[T]], deadline: float) -> T:
    """What a user does with ``BackendUnavailable``: try again (every call is safe to repeat)."""
    pause = 0.02
    while True:
        try:
            return await operation()
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)


async def _result(handle: WorkflowHandle, deadline: float) -> tuple[bool, Any]:
    """(finished, result or error text) by the deadline."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, None
        try:
            return True, await handle.result(timeout=remaining)
        except BackendUnavailable:
            await asyncio.sleep(0.05)
        except TimeoutError:
            return False, None
        except HotMeshError as error:
            return True, f"raised {type(error).__name__}: {error}"


async def _export(mf: MemFlow, workflow_id: str, deadline: float) -> WorkflowExport | None:
    async def read() -> WorkflowExport:
        return await (await mf.workflow.get_handle(workflow_id)).export()

    try:
        return await _retry(read, deadline + 30)
    except WorkflowNotFound:
        return None


def _dump(export: WorkflowExport | None) -> str:
    if export is None:
        return "(no such job)"
    data = unstructure(export)
    for entry in data.get("timeline", []):
        if entry.get("error"):
            entry["error"] = {"type_name": entry["error"]["type_name"]}
    return json.dumps(data, indent=1, sort_keys=True, default=str)


async def _drive(
    mf: MemFlow, shape: Shape, rng: random.Random, deadline: float, report: SeedReport
) -> None:
    """Start one workflow (and signal it) as a user would, wait, then check it."""
    handle = await _retry(
        lambda: mf.workflow.start(ENTITY, shape.name, shape.workflow_id, shape.args, QUEUE),
        deadline,
    )
    if shape.signal is not None:
        await asyncio.sleep(rng.uniform(0.0, 0.3))  # sometimes before the wait, sometimes after
        signal_id, data = shape.signal
        await _retry(lambda: mf.workflow.signal(signal_id, data), deadline)
    finished, _ = await _result(handle, deadline)
    export = await _export(mf, shape.workflow_id, deadline)
    # A hook may still finish after its job (its signal released the job first,
    # then its worker died): it must get there by the deadline too.
    while (
        export is not None
        and any(hook["status"] == "running" for hook in export.hooks)
        and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.1)
        export = await _export(mf, shape.workflow_id, deadline)
    if not finished:
        report.lost.append(f"{shape.workflow_id}: not finished within the deadline")
        report.details.append(f"export of lost {shape.workflow_id}:\n{_dump(export)}")
        return
    jobs = [(shape, export)]
    if shape.child is not None:
        jobs.append((shape.child, await _export(mf, shape.child.workflow_id, deadline)))
    for job, stored in jobs:
        if stored is None:
            report.wrong.append(f"{job.workflow_id}: no such job")
            continue
        problems = check_export(job, stored)
        if problems:
            report.wrong.append(f"{job.workflow_id}: " + "; ".join(problems))
            report.details.append(f"export of wrong {job.workflow_id}:\n{_dump(stored)}")
        report.workflows += 1


def _count_runs(report: SeedReport, activities: Activities, exports: list[WorkflowExport]) -> None:
    for export in exports:
        for step in export.timeline:
            if step.kind != "activity" or step.status != "done":
                continue
            report.activity_steps += 1
            runs = activities.runs[Activities.key(step.name, step.args)]
            if runs < 1:
                report.wrong.append(
                    f"{export.workflow_id}: step {step.index} {step.name}{step.args} is recorded"
                    " but the activity never ran"
                )
            elif runs > 1:
                report.rerun_activities += 1


async def run_seed(seed: int, config: SoakConfig) -> SeedReport:
    """One seed: its workflows under faults, then every check."""
    began = time.monotonic()
    rng = random.Random(f"soak-{seed}")
    report = SeedReport(seed)
    options = (
        backend_test_options(config.inner)
        if config.inner_options is None
        else dict(config.inner_options)
    )
    mf = await MemFlow.init(
        app_id=f"soak{seed}-{uuid.uuid4().hex[:8]}",
        backend="faults",
        inner=config.inner,
        seed=seed,
        budget=config.budget,
        p_crash=config.p_crash,
        p_lose_before=config.p_lose_before,
        p_lose_after=config.p_lose_after,
        p_lose_wait=config.p_lose_wait,
        p_wake=config.p_wake,
        client_faults=True,
        **options,
    )
    backend = mf.backend
    assert isinstance(backend, FaultsBackend)
    activities = Activities()
    report.workers = rng.randint(config.min_workers, config.max_workers)
    supervisor = Supervisor(backend, config, rng, activities, report.workers)
    shapes = plan(seed, rng)
    if config.shapes:
        chosen = set(config.shapes.split(","))
        shapes = [shape for shape in shapes if shape.name in chosen]
    deadline = time.monotonic() + config.deadline
    try:
        await supervisor.start()
        await asyncio.gather(*(_drive(mf, shape, rng, deadline, report) for shape in shapes))
        exports = [
            export
            for shape in shapes
            for wid in (shape.workflow_id, shape.child.workflow_id if shape.child else None)
            if wid is not None and (export := await _export(mf, wid, deadline)) is not None
        ]
        _count_runs(report, activities, exports)
    finally:
        await supervisor.stop()
        await mf.shutdown()
    for death in supervisor.loop_deaths:
        report.wrong.append(f"a worker's claim loop died (it would stop claiming): {death}")
    report.faults = Counter(backend.injected)
    report.restarts = supervisor.restarts
    report.seconds = time.monotonic() - began
    if not report.ok:
        events = "\n".join(f"  {e.kind} at {e.where} ({e.who})" for e in backend.log.events)
        report.details.append(f"faults injected, in order:\n{events}")
    return report


@define
class SoakReport:
    config: SoakConfig
    seeds: list[SeedReport] = field(factory=list)

    @property
    def failed(self) -> list[SeedReport]:
        return [seed for seed in self.seeds if not seed.ok]

    def totals(self) -> dict[str, Any]:
        faults: Counter[str] = Counter()
        restarts: Counter[str] = Counter()
        for seed in self.seeds:
            faults.update(seed.faults)
            restarts.update(seed.restarts)
        return {
            "seeds": len(self.seeds),
            "workflows": sum(s.workflows for s in self.seeds),
            "faults": dict(sorted(faults.items())),
            "restarts": dict(sorted(restarts.items())),
            "activity_steps": sum(s.activity_steps for s in self.seeds),
            "activities_run_more_than_once": sum(s.rerun_activities for s in self.seeds),
            "lost": sum(len(s.lost) for s in self.seeds),
            "wrong": sum(len(s.wrong) for s in self.seeds),
            "failed_seeds": [s.seed for s in self.failed],
        }

    def summary(self, *, details: bool = True) -> str:
        lines: list[str] = []
        for seed in self.failed:
            lines.append(f"seed {seed.seed} FAILED ({seed.workers} workers, {seed.seconds:.1f} s)")
            lines.extend(f"  lost: {text}" for text in seed.lost)
            lines.extend(f"  wrong: {text}" for text in seed.wrong)
            lines.append(f"  replay: {self.config.command(str(seed.seed))}")
            if details:
                lines.extend("  " + text.replace("\n", "\n  ") for text in seed.details)
        totals = self.totals()
        lines.append(
            "soak: {seeds} seeds, {workflows} workflows, faults {faults}, restarts {restarts},"
            " {activity_steps} activity steps ({activities_run_more_than_once} ran more than"
            " once), lost {lost}, wrong {wrong}".format(**totals)
        )
        if self.failed:
            lines.append(f"failed seeds: {totals['failed_seeds']}")
            lines.append(
                "replay all: " + self.config.command(",".join(str(s.seed) for s in self.failed))
            )
        return "\n".join(lines)


async def soak(
    seeds: Iterable[int],
    config: SoakConfig,
    *,
    time_limit: float | None = None,
    progress: Callable[[SeedReport], None] | None = None,
) -> SoakReport:
    """Run ``seeds`` one after another (no new seed starts after ``time_limit`` s)."""
    report = SoakReport(config)
    began = time.monotonic()
    for seed in seeds:
        if time_limit is not None and report.seeds and time.monotonic() - began > time_limit:
            break
        outcome = await run_seed(seed, config)
        report.seeds.append(outcome)
        if progress is not None:
            progress(outcome)
    return report
