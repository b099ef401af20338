"""Replay order: every branch of an ``asyncio.gather`` gets its own answers.

Each branch below issues two activities in sequence.  When the answers arrive
in another order than the calls were issued, a replay must still hand each
call the answer of *that* call: a branch never sees another branch's result,
no call is recorded twice, none is lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import workflow

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio


async def echo_after(text: str, delay_ms: int) -> str:
    await asyncio.sleep(delay_ms / 1000)
    return text


async def _branch(tag: str, steps: int, delays: dict[str, int]) -> list[str]:
    acts = workflow.proxy_activities(activities=[echo_after])
    answers = []
    for step in range(1, steps + 1):
        text = f"{tag}-{step}"
        answers.append(await acts.echo_after(text, delays.get(text, 0)))
    return answers


async def gathered_branches(tags: list[str], steps: int, delays: dict[str, int]) -> Any:
    return list(await asyncio.gather(*(_branch(tag, steps, delays) for tag in tags)))


async def _nested(delays: dict[str, int]) -> list[Any]:
    inner = await asyncio.gather(_branch("x", 2, delays), _branch("y", 2, delays))
    return [*inner, await _branch("z", 1, delays)]


async def nested_gathers(delays: dict[str, int]) -> Any:
    return list(await asyncio.gather(_nested(delays), _branch("w", 3, delays)))


CASES = {
    # The reported defect: a-1 answers last, so b-1 is recorded before it.
    "first-branch-slow": (["a", "b"], 2, {"a-1": 60}),
    "second-branch-slow": (["a", "b"], 2, {"b-1": 60}),
    "slow-second-step": (["a", "b"], 2, {"a-2": 60, "b-1": 30}),
    "three-branches-reversed": (["a", "b", "c"], 3, {"a-1": 80, "b-1": 40, "a-2": 20}),
}


async def _run(hm: Harness, name: str, args: list[Any], workers: int) -> tuple[Any, Any]:
    mf = await hm.memflow()
    for _ in range(workers):
        await mf.worker(
            "q",
            workflows=[gathered_branches, nested_gathers],
            activities=[echo_after],
            poll_interval=0.05,
        )
    handle = await mf.workflow.start("order", name, f"order-{name}", args, "q")
    result = await handle.result(timeout=30)
    return result, await handle.export()


def _activity_args(export: Any) -> list[str]:
    return sorted(e.args[0] for e in export.timeline if e.kind == "activity")


def _assert_own_answers(export: Any) -> None:
    for entry in export.timeline:
        assert entry.status == "done", entry
        if entry.kind == "activity":
            assert entry.result == entry.args[0], f"step {entry.index} got another call's answer"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_gather_branches_keep_their_own_answers(hm: Harness, case: str, workers: int) -> None:
    tags, steps, delays = CASES[case]
    result, export = await _run(hm, "gathered_branches", [tags, steps, delays], workers)
    expected = [[f"{tag}-{step}" for step in range(1, steps + 1)] for tag in tags]
    assert result == expected
    _assert_own_answers(export)
    assert _activity_args(export) == sorted(text for answers in expected for text in answers)


async def test_the_reported_gather_defect(hm: Harness) -> None:
    """Two branches of two steps each, gathered: ``[["a-1","a-2"],["b-1","b-2"]]``,
    not ``[["a-1","b-1"],["b-1","b-2"]]``."""
    result, export = await _run(hm, "gathered_branches", [["a", "b"], 2, {"a-1": 60}], 1)
    assert result == [["a-1", "a-2"], ["b-1", "b-2"]]
    assert _activity_args(export) == ["a-1", "a-2", "b-1", "b-2"]


@pytest.mark.parametrize(
    "delays",
    [{}, {"x-1": 60, "w-1": 30}, {"w-1": 80, "y-2": 40, "z-1": 10}],
    ids=["even", "x-slow", "w-slow"],
)
async def test_nested_gathers_keep_their_own_answers(hm: Harness, delays: dict[str, int]) -> None:
    result, export = await _run(hm, "nested_gathers", [delays], 2)
    assert result == [[["x-1", "x-2"], ["y-1", "y-2"], ["z-1"]], ["w-1", "w-2", "w-3"]]
    _assert_own_answers(export)
    assert _activity_args(export) == ["w-1", "w-2", "w-3", "x-1", "x-2", "y-1", "y-2", "z-1"]


async def empty_child() -> str:
    return "child done"


async def quick_hook(config: dict[str, str]) -> None:
    await workflow.signal(config["signal"], "hook done")


async def _then_append(delays: dict[str, int]) -> list[Any]:
    acts = workflow.proxy_activities(activities=[echo_after])
    first = await acts.echo_after("a-1", delays.get("a-1", 0))
    entity = await workflow.entity()
    return [first, await entity.append("log", "a-2")]


async def _other_then_activity(other: str, delays: dict[str, int]) -> list[Any]:
    acts = workflow.proxy_activities(activities=[echo_after])
    answer: Any
    if other == "child":
        answer = await workflow.exec_child("order-child", "empty_child", args=[])
    elif other == "hook":
        answer = await workflow.exec_hook(None, "quick_hook", [])
    elif other == "sleep":
        await workflow.sleep_for(0.01)
        answer = None
    else:
        answer = await workflow.wait_for(f"go-{workflow.info().workflow_id}")
    return [answer, await acts.echo_after("b-2", delays.get("b-2", 0))]


async def other_races_inline_activity(other: str, delays: dict[str, int]) -> Any:
    return list(await asyncio.gather(_then_append(delays), _other_then_activity(other, delays)))


OTHER_ANSWERS = {"child": "child done", "hook": "hook done", "sleep": None, "signal": "go"}


@pytest.mark.parametrize("other", sorted(OTHER_ANSWERS))
async def test_an_answer_racing_an_inline_activity(hm: Harness, other: str) -> None:
    """Found by tests/test_replay_properties.py: while one branch's activity runs inline
    (on the worker that dispatched it), another branch's child, hook, timer or signal
    answers. Replay must hand each answer back in the activation that received it."""
    mf = await hm.memflow()
    await mf.worker(
        "q",
        workflows=[other_races_inline_activity, empty_child, quick_hook],
        activities=[echo_after],
        poll_interval=0.05,
    )
    job_id = f"race-{other}"
    handle = await mf.workflow.start(
        "order", "other_races_inline_activity", job_id, [other, {"a-1": 80}], "q"
    )
    if other == "signal":
        await asyncio.sleep(0.02)
        await mf.workflow.signal(f"go-{job_id}", "go")
    result = await handle.result(timeout=30)
    assert result == [["a-1", ["a-2"]], [OTHER_ANSWERS[other], "b-2"]]
    _assert_own_answers(await handle.export())


async def _activity_signal_activity(delays: dict[str, int]) -> list[Any]:
    acts = workflow.proxy_activities(activities=[echo_after])
    first = await acts.echo_after("a-1", delays.get("a-1", 0))
    signal = await workflow.wait_for(f"go-{workflow.info().workflow_id}")
    return [first, signal, await acts.echo_after("a-3", delays.get("a-3", 0))]


async def _two_activities_then_append(delays: dict[str, int]) -> list[Any]:
    acts = workflow.proxy_activities(activities=[echo_after])
    first = await acts.echo_after("b-1", delays.get("b-1", 0))
    second = await acts.echo_after("b-2", delays.get("b-2", 0))
    entity = await workflow.entity()
    return [first, second, await entity.append("log", "b-3")]


async def signal_races_inline_activity(delays: dict[str, int]) -> Any:
    return list(
        await asyncio.gather(_activity_signal_activity(delays), _two_activities_then_append(delays))
    )


@pytest.mark.parametrize("signal_after_ms", [0, 1, 3, 6, 10])
@pytest.mark.parametrize("b2_delay", [0, 20])
async def test_an_inline_command_gets_its_own_answer(
    hm: Harness, b2_delay: int, signal_after_ms: int
) -> None:
    """Found by tests/test_replay_properties.py: the signal is already there when the
    wait is issued, so a run delivers it while b-2 runs inline; the append after b-2
    must get the entity's list, never the (pending) answer of another call."""
    mf = await hm.memflow()
    await mf.worker(
        "q",
        workflows=[signal_races_inline_activity],
        activities=[echo_after],
        poll_interval=0.05,
    )
    handle = await mf.workflow.start(
        "order", "signal_races_inline_activity", "inline-own", [{"b-2": b2_delay}], "q"
    )
    await asyncio.sleep(signal_after_ms / 1000)
    await mf.workflow.signal("go-inline-own", "go")  # kept until the wait is issued
    result = await handle.result(timeout=30)
    assert result == [["a-1", "go", "a-3"], ["b-1", "b-2", ["b-3"]]]
    _assert_own_answers(await handle.export())
