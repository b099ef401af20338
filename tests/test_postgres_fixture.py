"""The ``postgres_memflow`` fixture users get from ``hotmesh_core.testing``."""

from hotmesh_core import MemFlow, workflow


async def counter(n: int) -> int:
    entity = await workflow.entity()
    for _ in range(n):
        await entity.increment("count")
    return await entity.get("count")  # type: ignore[no-any-return]


async def test_a_real_database_per_test(postgres_memflow: MemFlow) -> None:
    assert postgres_memflow.backend.name == "postgres"
    await postgres_memflow.worker("q", workflows=[counter])
    handle = await postgres_memflow.workflow.start("c", "counter", "c1", [3], "q")
    assert await handle.result(timeout=10) == 3
    assert (await handle.export()).version == 3
