"""Random workflow *shapes* for the replay property tests, and what must hold of them.

A shape is data (JSON): a body is a list of nodes, and a node is one of

* ``act``    an activity ``echo(id, ms)``: it sleeps ``ms`` and returns ``answer(id)``;
* ``inc``    ``entity.increment("n")``;        ``app``  ``entity.append("log", id)``;
* ``sleep``  ``workflow.sleep_for(ms)``;
* ``wait``   ``workflow.wait_for(signal)``: the test sends the signal from outside at a
  random moment (``by="outside"``) or a hook started just before sends it (``by="hook"``);
* ``now``, ``random``  the recorded values;
* ``gather`` ``asyncio.gather`` of 2-4 branches, each a body (gathers nest);
* ``child``  ``workflow.exec_child`` of a job that interprets its own body;
* ``hook``   ``workflow.exec_hook`` of a hook that interprets its body against the
  same entity and signals its result back.

One interpreter (:func:`interpret`) executes any shape and returns each node's
value where the code put it (a body gives a list, a gather a list of lists), so
an answer handed to the wrong call is visible.  :func:`expected_result` is the
same evaluation in plain Python.  :func:`run_scenario` runs a shape on a fresh
app (memory backend by default) with 1-3 workers (in ``remote`` mode, as many
more for the activities), random activity delays (answers arrive in random
orders), outside signals at random moments and workers crashing
(``stop(drain=False)``) at random moments or once they hold work;
:func:`check` lists every property the run broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from attrs import define, field
from hypothesis import strategies as st

from hotmesh_core import MemFlow, workflow
from hotmesh_core.client import WorkflowExport
from hotmesh_core.models import MAIN_THREAD, Job, Step, Thread
from hotmesh_core.plugins import backend_test_options
from hotmesh_core.protocols import Backend
from hotmesh_core.replay import Command, Run
from hotmesh_core.worker import Worker

Node = dict[str, Any]
Body = list[Node]

WORKFLOW_QUEUE = "wf"
ACTIVITY_QUEUE = "acts"
LEASE = 0.5  # seconds: a crashed worker's tasks come back this soon under a new id
RESULT_TIMEOUT = 20.0


# -- what the calls answer ---------------------------------------------------------------
def answer(node_id: str) -> str:
    """What activity call ``node_id`` returns: a function of its own argument only."""
    return f"r:{node_id}"


def signal_data(node_id: str) -> str:
    return f"s:{node_id}"


def signal_id(root: str, node_id: str) -> str:
    return f"{root}:{node_id}"


def child_id(root: str, node_id: str) -> str:
    return f"{root}-{node_id}"


def gate_id(root: str, node_id: str | None) -> str:
    """The signal a thread waits for last, when the scenario has gates."""
    return f"{root}:gate:{node_id or 'root'}"


GATE_DATA = "open"


def sub_spec(spec: dict[str, Any], node: Node) -> dict[str, Any]:
    """The argument of the child job or hook that runs ``node``'s body."""
    return {
        "root": spec["root"],
        "acts": spec["acts"],
        "gate": spec["gate"],
        "node": node["id"],
        "body": node["body"],
    }


# -- activities and workflow functions ----------------------------------------------------
async def echo(node_id: str, delay_ms: int) -> str:
    await asyncio.sleep(delay_ms / 1000)
    return answer(node_id)


async def interpret(spec: dict[str, Any]) -> list[Any]:
    """The workflow (and child) function: executes ``spec["body"]``."""
    result = await _body(spec, spec["body"])
    await _gate(spec)
    return result


async def interpret_hook(spec: dict[str, Any], config: dict[str, str]) -> None:
    """The hook function: executes its body against the job's entity, signals the result."""
    result = await _body(spec, spec["body"])
    await _gate(spec)
    await workflow.signal(config["signal"], result)


async def _gate(spec: dict[str, Any]) -> None:
    """With gates, a thread ends only after a signal from outside: that signal's answer
    starts a fresh run, which replays the thread's whole history from the store."""
    if spec["gate"]:
        await workflow.wait_for(gate_id(spec["root"], spec["node"]))


async def signaller(node_id: str, signal: str) -> None:
    """A hook that answers wait node ``node_id``."""
    await workflow.signal(signal, signal_data(node_id))


WORKFLOWS: dict[str, Callable[..., Any]] = {
    "interpret": interpret,
    "interpret_hook": interpret_hook,
    "signaller": signaller,
}


async def _body(spec: dict[str, Any], body: Body) -> list[Any]:
    return [await _node(spec, node) for node in body]


async def _node(spec: dict[str, Any], node: Node) -> Any:
    kind = node["k"]
    if kind == "act":
        acts = workflow.proxy_activities(activities=["echo"], task_queue=spec["acts"])
        return await acts.echo(node["id"], node["ms"])
    if kind == "inc":
        entity = await workflow.entity()
        return ["inc", await entity.increment("n", 1)]
    if kind == "app":
        entity = await workflow.entity()
        log = await entity.append("log", node["id"])
        return ["app", node["id"], node["id"] in log]
    if kind == "sleep":
        await workflow.sleep_for(node["ms"] / 1000)
        return ["slept", node["id"]]
    if kind == "wait":
        signal = signal_id(spec["root"], node["id"])
        if node["by"] == "hook":
            await workflow.hook(None, "signaller", [node["id"], signal])
        return await workflow.wait_for(signal)
    if kind == "now":
        return ["now", workflow.now().timestamp()]
    if kind == "random":
        return ["random", workflow.random()]
    if kind == "gather":
        branches = await asyncio.gather(*(_body(spec, branch) for branch in node["branches"]))
        return list(branches)
    if kind == "child":
        return await workflow.exec_child(
            "shape-child",
            "interpret",
            workflow_id=child_id(spec["root"], node["id"]),
            args=[sub_spec(spec, node)],
        )
    if kind == "hook":
        return await workflow.exec_hook(None, "interpret_hook", [sub_spec(spec, node)])
    raise ValueError(f"unknown node kind {kind!r}")


# -- generating shapes ----------------------------------------------------------------------
# Hypothesis shrinks a sampled_from towards its first element: the plain activity.
LEAF_KINDS = ("act", "act", "act", "inc", "app", "sleep", "wait", "now", "random")
COMPOSITE_KINDS = ("gather", "gather", "child", "hook")


@st.composite
def shapes(
    draw: st.DrawFn,
    *,
    max_nodes: int = 18,
    depth: int = 3,
    leaf_kinds: tuple[str, ...] = LEAF_KINDS,
    composite_kinds: tuple[str, ...] = COMPOSITE_KINDS,
) -> Body:
    """A body of 1-5 nodes, at most ``max_nodes`` in all, composites nested ``depth`` deep."""
    budget = [max_nodes]

    def body(level: int, least: int, most: int) -> Body:
        nodes: Body = []
        for _ in range(draw(st.integers(least, most))):
            if budget[0] <= 0:
                break
            nodes.append(node(level))
        return nodes

    def node(level: int) -> Node:
        budget[0] -= 1
        composite = composite_kinds if level > 0 and budget[0] >= 2 else ()
        kind = draw(st.sampled_from(leaf_kinds + composite))
        if kind == "act":
            return {"k": "act", "ms": draw(st.integers(0, 30))}
        if kind == "sleep":
            return {"k": "sleep", "ms": draw(st.integers(10, 50))}
        if kind == "wait":
            return {"k": "wait", "by": draw(st.sampled_from(["outside", "hook"]))}
        if kind == "gather":
            width = draw(st.integers(2, 4))
            return {"k": "gather", "branches": [body(level - 1, 1, 3) for _ in range(width)]}
        if kind in ("child", "hook"):
            return {"k": kind, "body": body(level - 1, 0, 3)}
        return {"k": kind}

    shape = body(depth, 1, 5)
    number_nodes(shape)
    return shape


def number_nodes(body: Body) -> Body:
    """Give every node a distinct id ``n0, n1, ...`` in pre-order (in place)."""
    counter = iter(range(1_000_000))
    for node in walk(body):
        node["id"] = f"n{next(counter)}"
    return body


def walk(body: Body) -> Iterator[Node]:
    """Every node, pre-order, through gathers, children and hooks."""
    for node in body:
        yield node
        for inner in _inner_bodies(node):
            yield from walk(inner)


def _inner_bodies(node: Node) -> list[Body]:
    if node["k"] == "gather":
        return list(node["branches"])
    if node["k"] in ("child", "hook"):
        return [node["body"]]
    return []


@define
class Crash:
    after_ms: int  # since the start of the job
    worker: int  # which worker (modulo the number of workers)
    same_id: bool  # restart under the same worker_id (takes its leases back) or a new one
    busy: bool = False  # after after_ms, wait until a worker has tasks in hand, crash that one


@define
class Scenario:
    body: Body
    mode: str = "inline"  # "inline": workflow workers run activities; "remote": other workers
    workers: int = 1
    concurrency: int = 2
    crashes: list[Crash] = field(factory=list)
    signal_delays_ms: list[int] = field(factory=lambda: [0])  # cycled over outside signals
    gates: bool = False  # every thread ends waiting for a signal (a final replay from the store)

    def to_json(self) -> str:
        return json.dumps(
            {
                "body": self.body,
                "mode": self.mode,
                "workers": self.workers,
                "concurrency": self.concurrency,
                "crashes": [[c.after_ms, c.worker, c.same_id, c.busy] for c in self.crashes],
                "signal_delays_ms": self.signal_delays_ms,
                "gates": self.gates,
            }
        )


@st.composite
def scenarios(
    draw: st.DrawFn,
    shape: st.SearchStrategy[Body] | None = None,
    *,
    crashes: bool = True,
) -> Scenario:
    body = draw(shape if shape is not None else shapes())
    crash_list: list[Crash] = []
    if crashes:
        crash_list = sorted(
            draw(
                st.lists(
                    st.builds(
                        Crash,
                        after_ms=st.integers(0, 100),
                        worker=st.integers(0, 5),
                        same_id=st.booleans(),
                        busy=st.booleans(),
                    ),
                    min_size=draw(st.integers(0, 1)),
                    max_size=4,
                )
            ),
            key=lambda c: c.after_ms,
        )
    return Scenario(
        body=body,
        mode=draw(st.sampled_from(["inline", "remote"])),
        workers=draw(st.integers(1, 3)),
        concurrency=draw(st.integers(2, 4)),
        crashes=crash_list,
        signal_delays_ms=draw(st.lists(st.integers(0, 200), min_size=1, max_size=6)),
        gates=draw(st.booleans()),
    )


# -- the plain-Python evaluation ------------------------------------------------------------
class _Wild:
    """Stands for a value the test cannot predict (a counter value, a time, a random)."""

    def __repr__(self) -> str:
        return "*"


WILD = _Wild()


def expected_result(body: Body) -> list[Any]:
    return [_expected(node) for node in body]


def _expected(node: Node) -> Any:
    kind = node["k"]
    if kind == "act":
        return answer(node["id"])
    if kind in ("inc", "now", "random"):
        return [kind, WILD]
    if kind == "app":
        return ["app", node["id"], True]
    if kind == "sleep":
        return ["slept", node["id"]]
    if kind == "wait":
        return signal_data(node["id"])
    if kind == "gather":
        return [expected_result(branch) for branch in node["branches"]]
    return expected_result(node["body"])  # child, hook


def matches(actual: Any, expected: Any) -> bool:
    if expected is WILD:
        return True
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(matches(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return bool(actual == expected)


def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


ROOT_JOB = ""  # the key of the root job; a child job's key is its node id
MAIN = "main"  # the owner of a job's main thread; a hook's owner is its node id


def expected_steps(spec: dict[str, Any]) -> dict[str, Counter[tuple[str, str, str, str]]]:
    """Per job: the multiset of (owner, kind, name, args) the shape must record."""
    out: dict[str, Counter[tuple[str, str, str, str]]] = {ROOT_JOB: Counter()}

    def gate(job: str, owner: str, node_id: str | None) -> None:
        if spec["gate"]:
            key = (owner, "wait", gate_id(spec["root"], node_id), canon({"timeout": None}))
            out.setdefault(job, Counter())[key] += 1

    def visit(body: Body, job: str, owner: str) -> None:
        steps = out.setdefault(job, Counter())
        for node in body:
            kind, nid = node["k"], node["id"]
            if kind == "act":
                steps[(owner, "activity", "echo", canon([nid, node["ms"]]))] += 1
            elif kind == "inc":
                steps[(owner, "entity", "increment", canon({"path": "n", "value": 1}))] += 1
            elif kind == "app":
                steps[(owner, "entity", "append", canon({"path": "log", "value": nid}))] += 1
            elif kind == "sleep":
                steps[(owner, "sleep", "sleep", canon(node["ms"] / 1000))] += 1
            elif kind == "wait":
                signal = signal_id(spec["root"], nid)
                if node["by"] == "hook":
                    steps[(owner, "hook", "signaller", canon([nid, signal]))] += 1
                    steps[(f"signaller:{nid}", "signal", signal, _signal_args(nid))] += 1
                steps[(owner, "wait", signal, canon({"timeout": None}))] += 1
            elif kind in ("now", "random"):
                steps[(owner, kind, kind, canon(None))] += 1
            elif kind == "gather":
                for branch in node["branches"]:
                    visit(branch, job, owner)
            elif kind == "child":
                steps[(owner, "child", "interpret", canon([sub_spec(spec, node)]))] += 1
                visit(node["body"], nid, MAIN)
                gate(nid, MAIN, nid)
            elif kind == "hook":
                steps[(owner, "exec_hook", "interpret_hook", canon(sub_spec(spec, node)))] += 1
                visit(node["body"], job, nid)
                gate(job, nid, nid)
                steps[(nid, "signal", "<hook end>", "-")] += 1

    visit(spec["body"], ROOT_JOB, MAIN)
    gate(ROOT_JOB, MAIN, None)
    return out


def _signal_args(node_id: str) -> str:
    return canon({"data": signal_data(node_id)})


def step_key(step: Step, owner: str) -> tuple[str, str, str, str]:
    if step.kind == "exec_hook":
        return (owner, step.kind, step.name, canon(step.args[0]))
    if step.kind == "signal" and step.name.startswith("hook:"):
        return (owner, "signal", "<hook end>", "-")
    return (owner, step.kind, step.name, canon(step.args))


def node_of(step: Step) -> str | None:
    """The shape node a step belongs to, when its arguments tell."""
    if step.kind in ("activity", "hook"):
        return str(step.args[0])
    if step.kind == "entity" and step.name == "append":
        return str(step.args["value"])
    if step.kind == "wait":
        return None if ":gate:" in step.name else step.name.rsplit(":", 1)[1]
    if step.kind in ("child", "exec_hook"):
        return str(step.args[0]["node"])
    return None


# -- running a scenario ---------------------------------------------------------------------
@define
class JobRecord:
    """What a job left behind: its export and, read from the store, its threads."""

    export: WorkflowExport
    job: Job
    threads: list[Thread]
    steps: list[Step]

    def owner(self, dimension: str) -> str:
        if dimension == MAIN_THREAD:
            return MAIN
        for thread in self.threads:
            if thread.dimension == dimension:
                if thread.workflow_name == "interpret_hook":
                    return str(thread.args[0]["node"])
                return f"{thread.workflow_name}:{thread.args[0]}"
        return f"?{dimension}"


@define
class RunReport:
    scenario: Scenario
    spec: dict[str, Any]
    result: Any = None
    error: str | None = None
    jobs: dict[str, JobRecord] = field(factory=dict)  # by job key (ROOT_JOB or child node id)
    replay_problems: list[str] = field(factory=list)
    crashes_done: int = 0
    tasks_cancelled: int = 0  # by the crashes
    seconds: float = 0.0


class WorkerPool:
    """The scenario's workers; ``crash`` kills one like a dying process and starts another."""

    def __init__(self, backend: Backend, scenario: Scenario) -> None:
        self.backend = backend
        self.scenario = scenario
        self.slots: list[tuple[str, dict[str, Any]]] = []
        for _ in range(scenario.workers):
            if scenario.mode == "inline":
                self.slots.append((WORKFLOW_QUEUE, {"workflows": WORKFLOWS, "activities": [echo]}))
            else:
                self.slots.append((WORKFLOW_QUEUE, {"workflows": WORKFLOWS}))
                self.slots.append((ACTIVITY_QUEUE, {"activities": [echo]}))
        self.workers: list[Worker] = []
        self.generation = 0
        self.cancelled = 0  # tasks in hand when their worker crashed

    def _new(self, slot: int, worker_id: str) -> Worker:
        queue, functions = self.slots[slot]
        return Worker(
            self.backend,
            queue,
            concurrency=self.scenario.concurrency,
            lease=LEASE,
            poll_interval=0.05,
            worker_id=worker_id,
            **functions,
        )

    async def start(self) -> None:
        for slot in range(len(self.slots)):
            self.workers.append(await self._new(slot, f"w{slot}").start())

    async def until_busy(self, which: int, finished: asyncio.Event, timeout: float = 0.3) -> int:
        """Wait (a while at most) until a worker has tasks in hand; which one (from ``which``)."""
        count = len(self.workers)
        for _ in range(int(timeout / 0.001)):
            if finished.is_set():
                break
            for offset in range(count):
                if self.workers[(which + offset) % count]._inflight:
                    return (which + offset) % count
            await asyncio.sleep(0.001)
        return which

    async def crash(self, which: int, same_id: bool) -> None:
        slot = which % len(self.workers)
        old = self.workers[slot]
        self.cancelled += len(old._inflight)
        await old.stop(drain=False)  # in-flight work is cancelled, nothing is acked
        self.generation += 1
        worker_id = old.id if same_id else f"w{slot}-g{self.generation}"
        self.workers[slot] = await self._new(slot, worker_id).start()

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.stop(drain=False)


def root_spec(scenario: Scenario, root: str) -> dict[str, Any]:
    acts = None if scenario.mode == "inline" else ACTIVITY_QUEUE
    return {"root": root, "acts": acts, "gate": scenario.gates, "node": None, "body": scenario.body}


async def run_scenario(scenario: Scenario, backend: str = "memory") -> RunReport:
    """Run the scenario on a fresh app (of ``backend``) and collect what it recorded."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    root = "root"
    spec = root_spec(scenario, root)
    report = RunReport(scenario, spec)
    mf = await MemFlow.init(
        app_id=f"p{uuid.uuid4().hex[:16]}", backend=backend, **backend_test_options(backend)
    )
    pool = WorkerPool(mf.backend, scenario)
    finished = asyncio.Event()
    try:
        await pool.start()
        handle = await mf.workflow.start("shape", "interpret", root, [spec], WORKFLOW_QUEUE)

        async def chaos() -> None:
            for crash in scenario.crashes:
                delay = began + crash.after_ms / 1000 - loop.time()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(finished.wait(), max(delay, 0))
                which = crash.worker
                if crash.busy:
                    which = await pool.until_busy(which, finished)
                if finished.is_set():
                    return
                await pool.crash(which, crash.same_id)
                report.crashes_done += 1

        async def signals() -> None:
            delays = scenario.signal_delays_ms
            for number, (signal, data) in enumerate(outside_signals(spec)):
                await asyncio.sleep(delays[number % len(delays)] / 1000)
                await mf.workflow.signal(signal, data)

        helpers = [asyncio.create_task(chaos()), asyncio.create_task(signals())]
        try:
            report.result = await handle.result(timeout=RESULT_TIMEOUT)
        except Exception as exc:
            report.error = f"{type(exc).__name__}: {exc}"
        finished.set()
        await helpers[0]
        helpers[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await helpers[1]
        if report.error is None:
            await _until_threads_end(mf.backend, [root, *_child_ids(spec)])
        for key, job_id in [(ROOT_JOB, root), *((n, child_id(root, n)) for n in _child_keys(spec))]:
            record = await _record(mf, job_id)
            if record is not None:
                report.jobs[key] = record
        if report.error is None:
            for key, record in report.jobs.items():
                report.replay_problems += [
                    f"job {key or 'root'}: {problem}" for problem in await replay_job(record)
                ]
    finally:
        finished.set()
        report.tasks_cancelled = pool.cancelled
        await pool.stop()
        await mf.shutdown()
    report.seconds = loop.time() - began
    return report


def outside_signals(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    """The signals the test sends: to outside waits, and to every thread's gate."""
    root = spec["root"]
    sent = []
    for node in walk(spec["body"]):
        if node["k"] == "wait" and node["by"] == "outside":
            sent.append((signal_id(root, node["id"]), signal_data(node["id"])))
        if spec["gate"] and node["k"] in ("child", "hook"):
            sent.append((gate_id(root, node["id"]), GATE_DATA))
    if spec["gate"]:
        sent.append((gate_id(root, None), GATE_DATA))
    return sent


def _child_keys(spec: dict[str, Any]) -> list[str]:
    return [node["id"] for node in walk(spec["body"]) if node["k"] == "child"]


def _child_ids(spec: dict[str, Any]) -> list[str]:
    return [child_id(spec["root"], key) for key in _child_keys(spec)]


async def _until_threads_end(backend: Backend, job_ids: list[str], timeout: float = 5.0) -> None:
    """Hooks finish just after they signal: wait until every thread has ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        async with backend.transaction(readonly=True) as tx:
            running = [
                thread
                for job_id in job_ids
                for thread in await tx.store.threads(job_id)
                if thread.status == "running"
            ]
        if not running:
            return
        await asyncio.sleep(0.02)


async def _record(mf: MemFlow, job_id: str) -> JobRecord | None:
    async with mf.backend.transaction(readonly=True) as tx:
        job = await tx.store.get_job(job_id)
        if job is None:
            return None
        threads = await tx.store.threads(job_id)
        steps = await tx.store.load_steps(job_id)
    export = await (await mf.workflow.get_handle(job_id)).export()
    return JobRecord(export, job, threads, steps)


# -- replaying the final history --------------------------------------------------------------
class AuditRun(Run):
    """A run that notes what the code issues at each index, to compare with the history."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.issued: dict[int, tuple[str, str, str]] = {}

    async def call(self, kind: str, name: str, args: Any = None, **options: Any) -> Any:
        self.issued.setdefault(self._next_index, (kind, name, canon(args)))
        return await super().call(kind, name, args, **options)

    def value(self, kind: str, generate: Callable[[], Any]) -> Any:
        self.issued.setdefault(self._next_index, (kind, kind, canon(None)))
        return super().value(kind, generate)


async def replay_job(record: JobRecord) -> list[str]:
    """Re-run every thread of a finished job over its final history, with nothing new allowed.

    The code must issue, index by index, exactly the recorded calls (kind, name and
    arguments), need no answer the history lacks, and end with the recorded result.
    """
    problems: list[str] = []
    job = record.job
    for thread in [None, *record.threads]:
        dimension = MAIN_THREAD if thread is None else thread.dimension
        where = "main" if thread is None else f"hook {dimension}"
        history = [s for s in record.steps if s.dimension == dimension]
        name = job.workflow_name if thread is None else thread.workflow_name
        args = list(job.args if thread is None else thread.args)
        unrecorded: list[Command] = []

        async def refuse(run: Run, command: Command, unrecorded: list[Command] = unrecorded) -> Any:
            unrecorded.append(command)
            raise RuntimeError("the replay issued an inline command the history lacks")

        run = AuditRun(
            job=job,
            thread=thread,
            history=history,
            now=0.0,
            execute_inline=refuse,
            clock=lambda: 0.0,
        )
        try:
            outcome = await run.execute(WORKFLOWS[name], args)
        except Exception as exc:  # the refusal above, when the engine lets it through
            problems.append(f"{where}: replay raised {type(exc).__name__}: {exc}")
            continue
        if outcome.status != "completed":
            message = outcome.error.message if outcome.error else outcome.commands
            problems.append(f"{where}: replay {outcome.status}: {message}")
        elif thread is None and canon(outcome.result) != canon(job.result):
            problems.append(f"{where}: replay returned {outcome.result!r}, recorded {job.result!r}")
        if unrecorded or outcome.values:
            problems.append(
                f"{where}: replay issued unrecorded calls {unrecorded or outcome.values}"
            )
        recorded = {s.index: (s.kind, s.name, canon(s.args)) for s in history}
        for index in sorted(set(recorded) | set(run.issued)):
            if recorded.get(index) != run.issued.get(index):
                problems.append(
                    f"{where}: index {index}: replay issued {run.issued.get(index)}, "
                    f"history holds {recorded.get(index)}"
                )
    return problems


# -- the properties ---------------------------------------------------------------------------
def check(report: RunReport) -> list[str]:
    """Every property the run broke (empty when replay was correct)."""
    spec = report.spec
    body: Body = spec["body"]
    problems: list[str] = []
    # (1) The result is the plain-Python evaluation of the shape.
    expected = expected_result(body)
    if report.error is not None:
        problems.append(f"the job did not complete: {report.error}")
    elif not matches(report.result, expected):
        problems.append(f"result {canon(report.result)} != expected {expected!r}")
    nodes = {node["id"]: node for node in walk(body)}
    wanted = expected_steps(spec)
    for key in wanted:
        if key not in report.jobs:
            problems.append(f"job {key or 'root'} was never created")
    for key, record in report.jobs.items():
        label = f"job {key or 'root'}"
        if record.job.status != "completed":
            problems.append(f"{label} is {record.job.status}")
        # (2) Each step holds the answer of its own call.
        for step in record.steps:
            problems += [f"{label}: {p}" for p in _step_problems(step, nodes)]
        # (3) Every call of the shape is recorded exactly once: none missing, no duplicate.
        actual: Counter[tuple[str, str, str, str]] = Counter(
            step_key(step, record.owner(step.dimension)) for step in record.steps
        )
        missing, extra = wanted.get(key, Counter()) - actual, actual - wanted.get(key, Counter())
        if missing:
            problems.append(f"{label}: steps missing {sorted(missing.elements())}")
        if extra:
            problems.append(f"{label}: steps not in the shape or twice {sorted(extra.elements())}")
        # (5) The entity ends as the shape's operations make it.
        problems += [f"{label}: {p}" for p in _entity_problems(key, record, body)]
    problems += _order_problems(report, body)
    if report.error is None and matches(report.result, expected):
        problems += _value_problems(report, body)
    # (4) Every thread replays over its final history, deterministically.
    problems += report.replay_problems
    return problems


def _step_problems(step: Step, nodes: dict[str, Node]) -> list[str]:
    where = f"step {step.dimension or 'main'}#{step.index} {step.kind} {step.name}"
    if step.status != "done":
        return [f"{where} is {step.status} ({step.error})"]
    node_id = node_of(step)
    if step.kind == "wait" and ":gate:" in step.name and step.result != GATE_DATA:
        return [f"{where} holds {step.result!r}, not {GATE_DATA!r}"]
    if step.kind == "activity" and step.result != answer(str(step.args[0])):
        return [f"{where} args {step.args} holds {step.result!r}, not {answer(step.args[0])!r}"]
    if step.kind == "wait" and node_id is not None and step.result != signal_data(node_id):
        return [f"{where} holds {step.result!r}, not {signal_data(node_id)!r}"]
    if step.kind in ("child", "exec_hook") and node_id in nodes:
        want = expected_result(nodes[node_id]["body"])
        if not matches(step.result, want):
            return [f"{where} holds {step.result!r}, not {want!r}"]
    if step.kind == "entity" and step.name == "increment" and not isinstance(step.result, int):
        return [f"{where} holds {step.result!r}, not a count"]
    if (
        step.kind == "entity"
        and step.name == "append"
        and (not isinstance(step.result, list) or step.args["value"] not in step.result)
    ):
        return [f"{where} holds {step.result!r}, without {step.args['value']!r}"]
    if step.kind in ("now", "random") and not isinstance(step.result, float):
        return [f"{where} holds {step.result!r}, not a number"]
    return []


def _scope_nodes(body: Body) -> Iterator[Node]:
    """The nodes of one job, hooks included, children's bodies excluded."""
    for node in body:
        yield node
        if node["k"] == "gather":
            for branch in node["branches"]:
                yield from _scope_nodes(branch)
        elif node["k"] == "hook":
            yield from _scope_nodes(node["body"])


def _job_body(key: str, body: Body) -> Body:
    if key == ROOT_JOB:
        return body
    for node in walk(body):
        if node["id"] == key:
            inner: Body = node["body"]
            return inner
    return []


def _entity_problems(key: str, record: JobRecord, body: Body) -> list[str]:
    scope = list(_scope_nodes(_job_body(key, body)))
    increments = sum(1 for node in scope if node["k"] == "inc")
    appended = sorted(node["id"] for node in scope if node["k"] == "app")
    context = dict(record.job.context)
    problems = []
    if context.pop("n", 0) != increments:
        problems.append(f"entity n = {record.job.context.get('n')}, expected {increments}")
    if sorted(context.pop("log", [])) != appended:
        problems.append(f"entity log = {record.job.context.get('log')}, expected {appended}")
    if context:
        problems.append(f"entity holds unexpected {context}")
    return problems


def _order_problems(report: RunReport, body: Body) -> list[str]:
    """In a sequence, a later node's calls take later indexes than an earlier node's."""
    problems: list[str] = []
    indexes: dict[tuple[str, str, str], list[int]] = {}  # (job, owner, node) -> indexes
    for key, record in report.jobs.items():
        for step in record.steps:
            node_id = node_of(step)
            if node_id is not None:
                owner = record.owner(step.dimension)
                indexes.setdefault((key, owner, node_id), []).append(step.index)

    def of(node: Node, job: str, owner: str) -> list[int]:
        found = list(indexes.get((job, owner, node["id"]), []))
        if node["k"] == "gather":
            for branch in node["branches"]:
                for inner in branch:
                    found += of(inner, job, owner)
        return found

    def visit(sequence: Body, job: str, owner: str) -> None:
        spans = [(node["id"], of(node, job, owner)) for node in sequence]
        for i, (first, before) in enumerate(spans):
            for second, after in spans[i + 1 :]:
                if before and after and max(before) >= min(after):
                    problems.append(
                        f"job {job or 'root'} {owner}: {first} (indexes {sorted(before)}) "
                        f"runs before {second} (indexes {sorted(after)}) in the code"
                    )
        for node in sequence:
            if node["k"] == "gather":
                for branch in node["branches"]:
                    visit(branch, job, owner)
            elif node["k"] == "child":
                visit(node["body"], node["id"], MAIN)
            elif node["k"] == "hook":
                visit(node["body"], job, node["id"])

    visit(body, ROOT_JOB, MAIN)
    return problems


def _value_problems(report: RunReport, body: Body) -> list[str]:
    """Counters count 1..N per entity; every now/random the code saw is the recorded one."""
    seen: dict[tuple[str, str], list[float]] = {}

    def collect(sequence: Body, values: list[Any], job: str) -> None:
        for node, value in zip(sequence, values, strict=True):
            kind = node["k"]
            if kind in ("inc", "now", "random"):
                seen.setdefault((job, kind), []).append(value[1])
            elif kind == "gather":
                for branch, branch_values in zip(node["branches"], value, strict=True):
                    collect(branch, branch_values, job)
            elif kind in ("child", "hook"):
                collect(node["body"], value, node["id"] if kind == "child" else job)

    collect(body, report.result, ROOT_JOB)
    problems: list[str] = []
    for key, record in report.jobs.items():
        label = f"job {key or 'root'}"
        counts = sorted(seen.get((key, "inc"), []))
        if counts != list(range(1, len(counts) + 1)):
            problems.append(f"{label}: the increments returned {counts}, not 1..{len(counts)}")
        for kind in ("now", "random"):
            got = sorted(seen.get((key, kind), []))
            recorded = sorted(s.result for s in record.steps if s.kind == kind)
            if len(got) != len(recorded) or any(
                abs(a - b) > 1e-5 for a, b in zip(got, recorded, strict=True)
            ):
                problems.append(f"{label}: the code saw {kind} {got}, the history holds {recorded}")
    return problems


def describe(report: RunReport, problems: list[str]) -> str:
    lines = [
        f"{len(problems)} replay properties broken "
        f"({report.crashes_done} crashes cancelling {report.tasks_cancelled} tasks, "
        f"{report.seconds:.2f} s):",
        *(f"  - {p}" for p in problems[:25]),
        f"scenario: {report.scenario.to_json()}",
        f"result: {canon(report.result)}",
    ]
    for key, record in report.jobs.items():
        lines.append(f"history of job {key or 'root'}:")
        for step in sorted(record.steps, key=lambda s: (s.dimension, s.index)):
            activation = getattr(step, "activation", None)  # the run that received the answer
            lines.append(
                f"    {step.dimension or 'main'}#{step.index} {step.kind} {step.name} "
                f"{canon(step.args)[:80]} -> {canon(step.result)[:80]} (activation {activation})"
            )
    return "\n".join(lines)
