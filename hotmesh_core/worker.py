"""Workers: claim tasks under a lease, run workflows and activities, answer.

A worker is a few background tasks in the current process.  It coordinates
with other workers (in this process or any other) only through the backend: a
task is leased by one worker at a time, the lease is extended while the work
runs, and a task whose lease runs out (its worker died) is claimed again by
someone else — no control plane, no manual recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from attrs import define

from .activity import _current as activity_context
from .advance import Advance, Handoff
from .cache import DEFAULT_MAX_CACHED_WORKFLOWS, DEFAULT_STICKY_WAIT, Suspended, WorkflowCache
from .config import validate_name
from .engine import ARMED, Engine, LocalWorker, RunContext, Superseded
from .errors import BackendUnavailable, SerializationError, UnknownWorkflow
from .in_process import serve_eagerly
from .interceptors import (
    ActivityInfo,
    Interceptor,
    OutboundCall,
    WorkerEvent,
    WorkflowInfo,
    chain,
    check_headers,
    job_headers,
    notify,
)
from .models import MAIN_THREAD, TERMINAL_STATUSES, Backlog, ErrorInfo, Job, Step, Task, Thread
from .protocols import Backend
from .records import revise
from .replay import Command, Run, RunOutcome, error_info
from .retry import retry_delay
from .serde import ensure_json

__all__ = ["Worker", "registry"]

log = logging.getLogger("hotmesh.worker")

#: Seconds between two reads of the queue's backlog, and how long ready work
#: waits for a name this worker does not serve before it says so.
UNSERVED_CHECK = 10.0

#: Seconds by which the stored row of a sleep this worker arms in process comes
#: due after the sleep: the armed timer answers at the due time, and until the
#: grace is over no claim (this worker's or another's) races it for the row.
#: The row fires the sleep this much late only when the armed timer could not:
#: the worker crashed or stopped first.
ARMED_TIMER_GRACE = 1.0

#: Pauses (s) between attempts at a transition while the database is away:
#: short at first (a cut connection is usually back at once), then every
#: BACKEND_PAUSE_MAX, for one lease (at least BACKEND_PATIENCE_MIN) from the
#: first failure (Worker._while_backend_returns).
BACKEND_PAUSES = (0.1, 0.3, 1.0)
BACKEND_PAUSE_MAX = 3.0

#: The least patience (s) with a database that is away, whatever the lease.
BACKEND_PATIENCE_MIN = 5.0

#: Seconds a draining stop waits once the database is found away, for a
#: transition in hand to get through after all, before it abandons the tasks
#: in hand to their leases; and how often the drain looks.
STOP_PATIENCE = 1.0
STOP_CHECK = 0.25

Functions = Iterable[Callable[..., Any]] | Mapping[str, Callable[..., Any]]


def registry(functions: Functions | None, what: str) -> dict[str, Callable[..., Any]]:
    """Functions by name: their ``__name__``, or the key of a ``{name: fn}`` mapping."""
    if functions is None:
        return {}
    if isinstance(functions, Mapping):
        items = list(functions.items())
    else:
        items = [(getattr(fn, "__name__", ""), fn) for fn in functions]
    named: dict[str, Callable[..., Any]] = {}
    for name, fn in items:
        if not callable(fn):
            raise TypeError(f"{what} {name!r} is not callable")
        named[validate_name(name, f"{what} name")] = fn
    return named


class Worker:
    """Serves one task queue: the workflows (and hooks) and activities registered on it."""

    def __init__(
        self,
        backend: Backend,
        task_queue: str,
        *,
        workflows: Functions | None = None,
        activities: Functions | None = None,
        concurrency: int = 10,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        expire_interval: float = 60.0,
        max_task_attempts: int = 10,
        worker_id: str | None = None,
        max_cached_workflows: int = DEFAULT_MAX_CACHED_WORKFLOWS,
        sticky_wait: float = DEFAULT_STICKY_WAIT,
        interceptors: Iterable[Interceptor] = (),
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.backend = backend
        self.engine = Engine(backend)
        self.task_queue = task_queue
        self.workflows = registry(workflows, "workflow")
        self.activities = registry(activities, "activity")
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self.expire_interval = expire_interval
        self.max_task_attempts = max_task_attempts
        self.id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self._stable_id = worker_id is not None
        self._inflight: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._stopping = False
        # Loop time the database was first found away (a lost connection) by a
        # transition or a claim, None once one got through again: a draining
        # stop does not wait for what cannot finish without it.
        self._away_since: float | None = None
        self._claims = 0
        self._lost_claims: list[str] = []  # claim owners whose answer a cut connection lost
        self._reported: set[tuple[str, str]] = set()  # unserved names already logged
        self._cache = WorkflowCache(max_cached_workflows)
        # How long a run task that another worker keeps cached is left to it.
        self.sticky_wait = sticky_wait
        # An idle wait ends by the poll interval, and often enough that a run
        # left sticky to a worker that died is taken about when its
        # sticky_wait is over: it is visible already, so no due time (nor
        # NOTIFY) says when that is.
        self._idle_wait = poll_interval
        if sticky_wait > 0:
            self._idle_wait = min(poll_interval, max(sticky_wait / 2, 0.05))
        # Activities this worker serves are run by the worker that dispatches them.
        self._local = LocalWorker(self.id, lease, task_queue, frozenset(self.activities))
        self.interceptors = list(interceptors)  # hotmesh_core.interceptors
        # Sleeps this worker dispatched fire from an in-process timer at their
        # due time; the stored timer row is the fallback (a crash, a restart).
        # Not under a virtual clock, whose time is not the event loop's.
        self._armed: dict[str, asyncio.TimerHandle] = {}
        self._firing: dict[str, asyncio.Event] = {}  # armed timers firing now: answered
        self._waiting_firings: set[asyncio.Task[Any]] = set()  # for a slot (_slot_for_firing)
        # Eager starts (in_process.py): first runs a client of this process
        # leased to this worker, with the job as it was just created.
        self._eager_pending = 0  # handed owners whose start has not returned
        self._claiming = 0  # the slots a claim in flight may fill
        # Fairness: work handed over in process (eager starts, signalled runs)
        # takes a slot the moment it frees, before the claim loop wakes, so a
        # steady stream of it kept queued work (other processes' starts, due
        # timers, retries) waiting as long as the stream lasted. A claim loop
        # that has found no slot for ``_idle_wait`` gets the next one: until
        # it has claimed, handed-over work goes through the queue.
        self._no_slot_since: float | None = None  # loop time the claim loop first found none
        self._claim_first = False
        self._handing_back: set[asyncio.Future[None]] = set()
        self._fresh: dict[str, Job] = {}  # run task id: its job, no read needed
        # Signals handed over: run task id -> (the answered step's index, data).
        self._signalled: dict[str, tuple[int, Any]] = {}
        # Deferred first steps' activities, by the run task whose lease they run under.
        self._under_run_lease: dict[str, list[asyncio.Future[ActivityOutcome]]] = {}
        self._abandoned: set[str] = set()  # their run's lease was lost
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context = contextvars.copy_context()
        clock = getattr(backend, "clock", None)
        if not getattr(clock, "virtual", False):
            self.engine.timer_armed = self._arm_timer  # with its grace from start()

    def _event(self, kind: str, **details: Any) -> None:
        if self.interceptors:
            event = WorkerEvent(kind, self.task_queue, self.id, **details)
            notify(self.interceptors, event)

    async def start(self) -> Worker:
        """Start claiming (again, after :meth:`stop`: the same worker, its cache kept)."""
        self._stopping = False
        self._no_slot_since, self._claim_first = None, False  # owed to a loop now gone
        if self.engine.timer_armed is not None:
            self.engine.armed_grace = ARMED_TIMER_GRACE
        if self._stable_id:
            # The same id as before a crash or restart: what this worker held
            # then is its own, and nobody else holds it; take it back now.
            async with self.backend.transaction(single=True) as tx:
                released = await tx.stream.release_leases(self.task_queue, owner=self.id)
            if released:
                log.info("worker %s took back %d leased tasks", self.id, released)
        if self._cache.size > 0:
            async with self.backend.transaction(single=True) as tx:
                await tx.stream.worker_started(self.task_queue, self.id)
        self._loop_task = asyncio.create_task(self._claim_loop(), name=f"hotmesh:{self.id}")
        self._expiry_task = asyncio.create_task(self._expire_loop(), name=f"hotmesh:{self.id}:x")
        self._loop = asyncio.get_running_loop()
        # The context the worker's own tasks run in (as its claim loop's): an
        # eager start's run must not run in the context of whoever started it.
        self._context = contextvars.copy_context()
        serve_eagerly(self.backend, self, True)
        return self

    async def stop(self, *, drain: bool = True) -> None:
        """Stop claiming; with ``drain``, let the tasks in hand finish (else abandon them)."""
        self._stopping = True
        # Sleeps the runs still in hand dispatch now are not armed
        # (_arm_timer): their rows come due at the due time, for any worker.
        self.engine.armed_grace = 0.0
        serve_eagerly(self.backend, self, False)
        for armed in self._armed.values():
            armed.cancel()  # their rows fire them (ARMED_TIMER_GRACE late)
        self._armed.clear()
        for background in (self._loop_task, self._expiry_task):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        if drain:
            # With the drain, not after it: the runs its last commits wake are
            # any worker's at once, as it claims no more (stopped_workers covers
            # those made sticky after it). Not waited for with the database
            # away: they go after sticky_wait.
            unstick = asyncio.ensure_future(self._unstick())
            await self._drain()
            if self._away_since is not None:
                unstick.cancel()
            await asyncio.gather(unstick, return_exceptions=True)
        else:
            await self._abandon()

    async def _drain(self) -> None:
        """Let the tasks in hand finish, unless the database is away: once it
        has been for ``STOP_PATIENCE``, what cannot finish without it is
        abandoned as by ``drain=False`` (leases run out; every transition is
        safe to repeat). Waited for, a stop during an outage took 89 s: each
        commit in hand waited out the pool's timeout for a connection, one
        after another (adversarial finding)."""
        loop = asyncio.get_running_loop()
        while self._inflight:
            away = self._away_since
            if (
                away is not None
                and loop.time() - away >= STOP_PATIENCE
                and not (await self._answers())
            ):
                log.warning(
                    "stopping with the database away: %d task(s) in hand are left to their leases",
                    len(self._inflight),
                )
                await self._abandon()
                return
            await asyncio.wait(
                self._inflight, timeout=STOP_CHECK, return_when=asyncio.FIRST_COMPLETED
            )

    async def _answers(self) -> bool:
        """Whether the database answers now (a read): a transition that met the
        outage may be asleep between its tries after the database came back,
        and the drain must not abandon healthy work for it (adversarial
        finding: a 10 s activity abandoned on a database back for seconds)."""

        async def probe() -> None:
            async with self.backend.transaction(readonly=True) as tx:
                await tx.store.get_job(f"{self.id}-drain-probe")

        # At most STOP_PATIENCE: with the database away, a read waits for a
        # connection as long as the pool's timeout.
        probing = asyncio.ensure_future(probe())
        await asyncio.wait({probing}, timeout=STOP_PATIENCE)
        if not probing.done():
            probing.cancel()
            await asyncio.gather(probing, return_exceptions=True)
            return False
        if probing.cancelled() or probing.exception() is not None:
            return False
        self._away_since = None
        return True

    async def _abandon(self) -> None:
        """Like a process dying: nothing is acked; leases will expire."""
        for task in self._inflight:
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        # Handed runs cancelled before they began never reached their cleanup.
        self._fresh.clear()
        self._signalled.clear()

    async def _unstick(self) -> None:
        """A stopping worker's cached runs are gone with it: the run tasks that
        wait for it go to any worker at once (a crashed one's, after sticky_wait)."""
        if self._cache.size == 0:
            return
        try:
            async with self.backend.transaction(single=True) as tx:
                await tx.stream.worker_stopped(self.task_queue, self.id)
        except Exception as error:  # they still go after sticky_wait
            log.warning("handing on the sticky runs of %s: %s", self.id, error)

    async def _claim_loop(self) -> None:
        workflow_names = sorted(self.workflows)
        activity_names = sorted(self.activities)
        while not self._stopping:
            # Before the slots are counted: handing back awaits, and what this
            # process hands the worker meanwhile (eager starts, signalled runs,
            # armed firings) takes slots the count would still call free
            # (adversarial finding: a duplicate start's lost claim).
            if self._lost_claims and not await self._release_lost_claims():
                await asyncio.sleep(self.poll_interval)
                continue
            # Eager starts (eager_owner) take slots too: those handed out, and
            # not yet running, count; and while this claim is in flight, the
            # slots it may fill are reserved (self._claiming), or the two
            # together would exceed ``concurrency``.
            # Armed firings waiting for a slot (_slot_for_firing) count as
            # taking one, so that a claim does not take the slot they wait for;
            # not once the loop is owed one: they let it go first, and each
            # waiting on the other would hold both until the firing gave up.
            busy = len(self._inflight)
            if self._claim_first:
                busy -= len(self._waiting_firings)
            free = self.concurrency - busy - self._eager_pending
            if free <= 0:
                now = asyncio.get_running_loop().time()
                if self._no_slot_since is None:
                    self._no_slot_since = now
                elif now - self._no_slot_since >= self._idle_wait:
                    self._claim_first = True  # the next slot that frees is the claim's
                if self._inflight:
                    # Within the idle wait: a slot can free without any task of
                    # this snapshot ending (a run handed over after it, an eager
                    # start that created nothing), and while the loop is owed
                    # one, nothing else takes it (adversarial finding).
                    await asyncio.wait(
                        self._inflight, timeout=self._idle_wait, return_when=asyncio.FIRST_COMPLETED
                    )
                else:
                    # Eager starts not yet handed over: they are one round trip away.
                    await asyncio.sleep(min(self.poll_interval, 0.02))
                continue
            # Each claim leases under its own owner name, so a claim that committed
            # but whose rows were lost with the connection can be handed back at
            # once (release_leases) instead of sitting out a whole lease.
            self._claims += 1
            claim_owner = f"{self.id}#{self._claims}"
            # One slot stays out of a claim that could fill several, for what
            # this process hands the worker meanwhile (an eager start, a
            # signalled run, an armed sleep's firing): while the claim is in
            # flight, they would otherwise find it full and go through the
            # queue (each then a NOTIFY, a claim and a read more).
            free = free - 1 if free > 1 else free
            self._claiming = free  # reserved: handing over may go on (same turn)
            self._no_slot_since, self._claim_first = None, False
            try:
                async with self.backend.transaction(single=True) as tx:
                    tasks = await tx.stream.claim(
                        self.task_queue,
                        owner=claim_owner,
                        lease=self.lease,
                        workflow_names=workflow_names,
                        activity_names=activity_names,
                        limit=free,
                        sticky_wait=self.sticky_wait,
                    )
            except BackendUnavailable as error:
                self._claiming = 0
                self._found_away()
                log.warning("claim on queue %r: %s; retrying", self.task_queue, error)
                self._lost_claims.append(claim_owner)
                await asyncio.sleep(self.poll_interval)
                continue
            except Exception:
                self._claiming = 0
                log.exception("claim failed on queue %r; retrying", self.task_queue)
                self._lost_claims.append(claim_owner)
                await asyncio.sleep(self.poll_interval)
                continue
            except BaseException:
                self._claiming = 0
                raise
            self._claiming = 0
            self._away_since = None
            if not tasks:
                try:
                    await self.backend.wait_for_tasks([self.task_queue], self._idle_wait)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    # A wake-up is only a shortcut: losing one (its connection was
                    # cut) must never stop the loop; poll instead.
                    log.warning("waiting for tasks on %r: %s; polling", self.task_queue, error)
                    await asyncio.sleep(self.poll_interval)
                continue
            self._event("claimed", count=len(tasks))
            for task in tasks:
                handler = asyncio.create_task(self._handle(task))
                self._inflight.add(handler)
                handler.add_done_callback(self._inflight.discard)

    def _arm_timer(self, task: Task, delay: float) -> None:
        """Fire ``task`` (a sleep's timer this worker just committed) from this
        process after ``delay`` seconds of the event loop's clock, counted from
        when the run asked for it (``Engine._advance``): the code after the
        sleep runs when it asked. Whoever gets there first fires it (this
        process resuming its cached run, or anyone claiming the row), the other
        finds it done."""
        if not self._stopping:
            loop = asyncio.get_running_loop()
            self._armed[task.id] = loop.call_later(delay, self._fire_armed, task)

    def _fire_armed(self, task: Task) -> None:
        self._armed.pop(task.id, None)
        if self._stopping:
            return
        firing = asyncio.create_task(self._fire_own_timer(task))
        self._inflight.add(firing)
        firing.add_done_callback(self._inflight.discard)
        # Its row comes due meanwhile: this worker's own claim of it waits for
        # this firing's answer rather than race it (_handle_engine_task).
        self._firing[task.id] = asyncio.Event()
        firing.add_done_callback(lambda _: self._answered_armed(task))

    def _answered_armed(self, task: Task) -> None:
        answered = self._firing.pop(task.id, None)
        if answered is not None:
            answered.set()

    async def _fire_own_timer(self, task: Task) -> None:
        try:
            # Resuming the run here takes a slot like a claimed run (its chain
            # may run activities inline): only with one free (this firing
            # counts as one), else the row's answer wakes a run for the claim
            # loop, which respects ``concurrency`` (adversarial finding). Slots
            # are busy for moments (timers due together, eager starts): a
            # while is worth waiting for one, a trip through the queue is not.
            # Only for a run it can resume: one not cached (max_cached_workflows=0,
            # evicted) is woken through the queue, for any worker, at once.
            cached = self._cache.peek(task.job_id, task.dimension)
            resumable = cached is not None and task.index in cached.run.awaiting
            free = resumable and await self._slot_for_firing(ARMED_TIMER_GRACE / 2)
            suspended = self._cache.take(task.job_id, task.dimension) if free else None
            if suspended is not None and task.index in suspended.run.awaiting:
                await self._wake_in_process(suspended, task)
                return
            if suspended is not None:
                self._cache.put(suspended)
            await self.engine.fire_armed_timer(task)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # a shortcut only: the row fires it
            log.debug("armed timer %s is left to its row: %r", task.id, error)

    async def _slot_for_firing(self, patience: float) -> bool:
        """Wait up to ``patience`` seconds until this firing (one of the tasks
        in flight) fits within ``concurrency``; whether it does. Firings that
        wait take no slot from each other (or timers due together would wait
        on one another to the end), and the first to find one free takes it
        before the next looks (no await between the look and the leaving)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        me = asyncio.current_task()
        assert me is not None
        waiting = self._waiting_firings
        waiting.add(me)
        try:
            while True:
                working = [running for running in self._inflight if running not in waiting]
                if (
                    not self._claim_first
                    and len(working) + 1 + self._eager_pending + self._claiming <= self.concurrency
                ):
                    return True
                left = deadline - loop.time()
                if left <= 0 or self._stopping:
                    return False
                if len(working) >= self.concurrency:  # only a working task's end frees one
                    await asyncio.wait(working, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                else:
                    # Held back by starts handed out, a claim in flight or the
                    # loop owed a slot: none of them ends with a working task
                    # (a claim that finds nothing frees its slots): look again soon.
                    await asyncio.sleep(min(left, 0.005))
        finally:
            waiting.discard(me)

    async def _wake_in_process(self, suspended: Suspended, timer: Task) -> None:
        """Resume the cached run that a sleep's armed timer answers, here and now,
        and commit the timer's answer with what the run did next: one call, no
        wake-up through the queue, no claim, no read (as an inline activity's
        answer). The timer's row is the way forward until then: should this
        process die, or anyone fire the row first (its answer then finds the
        task gone: Superseded), the row's run takes over."""
        run, fn, args, name = suspended.run, suspended.fn, suspended.args, suspended.name

        async def fire_normally() -> None:
            await self._while_backend_returns(lambda: self._fire_armed_normally(timer))

        run, outcome, leased = await self._continue_answered(
            run, fn, args, name, [(timer, None, None)], fire_normally
        )
        self._answered_armed(timer)  # committed (or left to its row): the rest is the chain's
        if outcome is not None:
            await self._follow_chain(run, fn, args, name, outcome, leased)

    async def _fire_armed_normally(self, timer: Task) -> None:
        await self.engine.fire_armed_timer(timer)

    def eager_owner(self, queue: str, workflow_name: str) -> str | None:
        """A lease owner for a job's first run that a client of this process starts,
        if this worker serves it and has a slot free (in_process.EagerTaker)."""
        if queue != self.task_queue or workflow_name not in self.workflows:
            return None
        return self._handed_owner("e")

    def take_started(self, owner: str, job: Job | None, run: Task) -> None:
        """Run the first run of ``job``, leased to ``owner`` as it was created, as if
        claimed; None: nothing to run, and any lease a lost commit made goes back."""
        self._eager_pending -= 1
        if self._stopping:
            # Stopped while the start committed: run nothing (stop() has
            # returned), and hand the run back now, so that another worker
            # takes it at once instead of a lease later (adversarial finding).
            self._hand_back_soon(owner)
            return
        if job is None or run.lease_owner != owner:
            self._lost_claims.append(owner)
            return
        self._fresh[run.id] = job
        self._run_handed(run)

    def signal_owner(self) -> str | None:
        """A lease owner for the run a signal sent from this process wakes, if it
        is one this worker caches (in_process.EagerTaker): only with a cache,
        and a slot free."""
        return None if self._cache.size == 0 else self._handed_owner("s")

    def take_signalled(self, owner: str, handoff: Handoff | None, data: Any, lost: bool) -> None:
        """Resume the cached run a signal's delivery leased to ``owner``, with
        ``data`` as the answer of its wait (no claim, no read of the history)."""
        self._eager_pending -= 1
        if self._stopping and handoff is not None and handoff.run_id is not None:
            self._hand_back_soon(owner)  # stopped while the delivery committed
            return
        if handoff is None or handoff.run_id is None or handoff.job_id is None:
            if lost:
                self._lost_claims.append(owner)
            return
        run = Task(
            queue=handoff.queue,
            kind="run",
            job_id=handoff.job_id,
            dimension=handoff.dimension,
            name=handoff.name,
            id=handoff.run_id,
            attempts=1,
            lease_owner=owner,
            sticky=self.id,
        )
        self._signalled[run.id] = (handoff.index, data)
        self._run_handed(run)

    def _handed_owner(self, kind: str) -> str | None:
        """A lease owner of its own for a run handed over in this process (``kind``:
        e, an eager start; s, a signal), if a slot is free, counting what is handed
        out and what a claim in flight may fill; None when the worker is stopping,
        full, owes its claim loop the next slot, or in another event loop."""
        if (
            self._stopping
            or self._claim_first
            or self._loop is not asyncio.get_running_loop()
            or len(self._inflight) + self._eager_pending + self._claiming >= self.concurrency
        ):
            return None
        self._eager_pending += 1
        self._claims += 1
        return f"{self.id}#{kind}{self._claims}"

    def _run_handed(self, run: Task) -> None:
        """Run a handed-over run task as if claimed. Created in the worker's
        context, not the handing caller's (a web request's context variables,
        say): it runs as any claimed run does."""
        self._event("claimed", count=1)
        handler = self._context.run(asyncio.create_task, self._handle(run))
        self._inflight.add(handler)
        handler.add_done_callback(self._inflight.discard)

    def _hand_back_soon(self, owner: str) -> None:
        releasing = asyncio.ensure_future(self._hand_back(owner))
        self._handing_back.add(releasing)
        releasing.add_done_callback(self._handing_back.discard)

    async def _hand_back(self, owner: str) -> None:
        try:
            async with self.backend.transaction(single=True) as tx:
                await tx.stream.release_leases(self.task_queue, owner=owner, attempted=False)
        except Exception as error:  # its lease runs out instead
            log.warning("handing back the eager start of %s: %s", owner, error)

    def _next_local(self) -> LocalWorker:
        """This worker as the runner of the activities one commit leases to it, under
        an owner name of that commit's own (like a claim's), so that a commit whose
        answer was lost can have its leases handed back."""
        self._claims += 1
        return revise(self._local, owner=f"{self.id}#r{self._claims}")

    async def _release_lost_claims(self) -> bool:
        """Hand back what claims lost with their connection may have leased."""
        try:
            async with self.backend.transaction() as tx:
                for owner in self._lost_claims:
                    await tx.stream.release_leases(self.task_queue, owner=owner, attempted=False)
        except BackendUnavailable as error:
            log.info("handing back lost claims on %r: %s; later", self.task_queue, error)
            return False
        except Exception:
            log.exception("handing back lost claims on %r failed; later", self.task_queue)
            return False
        self._lost_claims.clear()
        return True

    async def _expire_loop(self) -> None:
        """Remove finished jobs past their ``expire`` (every worker helps; idempotent),
        and say so when work on this queue waits for names nobody serves."""
        # The backlog is read more often than maintenance runs (every
        # UNSERVED_CHECK s): a misspelt name should be said within seconds.
        waited = 0.0
        while not self._stopping:
            pause = min(UNSERVED_CHECK, self.expire_interval)
            await asyncio.sleep(pause)
            waited += pause
            if waited >= self.expire_interval:
                waited = 0.0
                try:
                    await self.backend.maintain()
                except BackendUnavailable as error:  # an outage: one line, not a traceback
                    log.warning("expiring finished jobs failed: %s", error)
                except Exception:
                    log.exception("expiring finished jobs failed")
            try:
                await self.report_unserved()
            except BackendUnavailable as error:
                log.warning("reading the backlog of queue %r failed: %s", self.task_queue, error)
            except Exception:
                log.exception("reading the backlog of queue %r failed", self.task_queue)

    async def report_unserved(self, older_than: float = UNSERVED_CHECK) -> list[Backlog]:
        """Log (WARNING, once per name while it lasts) the ready tasks of this queue
        that have waited ``older_than`` seconds for a workflow or activity this
        worker does not serve: an unknown or misspelt name, or a worker that is
        not running, would otherwise leave jobs waiting in silence."""
        async with self.backend.transaction(readonly=True) as tx:
            backlog = await tx.stream.backlog(self.task_queue)
        now = self.backend.now()
        depth = sum(entry.count for entry in backlog)
        self._event("backlog", count=depth, backlog=backlog, now=now)
        served = {"run": self.workflows, "activity": self.activities}
        unserved = [
            entry
            for entry in backlog
            if entry.name not in served.get(entry.kind, {}) and now - entry.oldest >= older_than
        ]
        current = {(entry.kind, entry.name) for entry in unserved}
        for entry in unserved:
            if (entry.kind, entry.name) in self._reported:
                continue
            what = "workflow" if entry.kind == "run" else "activity"
            log.warning(
                "queue %r: %d task(s) have waited %.0f s for %s %r, which this worker (%s)"
                " does not serve (workflows: %s; activities: %s); is a worker for it running,"
                " or is the name misspelt?",
                self.task_queue,
                entry.count,
                now - entry.oldest,
                what,
                entry.name,
                self.id,
                ", ".join(sorted(self.workflows)) or "none",
                ", ".join(sorted(self.activities)) or "none",
            )
        self._reported = current
        return unserved

    async def _handle(self, task: Task) -> None:
        # Activities keep their own lease alive while they run (_activity_outcome).
        heartbeat = None
        if task.kind != "activity":
            heartbeat = self._keep_lease(task, self._lost_callback(task))
        try:
            if task.kind == "activity":
                await self._run_activity(task)
            else:
                await self._while_backend_returns(lambda: self._handle_engine_task(task))
        except asyncio.CancelledError:
            raise
        except Superseded as exc:
            # Another run of the thread got there first: run again, on what it left.
            log.debug("run %s gives way: %s", task.id, exc)
            await self._release(task)
        except BackendUnavailable as exc:
            log.warning("task %s is left to its lease: %s", task.id, exc)
        except Exception as exc:
            log.exception("task %s (%s %s) failed in the engine", task.id, task.kind, task.name)
            self._event("failed", name=task.name, task_kind=task.kind)
            if task.attempts >= self.max_task_attempts:
                # A poison task: keep it for inspection instead of retrying forever.
                try:
                    await self.engine.dead_letter(task, error_info(exc))
                    self._event("dead_letter", name=task.name, task_kind=task.kind)
                except Exception:
                    log.exception("could not dead-letter task %s", task.id)
            # Otherwise its lease will expire and another attempt will be made.
        finally:
            self._fresh.pop(task.id, None)
            self._signalled.pop(task.id, None)
            if heartbeat is not None:
                heartbeat.cancel()

    async def _handle_engine_task(self, task: Task) -> None:
        if task.kind == "run":
            await self._run_workflow(task)
        elif task.kind == "timer":
            firing = self._firing.get(task.id)
            if firing is not None:
                # This worker is firing it in process: let that answer it (the
                # row then finds it answered), instead of a race it may lose.
                await firing.wait()
            wake_worker = task.payload.get("wake_worker")
            if task.payload.get(ARMED) and wake_worker not in (None, self.id):
                # Its worker armed it and, the grace over, has not fired it: it
                # crashed (or stalled), and the run it wakes is nobody's to wait
                # for (sticky_wait more), but any worker's now.
                payload = {k: v for k, v in task.payload.items() if k != "wake_worker"}
                task = revise(task, payload=payload)
            await self.engine.fire_timer(task)
        else:
            log.error("unknown task kind %r; dropping task %s", task.kind, task.id)
            await self.engine.drop_task(task)

    async def _while_backend_returns(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """Run ``attempt``; if the database went away (a restart?), run it again
        once it is back. This worker still holds the task's lease, so nobody
        else will, and every engine transition is safe to repeat.

        Patient for one lease (at least ``BACKEND_PATIENCE_MIN``) from the first
        failure: given up sooner, a run waits out its whole lease after an
        outage shorter than it, and an activity that ran is run again (a 4.4 s
        patience left a hook of the faults suite to its 30 s lease). Past one
        lease another worker may hold the task, and it is left to that one.
        """
        loop = asyncio.get_running_loop()
        give_up_at: float | None = None
        tries = 0
        while True:
            try:
                await attempt()
            except BackendUnavailable as error:
                now = loop.time()
                self._found_away()
                if give_up_at is None:
                    give_up_at = now + max(self.lease, BACKEND_PATIENCE_MIN)
                pause = BACKEND_PAUSES[tries] if tries < len(BACKEND_PAUSES) else BACKEND_PAUSE_MAX
                tries += 1
                if self._stopping or now + pause > give_up_at:
                    raise
                log.info("%s; trying again in %.1f s", error, pause)
                await asyncio.sleep(pause)
            else:
                self._away_since = None
                return

    def _found_away(self) -> None:
        if self._away_since is None:
            self._away_since = asyncio.get_running_loop().time()

    def _lost_with_connection(self, owner: str) -> None:
        """A commit under ``owner`` met a lost connection: it may have happened
        and leased tasks to ``owner``, to be handed back once the database is."""
        self._lost_claims.append(owner)
        self._found_away()

    async def _release(self, task: Task) -> None:
        """Make a task this worker holds visible again now; if the database is
        away, once it is back (a lost connection seldom comes alone: a run given
        up for one, whose hand-back met the next, waited out its whole lease).
        Only while this worker holds it, so a repeat after a commit whose answer
        was lost moves nothing; at the end of patience, its lease runs out."""

        async def release() -> None:
            async with self.backend.transaction() as tx:
                await tx.stream.retry(task.id, delay=0.0, owner=task.lease_owner)

        try:
            await self._while_backend_returns(release)
        except Exception as exc:
            log.warning("task %s is left to its lease: %s", task.id, exc)

    def _lost_callback(self, task: Task) -> Callable[[], None]:
        """What a run task's lost lease stops: the activities of a deferred first
        step running under it (``_run_deferred`` registers them)."""

        def lost() -> None:
            running = self._under_run_lease.pop(task.id, None)
            if running is not None:
                self._abandoned.add(task.id)
                for activity in running:
                    activity.cancel()

        return lost

    def _keep_lease(self, task: Task, lost: Callable[[], None] | None = None) -> _LeaseKeeper:
        """Keep ``task``'s lease from a third of it on (:meth:`_heartbeat`), until
        the keeper is cancelled."""
        return _LeaseKeeper(self.lease / 3, lambda: self._heartbeat(task, lost))

    async def _heartbeat(self, task: Task, lost: Callable[[], None] | None = None) -> None:
        """Keep ``task``'s lease, extending it now and every third of it; once it
        is lost (the task was interrupted, or the lease ran out and someone
        else has it) call ``lost`` and stop."""
        owner = task.lease_owner or self.id
        while True:
            try:
                async with self.backend.transaction(single=True) as tx:
                    kept = await tx.stream.extend_lease(task.id, owner=owner, lease=self.lease)
            except BackendUnavailable as error:  # an outage: one line, not a traceback a task
                log.warning("could not extend the lease of task %s: %s", task.id, error)
            except Exception:
                log.exception("could not extend the lease of task %s", task.id)
            else:
                if not kept:
                    self._event("lease_lost", name=task.name, task_kind=task.kind)
                    if lost is not None:
                        lost()
                    return
            await asyncio.sleep(self.lease / 3)

    async def _run_workflow(self, task: Task) -> None:
        # A run of this thread we hold suspended needs only the answers it waits
        # for; anything else (a miss, a run advanced elsewhere) replays history.
        cached = self._cache.take(task.job_id, task.dimension)
        fresh = self._fresh.pop(task.id, None)  # an eager start's job: nothing to read
        signalled = self._signalled.pop(task.id, None)  # a signal handed over, its answer
        if fresh is not None and cached is None:
            context: RunContext | None = RunContext(fresh, None, [])
        elif signalled is not None and cached is not None and signalled[0] in cached.run.awaiting:
            # What this run waits for and the delivery answered: the one step it
            # needs (others answered meanwhile queued a run of their own).
            index, data = signalled
            step = cached.run.step_at(index)
            answered = revise(step, status="done", result=data, error=None, activation=None)
            # As this run left them (its commits moved the activation): should
            # another run have moved it since, the commit's compare-and-set fails.
            held = cached.run
            if held.thread is None:
                context = RunContext(revise(held.job, activation=held.activation), None, [answered])
            else:
                held_thread = revise(held.thread, activation=held.activation)
                context = RunContext(held.job, held_thread, [answered])
        else:
            context = await self.engine.load_run(
                task, None if cached is None else cached.run.undelivered
            )
        if context is None:
            await self.engine.drop_task(task)
            return
        job, thread = context.job, context.thread
        finished = job.status in TERMINAL_STATUSES
        if (
            (task.dimension == MAIN_THREAD and finished)
            or job.status == "interrupted"
            or (thread is not None and thread.status != "running")
        ):
            await self.engine.drop_task(task)
            return
        name = thread.workflow_name if thread is not None else job.workflow_name
        fn = self.workflows.get(name)
        if fn is None:
            # Claim filters by name, so this is a race with a re-registration:
            # hand the task back for a worker that has the function.
            log.warning("%s", UnknownWorkflow(f"workflow {name!r} is not registered here"))
            async with self.backend.transaction() as tx:
                await tx.stream.retry(task.id, delay=self.poll_interval)
            return
        args = list(thread.args if thread is not None else job.args)
        stored_activation = (thread or job).activation
        if (
            cached is not None
            and cached.fn is fn
            and cached.run.activation == stored_activation
            # continue_as_new resets the activation: a run of an ended
            # generation must not be resumed as the new one.
            and (thread is not None or cached.run.job.generation == job.generation)
            # Nor a run of an earlier job of the id (interrupted, expired, its
            # id started again): its activation and generation may match, but
            # it waits for steps the new job never asked for (it was stuck).
            and cached.run.job.created_at == job.created_at
        ):
            run = cached.run
            run.job, run.thread = job, thread
            run.execute_inline = self.engine.execute_inline
            outcome = await self._execute(run, fn, args, name, resume=context.history)
        else:
            if cached is not None:  # advanced by another worker, or the code was reloaded
                self._cache.stale += 1
                context = await self.engine.load_run(task)
                if context is None:
                    await self.engine.drop_task(task)
                    return
            run = self._new_run(
                context.job, context.thread, context.history, self.engine.execute_inline
            )
            outcome = await self._execute(run, fn, args, name)
        local = self._next_local()
        # A job's first run: its inline activities run before anything commits.
        first = self.engine.deferrable(run, outcome, local) if self._cache.size > 0 else None
        if first is not None:
            await self._run_deferred(task, run, fn, args, name, outcome, first, local)
            return
        leased = await self._finish_run(task, run, outcome, local)
        await self._follow_chain(run, fn, args, name, outcome, leased)

    async def _finish_run(
        self, task: Task, run: Run, outcome: RunOutcome, local: LocalWorker
    ) -> list[Task]:
        """Commit ``outcome`` the ordinary way (Engine.finish_run)."""
        try:
            return await self.engine.finish_run(task, run, outcome, local)
        except BackendUnavailable:
            # The commit may have happened and leased activities to ``local``
            # with nobody left to run them: hand them back, not a lease later.
            self._lost_with_connection(local.owner)
            raise

    async def _run_deferred(
        self,
        task: Task,
        run: Run,
        fn: Callable[..., Any],
        args: list[Any],
        name: str,
        outcome: RunOutcome,
        first: Advance,
        local: LocalWorker,
    ) -> None:
        """Run the inline activities of a first run (``first``, not committed), then
        resume the run with them and commit it all in one call: a job's start,
        first step and next dispatch. The run task's lease (kept by ``_handle``)
        is the way forward meanwhile. While the resumed run goes on with inline
        activities alone, each step commits its results and their delivery
        with the run task still leased (Engine.hold_deferred), and the next
        activities run under that lease too: no task row for any of them.
        An activity to be retried commits the run the ordinary way with its
        failed attempt; anything else going wrong hands the run task back, to
        run again from what is stored."""
        while True:
            steps = await self._deferred_step(task, run, fn, args, name, outcome, first, local)
            if steps is None:
                return  # abandoned, or a retry went the ordinary way
            following = await self._resume_deferred(task, run, fn, args, name, first, steps, local)
            if following is None:
                return  # committed the ordinary way (or handed back)
            first, outcome = following

    async def _resume_deferred(
        self,
        task: Task,
        run: Run,
        fn: Callable[..., Any],
        args: list[Any],
        name: str,
        first: Advance,
        steps: list[Step],
        local: LocalWorker,
    ) -> tuple[Advance, RunOutcome] | None:
        """Resume ``run`` with a deferred step's ``steps`` and commit: held (the
        next step deferred too: its plan and the outcome that asked for it), or
        the ordinary way and on down the chain (None), or handed back (None)."""
        recorded = False

        async def record_then_execute(resumed: Run, command: Command) -> Any:
            # A durable side effect may depend on the results: record them first.
            nonlocal recorded
            if not recorded:
                await self.engine.record_deferred(resumed, first, steps, self._local)
                recorded = True
            return await self.engine.execute_inline(resumed, command)

        run.execute_inline = record_then_execute
        following: Advance | None = None
        try:
            resumed = await self._execute(run, fn, args, name, steps)
            if recorded:
                leased = await self.engine.continue_inline(run, [], resumed, local, task)
            else:
                following = await self.engine.hold_deferred(run, first, steps, resumed, local)
                if following is None:
                    leased = await self.engine.continue_deferred(
                        task, run, first, steps, resumed, local
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, BackendUnavailable):
                self._lost_with_connection(local.owner)  # see _run_workflow
            if not isinstance(exc, (Superseded, BackendUnavailable)):
                log.exception("running %r's step inline failed; it runs again", run.job.id)
            elif not recorded:
                await self._keep_deferred(run, first, steps)
            await self._release(task)
            return None
        finally:
            run.execute_inline = self.engine.execute_inline
        if following is not None:
            return following, resumed
        await self._follow_chain(run, fn, args, name, resumed, leased)
        return None

    async def _deferred_step(
        self,
        task: Task,
        run: Run,
        fn: Callable[..., Any],
        args: list[Any],
        name: str,
        outcome: RunOutcome,
        first: Advance,
        local: LocalWorker,
    ) -> list[Step] | None:
        """Run ``first``'s activities under the run task's lease: the steps they
        took (not committed). None when the lease was lost (an interrupt, or a
        lapse and another worker has the run), or when one is to be retried:
        ``outcome`` is then committed the ordinary way with the failed
        attempts, and the chain goes on from there."""
        tasks = [
            revise(d.task, attempts=1, lease_owner=task.lease_owner)
            for d in first.dispatches
            if d.task is not None
        ]
        # The run task's lease is theirs: lost, they are abandoned, as an activity is.
        running: list[asyncio.Future[ActivityOutcome]] = [
            asyncio.ensure_future(self._activity_outcome(t, keep_lease=False)) for t in tasks
        ]
        self._under_run_lease[task.id] = running
        try:
            outcomes = await asyncio.gather(*running)
        except asyncio.CancelledError:
            if task.id in self._abandoned:
                log.warning("a step of %r lost its run's lease; abandoned", run.job.id)
                return None
            raise
        finally:
            self._under_run_lease.pop(task.id, None)
            self._abandoned.discard(task.id)
        if any(o.retry_in is not None for o in outcomes):
            leased: list[Task] = []

            async def commit() -> None:
                nonlocal leased  # repeated once the database is back, not the activities
                leased = await self._finish_run(task, run, outcome, local)

            await self._while_backend_returns(commit)
            by_index = {t.index: t for t in leased}
            await self._while_backend_returns(
                lambda: self._answer_normally(
                    [
                        revise(o, task=by_index[o.task.index])
                        for o in outcomes
                        if o.task.index in by_index
                    ]
                )
            )
            await self._follow_chain(run, fn, args, name, outcome, [])
            return None
        steps: list[Step] = []
        for o in outcomes:
            assert o.task.index is not None
            steps.append(
                revise(
                    run.step_at(o.task.index),
                    status="done" if o.error is None else "failed",
                    result=o.result,
                    error=o.error,
                    attempts=1,
                    activation=None,
                )
            )
        return steps

    async def _keep_deferred(self, run: Run, first: Advance, steps: list[Step]) -> None:
        """A deferred first step whose commit was lost (the connection) or refused
        (a cancel request came meanwhile): its activities ran, so their steps are
        recorded on their own, to be delivered by the run that follows; never
        run again, as on every other path. Superseded: they are recorded
        already (the lost commit happened, or a racing run), or the job was
        interrupted; still no database: the run runs again, activities too."""
        try:
            await self._while_backend_returns(
                lambda: self.engine.record_deferred(run, first, steps, self._local)
            )
        except Superseded:
            pass
        except BackendUnavailable as error:
            log.warning("the first step of %r is left to its run's lease: %s", run.job.id, error)

    async def _follow_chain(
        self,
        run: Run,
        fn: Callable[..., Any],
        args: list[Any],
        name: str,
        outcome: RunOutcome,
        leased: list[Task],
    ) -> None:
        """After a committed ``outcome``: run the activities it leased to this
        worker inline, step after step, then keep the suspended run cached."""
        while leased:
            run, next_outcome, leased = await self._continue_inline(run, fn, args, name, leased)
            if next_outcome is None:
                return  # the chain broke off: this run is no longer what is stored
            outcome = next_outcome
        if outcome.status == "suspended":
            self._cache.put(Suspended(run, fn, args, name))

    def _new_run(
        self,
        job: Job,
        thread: Thread | None,
        history: list[Step],
        execute_inline: Callable[[Run, Command], Awaitable[Any]],
    ) -> Run:
        run = Run(
            job=job,
            thread=thread,
            history=history,
            now=self.backend.now(),
            execute_inline=execute_inline,
            clock=self.backend.now,
        )
        if self._cache.size > 0:
            run.worker_id = self.id  # its answers should wake this worker
        return run

    async def _execute(
        self,
        run: Run,
        fn: Callable[..., Any],
        args: list[Any],
        name: str,
        resume: list[Step] | None = None,
    ) -> RunOutcome:
        """Run ``fn`` from the top, or (``resume``) continue the suspended ``run``
        with those steps."""
        if self.interceptors:
            outcome = await self._intercepted(run, fn, args, resume)
        elif resume is None:
            outcome = await run.execute(fn, args)
        else:
            outcome = await run.resume(resume, self.backend.now())
        if outcome.status == "completed":
            try:
                outcome.result = ensure_json(outcome.result, what=f"the result of {name!r}")
            except SerializationError as exc:
                outcome.status, outcome.result, outcome.error = "failed", None, error_info(exc)
        return outcome

    async def _intercepted(
        self, run: Run, fn: Callable[..., Any], args: list[Any], resume: list[Step] | None
    ) -> RunOutcome:
        """``_execute`` through the interceptors: the run, and each of its durable calls."""
        info = run.info
        if not isinstance(info, WorkflowInfo):
            info = run.info = WorkflowInfo(
                run.job.id,
                run.workflow_name,
                run.dimension,
                run.task_queue,
                job_headers(run.job.search),
            )
        info.replaying = resume is None and bool(run.history)
        info.resumed = resume is not None
        run.outbound = self._outbound

        async def proceed() -> RunOutcome:
            if resume is None:
                return await run.execute(fn, args)
            return await run.resume(resume, self.backend.now())

        outcome: RunOutcome = await chain(self.interceptors, "execute_workflow", info, proceed)
        return outcome

    async def _outbound(
        self,
        run: Run,
        index: int,
        recorded: Step | None,
        kind: str,
        name: str,
        args: Any,
        options: dict[str, Any],
    ) -> Any:
        info = run.info
        assert isinstance(info, WorkflowInfo)
        call = OutboundCall(
            kind, name, args, index, recorded is not None, info, dict(info.headers), options
        )

        def proceed() -> Awaitable[Any]:
            issued = options
            if not call.replaying and call.headers != info.headers:
                where = f"{kind} {name!r} of {info.workflow_id!r}"
                issued = {**options, "headers": check_headers(call.headers, where)}
            return run.issue(index, recorded, kind, name, args, issued)

        return await chain(self.interceptors, "workflow_call", call, proceed)

    async def _continue_inline(
        self, run: Run, fn: Callable[..., Any], args: list[Any], name: str, leased: list[Task]
    ) -> tuple[Run, RunOutcome | None, list[Task]]:
        """Run the activities this worker leased to itself, then resume the workflow
        with their results and commit both together: one commit per step on the hot
        path, at a cost that does not grow with the history.

        The job's way forward is always a lease this worker holds: first the
        activity tasks', then (once their answers are recorded, before a side
        effect of the resumed run) a run task's. Should anything go wrong here,
        the answers go the ordinary way, or that run task is handed back, and the
        chain of inline steps ends (None: ``run`` is no longer what is stored);
        nothing is lost. With ``max_cached_workflows=0`` the workflow is replayed
        from the top instead of resumed, as on every other path.
        """
        outcomes = await asyncio.gather(*(self._activity_outcome(task) for task in leased))
        if any(outcome.retry_in is not None for outcome in outcomes):
            await self._while_backend_returns(lambda: self._answer_normally(outcomes))
            return run, None, []
        answers = [(o.task, o.result, o.error) for o in outcomes]

        async def answer_normally() -> None:
            try:
                await self._while_backend_returns(lambda: self._answer_normally(outcomes))
            except BackendUnavailable:
                # Still no database: hand the activities back (their lease
                # owner is this chain's, nothing else holds it) rather than
                # leave them to sit out a whole lease.
                self._lost_claims.extend(
                    {o.task.lease_owner for o in outcomes if o.task.lease_owner}
                )
                raise

        return await self._continue_answered(run, fn, args, name, answers, answer_normally)

    async def _continue_answered(
        self,
        run: Run,
        fn: Callable[..., Any],
        args: list[Any],
        name: str,
        answers: list[tuple[Task, Any, ErrorInfo | None]],
        answer_normally: Callable[[], Awaitable[None]],
    ) -> tuple[Run, RunOutcome | None, list[Task]]:
        """Resume ``run`` with ``answers`` (inline activities', or an armed timer's)
        and commit them with what it did next (see :meth:`_continue_inline`);
        ``answer_normally`` is the ordinary way, should that fail first."""
        answered: list[Step] = []
        for task, result, error in answers:
            assert task.index is not None
            step = run.step_at(task.index)
            answered.append(
                revise(
                    step,
                    status="done" if error is None else "failed",
                    result=result,
                    error=error,
                    attempts=task.attempts if task.kind == "activity" else step.attempts,
                    activation=None,
                )
            )
        run_task: Task | None = None
        heartbeat: _LeaseKeeper | None = None
        local = self._next_local()

        async def record_then_execute(resumed: Run, command: Command) -> Any:
            # A durable side effect may depend on the answers: record them first.
            nonlocal run_task, heartbeat
            if run_task is None:
                run_task = await self.engine.record_answers(resumed, answers, local)
                heartbeat = self._keep_lease(run_task)
            return await self.engine.execute_inline(resumed, command)

        replaying = self._cache.size == 0
        if replaying:
            history = {step.index: step for step in run.known_history()}
            history.update({step.index: step for step in answered})
            run = self._new_run(run.job, run.thread, list(history.values()), record_then_execute)
        else:
            run.execute_inline = record_then_execute
        try:
            outcome = await self._execute(run, fn, args, name, None if replaying else answered)
            leased_next = await self.engine.continue_inline(
                run, [] if run_task is not None else answers, outcome, local, run_task
            )
            return run, outcome, leased_next
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, BackendUnavailable):
                self._lost_with_connection(local.owner)  # see _run_workflow
            if not isinstance(exc, (Superseded, BackendUnavailable)):
                log.exception("continuing %r inline failed; it goes the ordinary way", run.job.id)
            if run_task is None:
                await answer_normally()
            else:
                await self._release(run_task)
            return run, None, []
        finally:
            run.execute_inline = self.engine.execute_inline
            if heartbeat is not None:
                heartbeat.cancel()

    async def _answer_normally(self, outcomes: list[ActivityOutcome]) -> None:
        for outcome in outcomes:
            if outcome.error is None:
                await self.engine.complete_activity(outcome.task, outcome.result)
            else:
                await self.engine.fail_activity(outcome.task, outcome.error, outcome.retry_in)

    async def _run_activity(self, task: Task) -> None:
        if task.name not in self.activities:
            async with self.backend.transaction() as tx:
                await tx.stream.retry(task.id, delay=self.poll_interval)
            return
        outcome = await self._activity_outcome(task)
        # Only the recording is repeated: the activity ran, its outcome is kept.
        await self._while_backend_returns(lambda: self._answer_normally([outcome]))

    async def _activity_outcome(self, task: Task, keep_lease: bool = True) -> ActivityOutcome:
        """Execute an activity (keeping its lease alive; ``keep_lease=False``: it has
        no task yet, its run's lease is kept instead); what happened, not yet recorded."""
        fn = self.activities[task.name]
        payload = task.payload
        running = asyncio.current_task()

        def lease_lost() -> None:
            # Interrupted (its task was removed) or taken over after a lapse:
            # its outcome can no longer count, so stop waiting for it.
            log.warning("activity %s of %r lost its lease; abandoning it", task.name, task.job_id)
            if running is not None:
                running.cancel()

        heartbeat = self._keep_lease(task, lease_lost) if keep_lease else None
        info = ActivityInfo(
            task.job_id,
            str(payload.get("workflow_name", "")),
            task.dimension,
            task.name,
            task.attempts,
            task.queue,
            dict(payload.get("headers") or {}),
            task.index,
            task.id,
        )
        current = activity_context.set(info)
        try:
            arguments = payload.get("args", [])
            result = await _within(
                lambda: chain(
                    self.interceptors, "execute_activity", info, lambda: _invoke(fn, arguments)
                ),
                payload.get("start_to_close") or None,
            )
            return ActivityOutcome(
                task, ensure_json(result, what=f"the result of activity {task.name!r}")
            )
        except asyncio.CancelledError:
            raise
        except Exception as raised:
            exc = raised.error if isinstance(raised, _Escaped) else raised
            error = error_info(exc)
            if isinstance(exc, asyncio.TimeoutError):
                error = ErrorInfo(
                    "TimeoutError",
                    f"activity {task.name!r} exceeded "
                    f"start_to_close of {payload.get('start_to_close')} s",
                    error.traceback,
                )
            delay = (
                None
                if isinstance(exc, SerializationError)
                else retry_delay(payload["retry"], task.attempts, error.type_name)
            )
            self._event("failed", name=task.name, task_kind=task.kind)
            if delay is None:
                log.error(
                    "activity %s of %r failed on attempt %d, no retry left: %s: %s",
                    task.name, task.job_id, task.attempts, error.type_name, error.message,
                )  # fmt: skip
            else:
                log.warning(
                    "activity %s of %r failed on attempt %d, retrying in %.1f s: %s: %s",
                    task.name, task.job_id, task.attempts, delay, error.type_name, error.message,
                )  # fmt: skip
            return ActivityOutcome(task, None, error, delay)
        finally:
            activity_context.reset(current)
            if heartbeat is not None:
                heartbeat.cancel()


class _LeaseKeeper:
    """A heartbeat that starts ``delay`` seconds from now, unless cancelled first.

    Most tasks end well within a third of their lease: a timer until then,
    not a task that sleeps (W1 on the memory backend made one a workflow,
    and one an activity, for nothing).
    """

    __slots__ = ("_beating", "_timer")

    def __init__(self, delay: float, beat: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._beating: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(delay, self._start, beat)

    def _start(self, beat: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._beating = asyncio.get_running_loop().create_task(beat())

    def cancel(self) -> None:
        self._timer.cancel()
        if self._beating is not None:
            self._beating.cancel()


@define
class ActivityOutcome:
    task: Task
    result: Any = None
    error: ErrorInfo | None = None
    retry_in: float | None = None  # set when the activity will be tried again later


class _Escaped(Exception):
    """Carries a SystemExit or KeyboardInterrupt out of an activity as an ordinary
    error: raised bare inside an asyncio task, asyncio would re-raise it out of
    the event loop and end the worker process (on every retry, forever). It
    carries an activity's own CancelledError the same way (an outcome, not a
    cancel of the attempt)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


async def _within(start: Callable[[], Awaitable[Any]], seconds: float | None) -> Any:
    """The result of the attempt ``start()`` makes, run in a task of its own and
    given up after ``seconds`` (``asyncio.TimeoutError``) or when the caller
    is cancelled.

    Its own task: what the activity sets in contextvars stays its own (in
    the caller's task it leaked into the worker's code after it: its events,
    logs and commits), and a cancel of the caller (a lost lease, a worker
    stopping) is the caller's whatever the activity makes of it: one that
    catches the CancelledError and returns is abandoned all the same, its
    result never recorded, and so is one that outlives its ``start_to_close``
    that way. ``asyncio.wait`` never swallows a cancel (3.12's ``wait_for``
    awaits in the caller's task; 3.10's and 3.11's lose a cancel that meets
    the result, gh-86296). A given-up attempt is waited for (:func:`_stop`),
    as ``wait_for`` does: its cleanup runs before the worker moves on, and a
    worker's ``concurrency`` bounds the activity code running, stubborn
    attempts included.
    """
    attempt = asyncio.ensure_future(_guarded(start))
    try:
        await asyncio.wait((attempt,), timeout=seconds)
    except asyncio.CancelledError:
        await _stop(attempt)
        raise
    if not attempt.done():
        await _stop(attempt)
        raise asyncio.TimeoutError()
    try:
        return attempt.result()
    except asyncio.CancelledError as own:
        # Nobody here cancelled it: its own code did (a cancelled request it
        # awaited, current_task().cancel()). An outcome, retried by its
        # policy; raised on, the attempt would run again at every lease,
        # forever, with nothing recorded.
        raise _Escaped(own) from None


async def _guarded(start: Callable[[], Awaitable[Any]]) -> Any:
    """The attempt, interceptors included: a ``SystemExit`` or
    ``KeyboardInterrupt`` from any of it fails the attempt (see :class:`_Escaped`)."""
    try:
        return await start()
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _Escaped(exc) from None


async def _stop(attempt: asyncio.Future[Any]) -> None:
    """Cancel a given-up attempt and wait for it to end, whatever it ends with
    (nobody's: retrieved, so asyncio does not log it). A further cancel of
    the caller stops the waiting."""
    attempt.cancel()
    attempt.add_done_callback(_retrieved)
    await asyncio.wait((attempt,))


def _retrieved(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()


async def _invoke(fn: Callable[..., Any], args: list[Any]) -> Any:
    if asyncio.iscoroutinefunction(fn):
        return await fn(*args)
    result = await _in_own_thread(fn, args)
    if asyncio.iscoroutine(result):
        result = await result
    return result


def _in_own_thread(fn: Callable[..., Any], args: list[Any]) -> asyncio.Future[Any]:
    """Run a sync activity in a thread of its own (a daemon).

    Not in the loop's shared pool: a sync activity that never returns would
    keep a pool thread past its ``start_to_close``, and once the pool is full
    every later sync activity would "time out" without having started. A hung
    thread here costs only itself.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def target() -> None:
        try:
            result = context.run(fn, *args)
        except BaseException as exc:  # handed to the awaiting coroutine, whatever it is
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=target, name=f"hotmesh-activity-{fn.__name__}", daemon=True).start()
    return future
