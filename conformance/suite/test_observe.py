"""Read-only views for people (``hotmesh ui``): pages of runs, queue stats, and the
entity's change log replayed to any version."""

from __future__ import annotations

import pytest

from conformance.plugin import Harness
from hotmesh_core import workflow
from hotmesh_core.models import Task
from hotmesh_core.observe import RunCursor, entity_at

pytestmark = pytest.mark.asyncio


async def remembers(word: str) -> int:
    entity = await workflow.entity()
    await entity.set({"word": word, "seen": [], "count": 0, "flags": {"on": False}})
    await entity.append("seen", word)
    await entity.prepend("seen", "first")
    await entity.increment("count", 2.5)
    await entity.toggle("flags.on")
    await entity.set_if_not_exists("flags.extra", {"x": [1, None]})
    await entity.merge({"flags": {"deep": {"er": True}}, "word": word.upper()})
    await entity.delete("seen")
    await entity.get()
    return 0


async def test_pages_of_runs_walk_every_run_once_newest_first(hm: Harness) -> None:
    mf = await hm.memflow()
    for n in range(9):
        entity = "even" if n % 2 == 0 else "odd"
        await mf.workflow.start(entity, "remembers", f"p-{n}", [f"w{n}"], task_queue="nobody")
    async with mf.backend.transaction(readonly=True) as tx:
        everything = await tx.store.page_jobs(limit=100)
    assert sorted(j.id for j in everything) == [f"p-{n}" for n in range(9)]
    keys = [RunCursor.after(j.created_at, j.id) for j in everything]
    assert keys == sorted(keys, reverse=True)

    seen: list[str] = []
    before = None
    while True:
        async with mf.backend.transaction(readonly=True) as tx:
            page = await tx.store.page_jobs(before=before, limit=2)
        if not page:
            break
        seen += [j.id for j in page]
        before = RunCursor.after(page[-1].created_at, page[-1].id)
    assert seen == [j.id for j in everything]

    async with mf.backend.transaction(readonly=True) as tx:
        odd = await tx.store.page_jobs(entity="odd", limit=100)
        assert {j.id for j in odd} == {"p-1", "p-3", "p-5", "p-7"}
        assert [j.id for j in await tx.store.page_jobs(id_prefix="p-8")] == ["p-8"]
        assert await tx.store.page_jobs(id_prefix="p_") == []  # _ is not a wildcard
        assert await tx.store.page_jobs(id_prefix="%") == []  # nor is %
        assert await tx.store.page_jobs(status="completed") == []
        pending = await tx.store.page_jobs(status="pending", workflow_name="remembers", limit=3)
        assert [j.id for j in pending] == [j.id for j in everything[:3]]
        middle = everything[4]
        window = await tx.store.page_jobs(
            created_from=middle.created_at, created_to=everything[1].created_at, limit=100
        )
        expected = [
            j.id for j in everything if middle.created_at <= j.created_at < everything[1].created_at
        ]
        assert [j.id for j in window] == expected and middle.id in expected


async def test_pages_filter_on_entity_fields_and_parents(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[remembers])
    for n in range(3):
        handle = await mf.workflow.start("memo", "remembers", f"m-{n}", [f"w{n}"], task_queue="q")
        await handle.result(timeout=20)
    async with mf.backend.transaction(readonly=True) as tx:
        found = await tx.store.page_jobs(entity="memo", where={"word": "W1", "flags.on": True})
        assert [j.id for j in found] == ["m-1"]
        assert await tx.store.page_jobs(entity="memo", where={"count": 3}) == []
        assert len(await tx.store.page_jobs(entity="memo", where={"count": 2.5})) == 3
        assert await tx.store.page_jobs(parent_id="m-1") == []


async def test_replaying_the_change_log_gives_each_version_the_backend_held(
    hm: Harness,
) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[remembers])
    handle = await mf.workflow.start("memo", "remembers", "r-1", ["hi"], task_queue="q")
    await handle.result(timeout=20)
    async with mf.backend.transaction(readonly=True) as tx:
        changes = await tx.store.entity_changes("r-1")
        job = await tx.store.get_job("r-1")
    assert job is not None and [c.version for c in changes] == list(range(1, job.version + 1))
    assert entity_at(changes, job.version) == job.context
    assert entity_at(changes, 0) == {}
    assert entity_at(changes, 3) == {
        "word": "hi",
        "seen": ["first", "hi"],
        "count": 0,
        "flags": {"on": False},
    }
    assert job.context == {
        "word": "HI",
        "count": 2.5,
        "flags": {"on": True, "extra": {"x": [1, None]}, "deep": {"er": True}},
    }


async def test_queue_stats_count_ready_delayed_and_leased_tasks(hm: Harness) -> None:
    mf = await hm.memflow()

    def task(name: str) -> Task:
        return Task(queue="stats", kind="activity", job_id="j", dimension="", name=name, index=0)

    async with mf.backend.transaction() as tx:
        assert await tx.stream.queue_stats() == []
        await tx.stream.enqueue(task("ready-1"))
        await tx.stream.enqueue(task("ready-2"))
        await tx.stream.enqueue(task("later"), delay=3600)
        await tx.stream.enqueue(task("mine"), owner="worker-a#3", lease=3600)
        await tx.stream.enqueue(
            Task(queue="stats", kind="timer", job_id="j", dimension="", name="t", index=1),
            delay=3600,
        )
    async with mf.backend.transaction(readonly=True) as tx:
        [stats] = await tx.stream.queue_stats()
    assert (stats.queue, stats.ready, stats.delayed, stats.leased) == ("stats", 2, 2, 1)
    assert stats.workers == ("worker-a",)
    assert stats.oldest_ready is not None and stats.oldest_ready <= mf.backend.now()
