"""The soak's workflows, and what an uninterrupted run of each must have recorded.

Why explicit expectations instead of a reference run: a correct engine may lay
out the later steps of concurrent branches in several orders (whichever answer
came first), so "equal to one reference run" would be wrong; what every correct
run shares is written down here — the result the code computes, the steps of
each dimension as an interleaving of per-branch chains (with the exact prefix
that ``asyncio.gather`` issues), every step answered with its own result.

Activities echo their arguments (``echo(s) == s``, ``inc(tag, x) == x + 1``),
and every argument carries the job's tag, so a result recorded at the wrong
index (a gather branch given its neighbour's answer) cannot pass, and
executions can be counted per recorded step.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from attrs import define, field

from hotmesh_core import workflow
from hotmesh_core.client import TimelineEntry, WorkflowExport
from hotmesh_core.models import ErrorInfo

__all__ = [
    "ENTITY",
    "WORKFLOWS",
    "Activities",
    "Expected",
    "Shape",
    "check_export",
    "plan",
]

ENTITY = "soak"

# A step as the checks compare it: (kind, name, args).
Call = tuple[str, str, Any]


def _acts() -> workflow.ActivityProxy:
    return workflow.proxy_activities(activities=["inc", "echo"])


async def seq3(tag: str, x: int) -> int:
    """W1: three activities in sequence."""
    acts = _acts()
    a = await acts.inc(tag, x)
    b = await acts.inc(tag, a)
    return cast(int, await acts.inc(tag, b))


async def fanout(tag: str, n: int) -> list[str]:
    """W2: ``n`` activities at once (``asyncio.gather``)."""
    acts = _acts()
    return list(await asyncio.gather(*(acts.echo(f"{tag}-{i}") for i in range(n))))


async def branches(tag: str, n: int) -> list[list[str]]:
    """A gather of two-step branches: replaying it must not hand a branch its
    neighbour's answer."""
    acts = _acts()

    async def branch(i: int) -> list[str]:
        first = await acts.echo(f"{tag}-{i}-1")
        second = await acts.echo(f"{tag}-{i}-2")
        return [first, second]

    return list(await asyncio.gather(*(branch(i) for i in range(n))))


async def bump(label: str, times: int, config: dict[str, str]) -> None:
    """A hook: ``times`` increments of the job's counter, then its signal."""
    entity = await workflow.entity()
    for _ in range(times):
        await entity.increment("count", 1)
    await workflow.signal(config["signal"], label)


async def counter(tag: str, hooks: int, times: int) -> dict[str, Any]:
    """W6 in small: several hooks increment one entity."""
    entity = await workflow.entity()
    await entity.set({"count": 0})
    labels = await asyncio.gather(
        *(workflow.exec_hook(None, "bump", [f"{tag}-h{i}", times]) for i in range(hooks))
    )
    return {"labels": list(labels), "count": await entity.get("count")}


async def signalled(tag: str) -> str:
    """W3: wait for the client's signal."""
    data = await workflow.wait_for(f"sig-{tag}")
    return cast(str, await _acts().echo(f"{tag}:{data}"))


async def sleeper(tag: str, seconds: float) -> str:
    """W4: a durable sleep, then an activity."""
    await workflow.sleep_for(seconds)
    return cast(str, await _acts().echo(tag))


async def parent(tag: str, x: int) -> int:
    """A child workflow (``seq3``), awaited."""
    child = f"{tag}-child"
    return cast(int, await workflow.exec_child(ENTITY, "seq3", child, [child, x]))


WORKFLOWS: dict[str, Callable[..., Any]] = {
    "seq3": seq3,
    "fanout": fanout,
    "branches": branches,
    "bump": bump,
    "counter": counter,
    "signalled": signalled,
    "sleeper": sleeper,
    "parent": parent,
}


class Activities:
    """The activities, counting executions per (name, args): at least once per
    recorded step, and how many ran more than once."""

    def __init__(self) -> None:
        self.runs: Counter[tuple[str, str]] = Counter()

    @staticmethod
    def key(name: str, args: Any) -> tuple[str, str]:
        return name, json.dumps(args, sort_keys=True)

    def functions(self) -> dict[str, Callable[..., Any]]:
        async def inc(tag: str, x: int) -> int:
            self.runs[self.key("inc", [tag, x])] += 1
            return x + 1

        async def echo(value: str) -> str:
            self.runs[self.key("echo", [value])] += 1
            return value

        return {"inc": inc, "echo": echo}


@define
class Expected:
    """What one dimension of a job must hold once it has finished."""

    prefix: list[Call] = field(factory=list)  # the first steps, exactly
    chains: list[list[Call]] = field(factory=list)  # the rest: an interleaving of these


@define
class Shape:
    """One workflow of a seed: how to start it and what it must end with."""

    workflow_id: str
    name: str
    args: list[Any]
    result: Any
    dimensions: dict[str, Expected]
    signal: tuple[str, str] | None = None  # (signal id, data) the client sends
    child: Shape | None = None
    increments: int = 0  # entity increments the hooks issue


def _activity(name: str, *args: Any) -> Call:
    return ("activity", name, list(args))


def _seq3(workflow_id: str, tag: str, x: int) -> Shape:
    calls = [_activity("inc", tag, x + i) for i in range(3)]
    return Shape(workflow_id, "seq3", [tag, x], x + 3, {"": Expected(chains=[calls])})


def plan(seed: int, rng: random.Random) -> list[Shape]:
    """The workflows of one seed: every shape once, sizes drawn from ``rng``."""
    shapes: list[Shape] = []
    tag = f"s{seed}"

    shapes.append(_seq3(f"{tag}-seq3", f"{tag}-seq3", rng.randint(0, 100)))

    n = rng.randint(3, 8)
    wid = f"{tag}-fanout"
    calls = [_activity("echo", f"{wid}-{i}") for i in range(n)]
    shapes.append(
        Shape(wid, "fanout", [wid, n], [f"{wid}-{i}" for i in range(n)], {"": Expected(calls)})
    )

    n = rng.randint(2, 4)
    wid = f"{tag}-branches"
    firsts = [_activity("echo", f"{wid}-{i}-1") for i in range(n)]
    seconds = [[_activity("echo", f"{wid}-{i}-2")] for i in range(n)]
    shapes.append(
        Shape(
            wid,
            "branches",
            [wid, n],
            [[f"{wid}-{i}-1", f"{wid}-{i}-2"] for i in range(n)],
            {"": Expected(firsts, seconds)},
        )
    )

    hooks, times = rng.randint(2, 3), rng.randint(2, 4)
    wid = f"{tag}-counter"
    labels = [f"{wid}-h{i}" for i in range(hooks)]
    main: list[Call] = [("entity", "set", {"path": None, "value": {"count": 0}})]
    dimensions: dict[str, Expected] = {}
    for i, label in enumerate(labels):
        dimension, signal_id = f"h{i + 1}", f"hook:{wid}:h{i + 1}"
        main.append(("exec_hook", "bump", [label, times, {"signal": signal_id}]))
        increments: list[Call] = [("entity", "increment", {"path": "count", "value": 1})] * times
        dimensions[dimension] = Expected([*increments, ("signal", signal_id, {"data": label})])
    main.append(("entity", "get", {"path": "count", "value": None}))
    dimensions[""] = Expected(main)
    shapes.append(
        Shape(
            wid,
            "counter",
            [wid, hooks, times],
            {"labels": labels, "count": hooks * times},
            dimensions,
            increments=hooks * times,
        )
    )

    wid = f"{tag}-signalled"
    data = f"data{rng.randint(0, 999)}"
    shapes.append(
        Shape(
            wid,
            "signalled",
            [wid],
            f"{wid}:{data}",
            {
                "": Expected(
                    [("wait", f"sig-{wid}", {"timeout": None}), _activity("echo", f"{wid}:{data}")]
                )
            },
            signal=(f"sig-{wid}", data),
        )
    )

    wid = f"{tag}-sleeper"
    pause = rng.choice((0.1, 0.3, 0.5))
    shapes.append(
        Shape(
            wid,
            "sleeper",
            [wid, pause],
            wid,
            {"": Expected([("sleep", "sleep", pause), _activity("echo", wid)])},
        )
    )

    wid, x = f"{tag}-parent", rng.randint(0, 100)
    child = _seq3(f"{wid}-child", f"{wid}-child", x)
    shapes.append(
        Shape(
            wid,
            "parent",
            [wid, x],
            x + 3,
            {"": Expected([("child", "seq3", [f"{wid}-child", x])])},
            child=child,
        )
    )
    return shapes


def _interleaves(steps: list[Call], chains: list[list[Call]]) -> bool:
    """Whether ``steps`` is an interleaving of ``chains`` (each chain in order)."""
    positions = [0] * len(chains)
    for step in steps:
        for number, chain in enumerate(chains):
            if positions[number] < len(chain) and chain[positions[number]] == step:
                positions[number] += 1
                break
        else:
            return False
    return all(position == len(chain) for position, chain in zip(positions, chains, strict=True))


def _calls(calls: list[Call]) -> str:
    """Steps in short: ``echo(s0-1) inc(s0,4) entity.increment``."""
    shown: list[str] = []
    for kind, name, args in calls:
        if kind == "activity":
            shown.append(f"{name}({','.join(str(a) for a in args)})")
        elif kind == "entity":
            shown.append(f"entity.{name}")
        else:
            shown.append(f"{kind}:{name}")
    return "[" + " ".join(shown) + "]"


def _own_result(step: TimelineEntry) -> Any:
    """The answer a step's own call must have recorded (``...`` when not checked here)."""
    if step.kind == "activity" and step.name == "echo":
        return step.args[0]
    if step.kind == "activity" and step.name == "inc":
        return step.args[1] + 1
    if step.kind == "exec_hook":
        return step.args[0]
    if step.kind == "child":
        return step.args[1] + 3
    return ...


def _error(error: ErrorInfo | None) -> str:
    return "no error" if error is None else f"{error.type_name}: {error.message}"


def check_export(shape: Shape, export: WorkflowExport) -> list[str]:
    """Every way the stored job differs from what an uninterrupted run records."""
    problems: list[str] = []
    if export.status != "completed":
        problems.append(f"status {export.status!r} ({_error(export.error)})")
    elif export.result != shape.result:
        problems.append(f"result {export.result!r}, expected {shape.result!r}")
    by_dimension: dict[str, list[TimelineEntry]] = {}
    for step in export.timeline:
        by_dimension.setdefault(step.dimension, []).append(step)
    if set(by_dimension) != set(shape.dimensions):
        problems.append(f"dimensions {sorted(by_dimension)}, expected {sorted(shape.dimensions)}")
    for dimension, expected in shape.dimensions.items():
        steps = sorted(by_dimension.get(dimension, []), key=lambda s: s.index)
        where = f"dimension {dimension!r}" if dimension else "main"
        indexes = [s.index for s in steps]
        if indexes != list(range(len(steps))):
            problems.append(f"{where}: indexes {indexes} (recorded twice or with gaps)")
        calls = [(s.kind, s.name, s.args) for s in steps]
        prefix, rest = calls[: len(expected.prefix)], calls[len(expected.prefix) :]
        if prefix != expected.prefix or not _interleaves(rest, expected.chains):
            problems.append(
                f"{where}: steps {_calls(calls)} are not those of an uninterrupted run"
                f" ({_calls(expected.prefix)}, then an interleaving of"
                f" {[_calls(chain) for chain in expected.chains]})"
            )
        for step in steps:
            if step.status != "done":
                problems.append(
                    f"{where}: step {step.index} {step.kind} {step.name} is {step.status}"
                    f" ({_error(step.error)})"
                )
                continue
            own = _own_result(step)
            if own is not ... and step.result != own:
                problems.append(
                    f"{where}: step {step.index} {step.kind} {step.name}{step.args} recorded "
                    f"{step.result!r}, its own result is {own!r}"
                )
    hooks = {hook["dimension"]: hook["status"] for hook in export.hooks}
    expected_hooks = {dimension: "completed" for dimension in shape.dimensions if dimension}
    if hooks != expected_hooks:
        problems.append(f"hooks {hooks}, expected {expected_hooks}")
    problems.extend(_check_entity(shape, export, by_dimension))
    return problems


def _check_entity(
    shape: Shape, export: WorkflowExport, by_dimension: dict[str, list[TimelineEntry]]
) -> list[str]:
    """Nothing stored twice: each increment applied once, one version per change."""
    problems: list[str] = []
    changes = export.entity_changes
    versions = [change["version"] for change in changes]
    if versions != list(range(1, len(changes) + 1)) or export.version != len(changes):
        problems.append(f"entity versions {versions}, job version {export.version}")
    if not shape.increments:
        return problems
    applied = sum(1 for change in changes if change["op"] == "increment")
    if applied != shape.increments:
        problems.append(f"{applied} increments applied, {shape.increments} issued")
    answers = sorted(
        step.result
        for steps in by_dimension.values()
        for step in steps
        if step.kind == "entity" and step.name == "increment" and step.status == "done"
    )
    if answers != list(range(1, shape.increments + 1)):
        problems.append(f"increments answered {answers}, expected 1..{shape.increments}")
    if export.context.get("count") != shape.increments:
        problems.append(f"entity count {export.context.get('count')}, expected {shape.increments}")
    return problems
