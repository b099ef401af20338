"""Entity operations: atomic, recorded, versioned, queryable."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import EntityPathError, workflow

# Async tests run under pytest-asyncio whatever the asyncio mode of the project running
# the suite (a third party runs it with `pytest --pyargs conformance`).
pytestmark = pytest.mark.asyncio


async def run_ops(ops: list[list[Any]]) -> list[Any]:
    """Apply [op, *args] in order; return each result (errors as their type name)."""
    entity = await workflow.entity()
    results: list[Any] = []
    for op, *args in ops:
        try:
            results.append(await getattr(entity, op)(*args))
        except EntityPathError as error:
            results.append(f"error:{type(error).__name__}")
    return results


async def apply(hm: Harness, ops: list[list[Any]]) -> tuple[list[Any], Any]:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[run_ops])
    handle = await mf.workflow.start("doc", "run_ops", "ops", [ops], "q")
    results = await handle.result(timeout=10)
    return results, handle


async def test_set_and_get(hm: Harness) -> None:
    results, handle = await apply(
        hm,
        [
            ["set", {"name": "Ada", "tags": ["x"]}],
            ["get"],
            ["get", "name"],
            ["get", "nope.deeper"],
        ],
    )
    assert results == [{"name": "Ada", "tags": ["x"]}, {"name": "Ada", "tags": ["x"]}, "Ada", None]
    assert await handle.state() == {"name": "Ada", "tags": ["x"]}


async def test_deep_merge(hm: Harness) -> None:
    results, handle = await apply(
        hm,
        [
            ["set", {"a": {"b": {"c": 1, "d": 2}, "keep": True}, "list": [1, 2]}],
            ["merge", {"a": {"b": {"c": 10, "e": {"f": 3}}}, "list": [3], "new": None}],
        ],
    )
    assert await handle.state() == {
        "a": {"b": {"c": 10, "d": 2, "e": {"f": 3}}, "keep": True},
        "list": [3],
        "new": None,
    }
    assert results[1] == await handle.state()


async def test_append_and_prepend(hm: Harness) -> None:
    results, handle = await apply(
        hm,
        [
            ["append", "log", "b"],
            ["append", "log", "c"],
            ["prepend", "log", "a"],
            ["append", "deep.nested.list", {"x": 1}],
        ],
    )
    assert results[:3] == [["b"], ["b", "c"], ["a", "b", "c"]]
    assert await handle.state() == {
        "log": ["a", "b", "c"],
        "deep": {"nested": {"list": [{"x": 1}]}},
    }


async def test_increment(hm: Harness) -> None:
    results, handle = await apply(
        hm,
        [
            ["increment", "n"],
            ["increment", "n", 5],
            ["increment", "score.total", 2.5],
            ["increment", "n", -2],
        ],
    )
    assert results == [1, 6, 2.5, 4]
    assert await handle.state() == {"n": 4, "score": {"total": 2.5}}


async def test_toggle(hm: Harness) -> None:
    results, _ = await apply(
        hm, [["toggle", "flags.on"], ["toggle", "flags.on"], ["toggle", "flags.on"]]
    )
    assert results == [True, False, True]


async def test_set_if_not_exists(hm: Harness) -> None:
    results, handle = await apply(
        hm,
        [
            ["set_if_not_exists", "owner", "ada"],
            ["set_if_not_exists", "owner", "bob"],
            ["set_if_not_exists", "a.b", 0],
        ],
    )
    assert results == ["ada", "ada", 0]
    assert await handle.state() == {"owner": "ada", "a": {"b": 0}}


async def test_delete(hm: Harness) -> None:
    results, handle = await apply(
        hm,
        [
            ["set", {"a": {"b": 1, "c": 2}, "d": 3}],
            ["delete", "a.b"],
            ["delete", "missing"],
            ["delete", "d"],
        ],
    )
    assert results[1:] == [1, None, 3]
    assert await handle.state() == {"a": {"c": 2}}


async def test_wrong_types_raise_entity_path_error_in_the_workflow(hm: Harness) -> None:
    results, handle = await apply(
        hm,
        [
            ["set", {"n": "text", "flag": 1, "obj": 5}],
            ["increment", "n"],
            ["toggle", "flag"],
            ["append", "obj", 1],
            ["get", "n"],
        ],
    )
    assert results[1:] == ["error:EntityPathError"] * 3 + ["text"]
    assert await handle.state() == {"n": "text", "flag": 1, "obj": 5}


async def test_versions_bump_on_every_change_only(hm: Harness) -> None:
    _, handle = await apply(
        hm,
        [
            ["set", {"a": 1}],
            ["get"],
            ["increment", "a"],
            ["set_if_not_exists", "a", 9],
            ["delete", "zzz"],
            ["merge", {"b": 2}],
        ],
    )
    export = await handle.export()
    assert export.version == 3
    assert [(c["version"], c["op"]) for c in export.entity_changes] == [
        (1, "set"),
        (2, "increment"),
        (3, "merge"),
    ]


async def counter_hook(times: int, config: dict[str, str]) -> None:
    entity = await workflow.entity()
    for _ in range(times):
        await entity.increment("counter")
    await workflow.signal(config["signal"], {"done": True})


async def contended(hooks: int, times: int) -> int:
    entity = await workflow.entity()
    await entity.set({"counter": 0})
    await asyncio.gather(*(workflow.exec_hook(None, "counter_hook", [times]) for _ in range(hooks)))
    return await entity.get("counter")  # type: ignore[no-any-return]


async def test_twenty_concurrent_hooks_lose_no_update(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[contended, counter_hook], concurrency=20)
    await mf.worker("q", workflows=[contended, counter_hook], concurrency=20)
    handle = await mf.workflow.start("counter", "contended", "c20", [20, 5], "q")
    assert await handle.result(timeout=60) == 100
    assert (await handle.export()).version == 101


async def make_user(premium: Any, score: int) -> str:
    entity = await workflow.entity()
    await entity.set({"isPremium": premium, "score": score, "profile": {"tier": "gold"}})
    return "ok"


async def test_find_by_json_field(hm: Harness) -> None:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[make_user])
    users = {"u1": (True, 5), "u2": (False, 7), "u3": (True, 9), "u4": (1, 3)}
    for user_id, (premium, score) in users.items():
        await (await mf.workflow.start("user", "make_user", user_id, [premium, score], "q")).result(
            timeout=10
        )
    await (await mf.workflow.start("other", "make_user", "o1", [True, 1], "q")).result(timeout=10)
    found = await mf.entity.find("user", where={"isPremium": True}, order_by="-score")
    assert [record.workflow_id for record in found] == ["u3", "u1"]
    assert found[0].context["score"] == 9 and found[0].entity == "user"
    assert [
        r.workflow_id
        for r in await mf.entity.find("user", {"profile.tier": "gold"}, limit=2, order_by="score")
    ] == ["u4", "u1"]
    assert await mf.entity.find("user", {"isPremium": "yes"}) == []


async def test_find_rejects_bad_paths(hm: Harness) -> None:
    mf = await hm.memflow()
    with pytest.raises(EntityPathError):
        await mf.entity.find("user", {"a..b": 1})
