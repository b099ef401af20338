"""Many concurrent writers on ONE entity: the final value is exact and its version
history has no hole and no repeat."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from harness import PrivateServer, Workers, outcome, patiently, report, stored_integrity

from hotmesh_core import MemFlow


async def contention(
    private_pg: PrivateServer,
    client: MemFlow,
    workers: Workers,
    *,
    writers: int,
    each: int,
    kill: bool,
) -> None:
    workers.start(3)
    began = time.monotonic()
    handle = await client.workflow.start("tally", "counter", "tally", ["tally"], workers.queue)
    deadline = time.monotonic() + 30
    while "count" not in await handle.state():
        assert time.monotonic() < deadline, "the counter never set its entity"
        await asyncio.sleep(0.05)

    async def writer(w: int) -> list[str]:
        ids = []
        for k in range(each):
            i = w * each + k
            ids.append(
                await patiently(
                    lambda i=i: client.workflow.hook("tally", workers.queue, "bump", [i])  # type: ignore[misc]
                )
            )
        return ids

    sending = asyncio.gather(*(writer(w) for w in range(writers)))
    if kill:
        await asyncio.sleep(0.3)
        workers.kill(workers.alive()[0])
        workers.start(1)
    hook_ids = [i for ids in await sending for i in ids]
    total = writers * each
    deadline = time.monotonic() + 120
    while True:
        audit = await patiently((await client.workflow.get_handle("tally")).export)
        done = [h for h in audit.hooks if h["status"] != "running"]
        if len(done) == total or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    await patiently(lambda: client.workflow.signal("close-tally", None))
    status, doc = await outcome(handle, timeout=60)
    wall = time.monotonic() - began
    audit = await (await client.workflow.get_handle("tally")).export()
    versions = [change["version"] for change in audit.entity_changes]
    ops = Counter(change["op"] for change in audit.entity_changes)
    integrity = stored_integrity(private_pg, client.app_id)
    report(
        f"{writers} concurrent writers on one entity",
        {
            "hooks sent": len(hook_ids),
            "kills injected": workers.kills,
            "hooks finished": len(done),
            "hook statuses": dict(Counter(h["status"] for h in audit.hooks)),
            "final count (must be total)": f"{doc.get('count') if status == 'completed' else doc}"
            f" / {total}",
            "items appended": len(doc.get("items", [])) if status == "completed" else None,
            "entity version": audit.version,
            "change ops": dict(ops),
            "versions contiguous": versions == list(range(1, audit.version + 1)),
            "steps recorded twice": integrity["duplicate_steps"],
            "wall time (s)": round(wall, 1),
        },
    )
    assert status == "completed", doc
    assert doc["count"] == total
    assert sorted(doc["items"]) == list(range(total))
    assert versions == list(range(1, audit.version + 1))
    assert audit.version == 1 + 2 * total  # the set, then one increment and one append each
    assert ops == Counter({"set": 1, "increment": total, "append": total})
    assert Counter(h["status"] for h in audit.hooks) == Counter({"completed": total})
    assert integrity["duplicate_steps"] == 0
    assert integrity["duplicate_entity_versions"] == 0
    assert not workers.dead(), workers.stderr()


async def test_50_concurrent_hooks_on_one_entity(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    await contention(private_pg, client, workers, writers=50, each=1, kill=False)


@pytest.mark.reliability
async def test_50_writers_200_hooks_on_one_entity_with_a_kill(
    private_pg: PrivateServer, client: MemFlow, workers: Workers
) -> None:
    await contention(private_pg, client, workers, writers=50, each=4, kill=True)
