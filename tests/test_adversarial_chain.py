"""Adversarial tests of inline chains held under the run task's lease
(Engine.hold_deferred / Worker._run_deferred), on both backends."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from test_adversarial_adv4 import BACKENDS, app, until

from hotmesh_core import RetryPolicy, workflow
from hotmesh_core.errors import WorkflowCancelled, WorkflowInterrupted

CALLS: dict[str, int] = {}
GATES: dict[str, asyncio.Event] = {}
FAILS: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    GATES.clear()
    FAILS.clear()


async def step(key: str, i: int, total: int) -> int:
    name = f"{key}-{i}"
    CALLS[name] = CALLS.get(name, 0) + 1
    if name in GATES:
        await GATES[name].wait()
    if FAILS.get(name, 0) > 0:
        FAILS[name] -= 1
        raise RuntimeError(f"{name} fails")
    return total + i * 10 + 1


ACTS = [step]
RETRY = RetryPolicy(maximum_attempts=4, initial_interval=0.05)


async def chain(key: str, n: int) -> int:
    acts = workflow.proxy_activities(activities=[step], retry_policy=RETRY)
    total = 0
    for i in range(n):
        total = await acts.step(key, i, total)
    return total


def expected(n: int, start: int = 0) -> int:
    total = start
    for i in range(n):
        total = total + i * 10 + 1
    return total


def activity_steps(export: Any) -> list[tuple[Any, ...]]:
    return [
        (e.index, e.status, e.result, e.attempts) for e in export.timeline if e.kind == "activity"
    ]


# (a) crash mid-chain ----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("at", [1, 3])
async def test_a_worker_crash_mid_chain_then_a_new_worker(backend: str, at: int) -> None:
    key = f"crash-{uuid.uuid4().hex[:6]}"
    n = 5
    GATES[f"{key}-{at}"] = asyncio.Event()
    async with app(backend) as mf:
        w1 = await mf.worker("q", workflows=[chain], activities=ACTS, lease=0.5)
        handle = await mf.workflow.start("t", "chain", key, [key, n], "q")
        await until(lambda: CALLS.get(f"{key}-{at}") == 1, what="gated step")
        await w1.stop(drain=False)
        GATES[f"{key}-{at}"].set()
        await mf.worker("q", workflows=[chain], activities=ACTS, lease=0.5)
        assert await handle.result(timeout=15) == expected(n)
        steps = activity_steps(await handle.export())
        assert [s[0] for s in steps] == list(range(n)), steps
        assert all(s[1] == "done" and s[3] == 1 for s in steps), steps
        for i in range(n):
            if i != at:
                assert CALLS[f"{key}-{i}"] == 1, (i, CALLS)
        assert CALLS[f"{key}-{at}"] in (1, 2)


# (b) cancel / interrupt mid-chain ------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["cancel", "interrupt"])
async def test_b_cancel_or_interrupt_mid_chain(backend: str, how: str) -> None:
    key = f"stop-{uuid.uuid4().hex[:6]}"
    n = 5
    GATES[f"{key}-2"] = asyncio.Event()
    async with app(backend) as mf:
        await mf.worker("q", workflows=[chain], activities=ACTS, lease=2)
        handle = await mf.workflow.start("t", "chain", key, [key, n], "q")
        await until(lambda: CALLS.get(f"{key}-2") == 1, what="gated step")
        assert await getattr(handle, how)("stop") is True
        GATES[f"{key}-2"].set()
        with pytest.raises(WorkflowCancelled if how == "cancel" else WorkflowInterrupted):
            await handle.result(timeout=10)
        await asyncio.sleep(0.3)
        assert f"{key}-3" not in CALLS and f"{key}-4" not in CALLS, CALLS
        steps = activity_steps(await handle.export())
        assert all(s[0] <= 2 for s in steps), steps
        assert await handle.status() in ("cancelled", "interrupted", "failed"), (
            await handle.status()
        )


# (c) retry mid-chain -----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_c_retry_mid_chain(backend: str) -> None:
    key = f"retry-{uuid.uuid4().hex[:6]}"
    n = 6
    FAILS[f"{key}-2"] = 2
    FAILS[f"{key}-4"] = 1
    async with app(backend) as mf:
        await mf.worker("q", workflows=[chain], activities=ACTS)
        handle = await mf.workflow.start("t", "chain", key, [key, n], "q")
        assert await handle.result(timeout=15) == expected(n)
        steps = activity_steps(await handle.export())
        assert [s[0] for s in steps] == list(range(n)), steps
        assert [s[3] for s in steps] == [1, 1, 3, 1, 2, 1], steps
        assert {f"{key}-{i}": (3 if i == 2 else 2 if i == 4 else 1) for i in range(n)} == CALLS


# (d) gather inside a chain ---------------------------------------------------------------


async def chain_gather(key: str) -> list[int]:
    acts = workflow.proxy_activities(activities=[step], retry_policy=RETRY)
    a = await acts.step(key, 0, 0)
    b = await acts.step(key, 1, a)
    c = await asyncio.gather(acts.step(key, 2, b), acts.step(key, 3, b), acts.step(key, 4, b))
    d = await acts.step(key, 5, sum(c))
    e = await asyncio.gather(acts.step(key, 6, d), acts.step(key, 7, d))
    return [a, b, *c, d, *e]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_d_gather_inside_chain(backend: str) -> None:
    key = f"gat-{uuid.uuid4().hex[:6]}"
    FAILS[f"{key}-3"] = 1
    async with app(backend) as mf:
        await mf.worker("q", workflows=[chain_gather], activities=ACTS)
        handle = await mf.workflow.start("t", "chain_gather", key, [key], "q")
        got = await handle.result(timeout=15)
        a = 1
        b = a + 11
        c = [b + 21, b + 31, b + 41]
        d = sum(c) + 51
        assert got == [a, b, *c, d, d + 61, d + 71]
        steps = activity_steps(await handle.export())
        assert len(steps) == 8, steps
        assert CALLS[f"{key}-3"] == 2
        assert all(CALLS[f"{key}-{i}"] == 1 for i in range(8) if i != 3), CALLS


# (e) signal mid-chain for a later wait ---------------------------------------------------


async def chain_then_wait(key: str, n: int) -> list[Any]:
    acts = workflow.proxy_activities(activities=[step])
    total = 0
    for i in range(n):
        total = await acts.step(key, i, total)
    got = await workflow.wait_for(f"{key}-sig")
    total2 = await acts.step(key, n, total)
    return [total, got, total2]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_e_signal_mid_chain(backend: str) -> None:
    key = f"sig-{uuid.uuid4().hex[:6]}"
    n = 5
    GATES[f"{key}-2"] = asyncio.Event()
    async with app(backend) as mf:
        await mf.worker("q", workflows=[chain_then_wait], activities=ACTS)
        handle = await mf.workflow.start("t", "chain_then_wait", key, [key, n], "q")
        await until(lambda: CALLS.get(f"{key}-2") == 1, what="gated step")
        await mf.workflow.signal(f"{key}-sig", {"x": 1})
        GATES[f"{key}-2"].set()
        total = expected(n)
        assert await handle.result(timeout=10) == [total, {"x": 1}, total + n * 10 + 1]


# (f) sleep / entity / child after inline steps -------------------------------------------


async def child_wf(key: str) -> int:
    acts = workflow.proxy_activities(activities=[step])
    return await acts.step(key, 100, 0)


async def chain_mixed(key: str) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[step])
    a = await acts.step(key, 0, 0)
    b = await acts.step(key, 1, a)
    await workflow.sleep_for(0.05)
    c = await acts.step(key, 2, b)
    d = await acts.step(key, 3, c)
    entity = await workflow.entity()
    await entity.merge({"d": d})
    e = await acts.step(key, 4, d)
    f = await acts.step(key, 5, e)
    child = await workflow.exec_child("t", "child_wf", f"{key}-child", [key], "q")
    g = await acts.step(key, 6, f + child)
    return {"vals": [a, b, c, d, e, f, g], "child": child, "entity": await entity.get()}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_f_sleep_entity_child_after_inline_steps(backend: str) -> None:
    key = f"mix-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        await mf.worker("q", workflows=[chain_mixed, child_wf], activities=ACTS)
        handle = await mf.workflow.start("t", "chain_mixed", key, [key], "q")
        got = await handle.result(timeout=15)
        vals = [expected(i + 1) for i in range(6)]
        child = 100 * 10 + 1
        vals.append(vals[-1] + child + 61)
        assert got == {"vals": vals, "child": child, "entity": {"d": vals[3]}}
        assert all(CALLS[f"{key}-{i}"] == 1 for i in range(7)), CALLS
        assert CALLS[f"{key}-100"] == 1


# (g) continue_as_new after an inline chain --------------------------------------------


async def chain_can(key: str, gen: int, carried: int) -> list[int]:
    acts = workflow.proxy_activities(activities=[step])
    total = carried
    for i in range(4):
        total = await acts.step(f"{key}-g{gen}", i, total)
    if gen < 2:
        await workflow.continue_as_new(key, gen + 1, total)
    return [gen, total]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_g_continue_as_new_after_chain(backend: str) -> None:
    key = f"can-{uuid.uuid4().hex[:6]}"
    async with app(backend) as mf:
        await mf.worker("q", workflows=[chain_can], activities=ACTS)
        handle = await mf.workflow.start("t", "chain_can", key, [key, 0, 0], "q")
        total = expected(4, expected(4, expected(4)))
        assert await handle.result(timeout=15) == [2, total]
        assert all(CALLS[f"{key}-g{g}-{i}"] == 1 for g in range(3) for i in range(4)), CALLS


# (h) many concurrent chains --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_h_200_chains_concurrency_5(backend: str) -> None:
    n = 5
    async with app(backend) as mf:
        await mf.worker("q", workflows=[chain], activities=ACTS, concurrency=5)
        handles = [
            await mf.workflow.start("t", "chain", f"many-{k}", [f"many-{k}", n], "q")
            for k in range(200)
        ]
        results = await asyncio.wait_for(
            asyncio.gather(*(h.result(timeout=50) for h in handles)), 55
        )
        assert results == [expected(n)] * 200
        assert all(CALLS[f"many-{k}-{i}"] == 1 for k in range(200) for i in range(n))
        for h in handles[:20]:
            steps = activity_steps(await h.export())
            assert [s[0] for s in steps] == list(range(n)) and all(s[3] == 1 for s in steps)


# (i) the held commit itself: die before / after it --------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("when", ["before", "after"])
async def test_i_dying_around_the_held_commit(backend: str, when: str) -> None:
    key = f"held-{uuid.uuid4().hex[:6]}"
    n = 6
    async with app(backend) as mf:
        w1 = await mf.worker("q", workflows=[chain], activities=ACTS, lease=0.5)
        original = w1.engine.hold_deferred
        count = {"n": 0}
        hung = asyncio.Event()

        async def hold(*args: Any, **kwargs: Any) -> Any:
            count["n"] += 1
            if count["n"] == 3:
                if when == "after":
                    await original(*args, **kwargs)
                hung.set()
                await asyncio.Event().wait()
            return await original(*args, **kwargs)

        w1.engine.hold_deferred = hold  # type: ignore[method-assign]
        handle = await mf.workflow.start("t", "chain", key, [key, n], "q")
        await asyncio.wait_for(hung.wait(), 10)
        await w1.stop(drain=False)
        await mf.worker("q", workflows=[chain], activities=ACTS, lease=0.5)
        assert await handle.result(timeout=15) == expected(n)
        steps = activity_steps(await handle.export())
        assert [s[0] for s in steps] == list(range(n)), steps
        assert all(s[1] == "done" and s[3] == 1 for s in steps), steps
        reran = {k: v for k, v in CALLS.items() if v != 1}
        # committed steps must never run again; at most the one uncommitted step
        assert len(reran) <= 1 and all(v == 2 for v in reran.values()), CALLS
        if when == "after":
            assert reran == {}, CALLS


# (j) two workers, one crashes mid-chain with an entity side effect -----------------------


async def chain_entity(key: str, n: int) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[step])
    entity = await workflow.entity()
    total = 0
    for i in range(n):
        total = await acts.step(key, i, total)
        if i == n // 2:
            await entity.append("notes", total)
    return {"total": total, "entity": await entity.get()}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_j_crash_after_entity_in_chain(backend: str) -> None:
    key = f"ent-{uuid.uuid4().hex[:6]}"
    n = 6
    GATES[f"{key}-4"] = asyncio.Event()
    async with app(backend) as mf:
        w1 = await mf.worker("q", workflows=[chain_entity], activities=ACTS, lease=0.5)
        handle = await mf.workflow.start("t", "chain_entity", key, [key, n], "q")
        await until(lambda: CALLS.get(f"{key}-4") == 1, what="gated step")
        await w1.stop(drain=False)
        GATES[f"{key}-4"].set()
        await mf.worker("q", workflows=[chain_entity], activities=ACTS, lease=0.5)
        got = await handle.result(timeout=15)
        assert got == {"total": expected(n), "entity": {"notes": [expected(n // 2 + 1)]}}
        export = await handle.export()
        assert [c["version"] for c in export.entity_changes] == [1]
        assert all(CALLS[f"{key}-{i}"] == 1 for i in range(n) if i != 4), CALLS


# (k) a step longer than the lease, two live workers ----------------------------------------


async def slow_step(key: str, i: int, total: int) -> int:
    name = f"{key}-{i}"
    CALLS[name] = CALLS.get(name, 0) + 1
    if i == 2:
        await asyncio.sleep(1.0)
    return total + i * 10 + 1


async def slow_chain(key: str, n: int) -> int:
    acts = workflow.proxy_activities(activities=[slow_step])
    total = 0
    for i in range(n):
        total = await acts.slow_step(key, i, total)
    return total


@pytest.mark.parametrize("backend", BACKENDS)
async def test_k_step_longer_than_lease(backend: str) -> None:
    key = f"slow-{uuid.uuid4().hex[:6]}"
    n = 5
    async with app(backend) as mf:
        for _ in range(2):
            await mf.worker("q", workflows=[slow_chain], activities=[slow_step], lease=0.3)
        handle = await mf.workflow.start("t", "slow_chain", key, [key, n], "q")
        assert await handle.result(timeout=15) == expected(n)
        steps = activity_steps(await handle.export())
        assert [s[0] for s in steps] == list(range(n)), steps
        assert all(CALLS[f"{key}-{i}"] == 1 for i in range(n) if i != 2), CALLS
        print("slow step ran", CALLS[f"{key}-2"])
