"""The fault-injecting backend, and the soak that hunts engine defects with it.

The soaks assert zero lost and zero wrong workflows over many seeds; a failure
prints every failing seed with the command that replays it.  Budgets: about
60 s on memory and 30 s on PostgreSQL in the normal run; set
``HOTMESH_SOAK_SECONDS`` for a longer soak on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from conformance.faults import CrashScope, FaultsBackend, InjectedCrash, in_scope
from conformance.faults.soak import SoakConfig, soak
from conformance.faults.workload import WORKFLOWS, Activities
from hotmesh_core import BackendUnavailable, MemFlow, workflow
from hotmesh_core.models import Job
from hotmesh_core.plugins import backend_test_options, capabilities, installed_backends

MEMORY_SECONDS = float(os.environ.get("HOTMESH_SOAK_MEMORY_SECONDS", "60"))
POSTGRES_SECONDS = float(os.environ.get("HOTMESH_SOAK_POSTGRES_SECONDS", "30"))
LONG_SECONDS = float(os.environ.get("HOTMESH_SOAK_SECONDS", "0"))


async def faults(**options: object) -> MemFlow:
    return await MemFlow.init(app_id="faults-unit", backend="faults", inner="memory", **options)


def test_registered_as_an_opt_in_plugin() -> None:
    assert "faults" in installed_backends()
    assert "opt_in" in capabilities("faults")  # not in the suite's default run


async def test_options_reach_the_inner_backend() -> None:
    mf = await faults(clock="virtual", seed=3)
    assert isinstance(mf.backend, FaultsBackend)
    assert mf.backend.inner.name == "memory"
    assert mf.clock is not None and mf.clock.virtual
    await mf.shutdown()


def test_injected_crash_is_not_an_exception() -> None:
    assert not issubclass(InjectedCrash, Exception)


async def test_a_call_lost_before_it_runs_rolls_the_transaction_back() -> None:
    mf = await faults(p_lose_before=1.0, budget=1, client_faults=True)
    job = Job(id="j", entity="e", workflow_name="w", task_queue="q")
    with pytest.raises(BackendUnavailable, match="before BEGIN"):
        async with mf.backend.transaction() as tx:
            await tx.store.create_job(job)  # the BEGIN is the one fault: this never runs
    async with mf.backend.transaction() as tx:
        assert await tx.store.get_job("j") is None
    await mf.shutdown()
    # A fault after the first call: the COMMIT of a transaction that created the job.
    mf = await faults(p_lose_before=0.5, budget=1, client_faults=True, seed=2)
    outcomes = []
    for attempt in range(20):
        try:
            async with mf.backend.transaction() as tx:
                await tx.store.create_job(
                    Job(id=f"j{attempt}", entity="e", workflow_name="w", task_queue="q")
                )
            outcomes.append(True)
        except BackendUnavailable:
            outcomes.append(False)
    async with mf.backend.transaction() as tx:
        stored = [await tx.store.get_job(f"j{attempt}") is not None for attempt in range(20)]
    assert stored == outcomes and False in outcomes  # failed ones left nothing behind
    await mf.shutdown()


async def test_a_commit_lost_after_it_happened_is_ambiguous() -> None:
    mf = await faults(p_lose_after=1.0, budget=1, client_faults=True)
    with pytest.raises(BackendUnavailable):
        await mf.workflow.start("e", "seq3", "started-once", ["t", 1], "q")
    assert await (await mf.workflow.get_handle("started-once")).status() == "pending"
    await mf.workflow.start("e", "seq3", "started-once", ["t", 1], "q")  # idempotent retry
    assert mf.backend.injected == {"lose_after": 1}
    await mf.shutdown()


async def test_clients_see_no_lost_connections_unless_asked() -> None:
    mf = await faults(p_lose_before=1.0, p_lose_after=1.0, budget=100)
    await mf.workflow.start("e", "seq3", "calm", ["t", 1], "q")
    assert sum(mf.backend.injected.values()) == 0
    await mf.shutdown()


async def test_a_crash_kills_only_a_supervised_worker_and_for_good() -> None:
    mf = await faults(p_crash=1.0, budget=1)
    backend = mf.backend
    assert isinstance(backend, FaultsBackend)
    async with backend.transaction():
        pass  # a client: never crashed
    scope = CrashScope("w")

    async def commit_twice() -> None:
        async with backend.transaction():
            pass
        async with backend.transaction():
            pass

    with pytest.raises(InjectedCrash, match="crashed after a write commit"):
        await in_scope(scope, commit_twice())
    assert scope.dead and scope.died.is_set()
    with pytest.raises(InjectedCrash, match="is dead"):
        await in_scope(scope, commit_twice())  # budget spent, but the dead stay dead
    await mf.shutdown()


async def test_perturbed_wake_ups_only_slow_things_down() -> None:
    mf = await faults(p_wake=1.0, budget=1000, seed=5)
    await mf.worker("q", workflows=WORKFLOWS, activities=Activities().functions())
    handle = await mf.workflow.start("e", "fanout", "woken", ["woken", 3], "q")
    assert await handle.result(timeout=30) == ["woken-0", "woken-1", "woken-2"]
    assert {"wake_early", "wake_late", "wake_drop"} & set(mf.backend.injected)
    await mf.shutdown()


async def test_a_workflow_outside_the_soak_still_runs_under_faults() -> None:
    async def doubled(x: int) -> int:
        acts = workflow.proxy_activities(activities=["inc"])
        return await acts.inc("d", x) * 2  # type: ignore[no-any-return]

    mf = await faults(p_wake=0.5, seed=1)
    await mf.worker("q", workflows={"doubled": doubled}, activities=Activities().functions())
    assert await (await mf.workflow.start("e", "doubled", "d", [4], "q")).result(timeout=10) == 10
    await mf.shutdown()


def _assert_clean(report_text: str, lost: int, wrong: int) -> None:
    assert (lost, wrong) == (0, 0), report_text


# Every fault kind runs in CI (lost waits too, since the claim loop survives them).
CI_CONFIG: dict[str, float] = {}


async def test_a_failed_wait_does_not_stop_the_worker() -> None:
    mf = await faults(p_lose_wait=1.0, budget=1)
    await mf.worker(
        "q", workflows=WORKFLOWS, activities=Activities().functions(), poll_interval=0.05
    )
    await asyncio.sleep(0.3)  # idle: the first wait_for_tasks is the one fault
    assert mf.backend.injected == {"lose_wait": 1}
    handle = await mf.workflow.start("e", "seq3", "after-wait", ["w", 1], "q")
    try:
        assert await handle.result(timeout=5) == 4
    finally:
        with contextlib.suppress(BaseException):
            await mf.shutdown()


async def test_soak_on_memory() -> None:
    config = SoakConfig(inner="memory", **CI_CONFIG)
    report = await soak(range(100_000), config, time_limit=MEMORY_SECONDS)
    totals = report.totals()
    print(report.summary(details=False))
    assert totals["seeds"] >= 5
    _assert_clean(report.summary(), totals["lost"], totals["wrong"])


async def test_soak_on_postgres() -> None:
    options = backend_test_options("postgres")
    config = SoakConfig(inner="postgres", inner_options=options, **CI_CONFIG)
    report = await soak(range(100_000), config, time_limit=POSTGRES_SECONDS)
    totals = report.totals()
    print(report.summary(details=False))
    _assert_clean(report.summary(), totals["lost"], totals["wrong"])


@pytest.mark.skipif(not LONG_SECONDS, reason="set HOTMESH_SOAK_SECONDS for the long soak")
@pytest.mark.parametrize("inner", ["memory", "postgres"])
async def test_long_soak(inner: str) -> None:
    config = SoakConfig(inner=inner, inner_options=backend_test_options(inner), **CI_CONFIG)
    report = await soak(range(100_000), config, time_limit=LONG_SECONDS)
    totals = report.totals()
    print(report.summary(details=False))
    _assert_clean(report.summary(), totals["lost"], totals["wrong"])
