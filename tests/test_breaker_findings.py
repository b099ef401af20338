"""Defects found by an adversarial pass over replay-by-activations; one test each.

Each test is a minimal reproduction that runs on every installed backend
(through the conformance ``hm`` fixture). A test still marked ``xfail(strict)``
documents a defect that is not fixed yet; once fixed it passes and the mark goes.
"""

from __future__ import annotations

import asyncio

import pytest

from conformance.plugin import Harness
from hotmesh_core import workflow

pytestmark = pytest.mark.asyncio


# -- 1. an inline continuation replays a stale history -------------------------


async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slow"


async def echo(text: str) -> str:
    return text


async def slow_then_echo() -> str:
    acts = workflow.proxy_activities(activities=[slow, echo])
    await acts.slow(0.5)  # index 0: run inline by the dispatching worker, for 0.5 s
    return str(await acts.echo("after-slow"))


async def sleep_then_echo() -> str:
    acts = workflow.proxy_activities(activities=[slow, echo])
    await workflow.sleep_for(0.05)  # index 1: answered long before index 0
    return str(await acts.echo("after-sleep"))


async def slow_activity_races_a_sleep() -> list[str]:
    return list(await asyncio.gather(slow_then_echo(), sleep_then_echo()))


async def test_an_inline_continuation_does_not_reuse_an_activation(hm: Harness) -> None:
    """The sleep's run delivers index 1 as activation 1 and records echo("after-sleep")
    at index 2. The continuation of the slow activity then replays the history it read
    before that (index 1 still pending), delivers index 0 as activation 1 too, and
    issues echo("after-slow") at index 2: its insert is silently skipped. The next run
    replays activation 1 as {0, 1}: the slow branch resumes first, issues
    echo("after-slow") at index 2, and the unchanged workflow fails with
    NonDeterminismError (before the fix)."""
    mf = await hm.memflow()
    await mf.worker("q", workflows=[slow_activity_races_a_sleep], activities=[slow, echo])
    handle = await mf.workflow.start("t", "slow_activity_races_a_sleep", "stale", [], "q")
    assert await handle.result(timeout=20) == ["after-slow", "after-sleep"]
    timeline = (await handle.export()).timeline
    assert sorted((e.name, str(e.args)) for e in timeline) == sorted(
        [
            ("slow", "[0.5]"),
            ("sleep", "0.05"),
            ("echo", "['after-slow']"),
            ("echo", "['after-sleep']"),
        ]
    )
