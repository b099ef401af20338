"""Group commit (hotmesh_core/group_commit.py): a worker's overlapping commits go
to the backend together, each applied as it would be alone.

The scheduling is driven by hand on PostgreSQL: a second connection holds the
rows of two jobs locked, so that the first two commits stay in flight and the
next ones must wait, and be grouped, when they land. Whole workflows on both
backends check that grouping changes nothing a user can see.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from conformance.suite.test_advance import _started, _step
from hotmesh_core import group_commit
from hotmesh_core.advance import Advance, Superseded
from hotmesh_core.group_commit import IN_FLIGHT, GroupCommit
from hotmesh_postgres.testing import test_dsn
from tests.test_adversarial_adv4 import BACKENDS, app, until
from tests.test_postgres_queue_plans import plus_one, three_steps

pytestmark = pytest.mark.asyncio


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting commits wait for a flight to land, however long (no LONGEST_WAIT):
    these tests hold flights by hand for longer than it."""
    monkeypatch.setattr(group_commit, "LONGEST_WAIT", 60.0)


def _deliver_first(job_id: str) -> Advance:
    """Record step 0 of ``job_id`` done and deliver it (activation 0 -> 1)."""
    return Advance(
        job_id, "", running=True, recorded=[_step(job_id, 0, "done")], delivered=(1, [0])
    )


async def _activations(mf: Any, job_ids: list[str]) -> dict[str, int]:
    async with mf.backend.transaction(readonly=True) as tx:
        return {job.id: job.activation for job in await tx.store.get_jobs(job_ids)}


async def _started_jobs(mf: Any, prefix: str, n: int) -> list[str]:
    jobs = [f"{prefix}{i}" for i in range(n)]
    for job_id in jobs:
        await _started(mf, job_id)
    return jobs


def _lock(conn: psycopg.Connection[Any], mf: Any, job_ids: list[str]) -> None:
    """Hold the rows of ``job_ids`` in ``conn``'s transaction (until its rollback)."""
    conn.execute(f'SELECT 1 FROM "{mf.app_id}".jobs WHERE id = ANY(%s) FOR UPDATE', [job_ids])


def _commit_each(mf: Any, commits: GroupCommit, jobs: list[str]) -> list[asyncio.Future[Any]]:
    """Each job's first delivery committed through ``commits``, all at once."""
    return [
        asyncio.ensure_future(commits.commit(mf.backend, _deliver_first(job_id))) for job_id in jobs
    ]


@pytest.mark.usefixtures("patient")
async def test_commits_that_wait_are_grouped_each_on_its_own() -> None:
    """Two commits held in flight; four wait. The four go as one group when a
    flight lands: the superseded one raises Superseded as it would alone, the
    one cancelled while it waited is never applied, the others commit."""
    assert IN_FLIGHT == 2
    async with app("postgres") as mf:
        jobs = await _started_jobs(mf, "g", 6)
        async with mf.backend.transaction(single=True) as tx:  # g3: delivered elsewhere
            await tx.store.advance(_deliver_first("g3"))
        commits = GroupCommit()
        with psycopg.connect(test_dsn()) as locker:
            _lock(locker, mf, ["g0", "g1"])
            out = _commit_each(mf, commits, jobs)
            await asyncio.sleep(0.3)  # g0 and g1 in flight, blocked; g2-g5 waiting
            assert not any(task.done() for task in out)
            out[4].cancel()
            await asyncio.sleep(0.05)
            locker.rollback()
        results = await asyncio.gather(*out, return_exceptions=True)
    assert commits.groups == 1
    assert [type(r).__name__ for r in results] == [
        "Advanced",
        "Advanced",
        "Advanced",
        "Superseded",
        "CancelledError",
        "Advanced",
    ]
    assert isinstance(results[3], Superseded)


@pytest.mark.usefixtures("patient")
async def test_a_cancelled_wait_leaves_its_job_untouched_and_the_rest_commit() -> None:
    async with app("postgres") as mf:
        jobs = await _started_jobs(mf, "c", 5)
        commits = GroupCommit()
        with psycopg.connect(test_dsn()) as locker:
            _lock(locker, mf, ["c0", "c1"])
            out = _commit_each(mf, commits, jobs)
            await asyncio.sleep(0.3)
            out[2].cancel()  # the first in line: it would have led the group
            await asyncio.sleep(0.05)
            locker.rollback()
        results = await asyncio.gather(*out, return_exceptions=True)
        activations = await _activations(mf, jobs)
    assert isinstance(results[2], asyncio.CancelledError)
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 2)
    assert activations == {"c0": 1, "c1": 1, "c2": 0, "c3": 1, "c4": 1}


@pytest.mark.usefixtures("patient")
async def test_an_advance_of_a_group_that_would_wait_on_a_lock_gives_way() -> None:
    """A grouped advance whose job another transaction holds waits 50 ms at most
    (it would hold the group's other jobs meanwhile): it is applied again alone,
    and waits there; the rest of its group commits without it."""
    async with app("postgres") as mf:
        jobs = await _started_jobs(mf, "h", 6)
        commits = GroupCommit()
        with psycopg.connect(test_dsn()) as flights, psycopg.connect(test_dsn()) as holder:
            _lock(flights, mf, ["h0", "h1"])
            _lock(holder, mf, ["h3"])
            out = _commit_each(mf, commits, jobs)
            await asyncio.sleep(0.3)
            flights.rollback()  # h0, h1 land; h2-h5 go as a group
            await until(lambda: all(out[i].done() for i in (0, 1, 2, 4, 5)), what="the group")
            assert not out[3].done()  # waiting alone for its lock
            assert (await _activations(mf, ["h3"]))["h3"] == 0
            holder.rollback()
        await asyncio.gather(*out)
        assert await _activations(mf, jobs) == {job_id: 1 for job_id in jobs}
    assert commits.groups == 1


async def test_commits_stuck_behind_two_locked_flights_go_after_the_longest_wait() -> None:
    """Both flights wait on row locks another transaction holds: the commits
    that come meanwhile do not wait for them. After LONGEST_WAIT the first
    leads a group of all four, which commits while the locks are still held."""
    async with app("postgres") as mf:
        jobs = await _started_jobs(mf, "s", 6)
        commits = GroupCommit()
        with psycopg.connect(test_dsn()) as locker:
            _lock(locker, mf, ["s0", "s1"])
            out = _commit_each(mf, commits, jobs)
            await until(lambda: all(task.done() for task in out[2:]), what="the waiting four")
            assert not out[0].done() and not out[1].done()
            assert commits.groups == 1
            locker.rollback()
        await asyncio.gather(*out)
        assert await _activations(mf, jobs) == {job_id: 1 for job_id in jobs}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_many_workflows_on_one_worker_each_step_recorded_once(backend: str) -> None:
    """200 three-step workflows at once on a worker of 20: results, and each
    job's history exactly its three steps delivered one activation apart."""
    async with app(backend) as mf:
        worker = await mf.worker(
            "gc", workflows=[three_steps], activities=[plus_one], concurrency=20
        )
        handles = [
            await mf.workflow.start("gc", "three_steps", args=[i], task_queue="gc")
            for i in range(200)
        ]
        assert [await h.result(timeout=60) for h in handles] == [i + 3 for i in range(200)]
        for handle in handles[::20]:
            async with mf.backend.transaction(readonly=True) as tx:
                steps = await tx.store.load_steps(handle.workflow_id)
            assert [(s.index, s.status, s.activation) for s in steps] == [
                (0, "done", 1),
                (1, "done", 2),
                (2, "done", 3),
            ]
        if backend == "postgres":
            assert worker._local.commits.groups > 0  # the commits did overlap, and were grouped
