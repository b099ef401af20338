"""The entity query language: operators, JSON type semantics, order, keyset pages.

Every backend must give these exact answers (hotmesh_core.entity_query documents
the semantics they encode).
"""

from __future__ import annotations

from typing import Any

import pytest

from conformance.plugin import Harness
from hotmesh_core import InvalidQuery, MemFlow, SerializationError, workflow
from hotmesh_core.entity_query import JobQuery, encode_cursor, parse_order

pytestmark = pytest.mark.asyncio


async def put(doc: dict[str, Any]) -> str:
    entity = await workflow.entity()
    await entity.set(doc)
    return "ok"


DOCS: dict[str, dict[str, Any]] = {
    "a": {"score": 0.9, "name": "ada", "tags": ["x", "y"], "premium": True, "p": {"tier": "gold"}},
    "b": {"score": 0.5, "name": "bob", "tags": ["y"], "premium": False, "p": {"tier": "silver"}},
    "c": {"score": 10, "name": "Cy", "tags": [], "premium": 1, "p": {"tier": "gold", "n": 3}},
    "d": {"score": "0.95", "name": "dee_", "premium": None, "p": "flat"},
    "e": {"score": None, "name": "é", "tags": ["x", ["z"]], "p": {}},
    "f": {"name": 5, "score": 0.8},
    "g": {},
}


async def people(hm: Harness) -> MemFlow:
    mf = await hm.memflow()
    await mf.worker("q", workflows=[put])
    for workflow_id, doc in DOCS.items():
        handle = await mf.workflow.start("person", "put", workflow_id, [doc], "q")
        await handle.result(timeout=20)
    other = await mf.workflow.start("other", "put", "z", [{"score": 0.99}], "q")
    await other.result(timeout=20)
    return mf


async def ids(mf: MemFlow, where: Any, order_by: str | None = "id") -> list[str]:
    return [r.workflow_id for r in await mf.entity.find("person", where, order_by=order_by)]


CASES: list[tuple[dict[str, Any], list[str]]] = [
    # Equality: True is not 1, 1 is 1.0, None is a stored null only, missing matches nothing.
    ({"premium": True}, ["a"]),
    ({"premium": 1}, ["c"]),
    ({"premium": None}, ["d"]),
    ({"score": 10.0}, ["c"]),
    ({"p.tier": "gold"}, ["a", "c"]),
    ({"p": {"tier": "silver"}}, ["b"]),
    ({"tags": ["y"]}, ["b"]),
    ({"p": {"$eq": "flat"}}, ["d"]),
    # Ranges: same JSON type only.
    ({"score": {"$gt": 0.5}}, ["a", "c", "f"]),
    ({"score": {"$gte": 0.5}}, ["a", "b", "c", "f"]),
    ({"score": {"$lt": 0.9}}, ["b", "f"]),
    ({"score": {"$lte": 0.9, "$gt": 0.5}}, ["a", "f"]),
    ({"score": {"$gt": "0"}}, ["d"]),
    ({"name": {"$gte": "b"}}, ["b", "d", "e"]),  # code points: "Cy" < "ada" < "é"
    ({"name": {"$lt": "a"}}, ["c"]),
    ({"p.n": {"$gt": 2}}, ["c"]),
    # $ne and $nin: the path must hold a value.
    ({"premium": {"$ne": True}}, ["b", "c", "d"]),
    ({"name": {"$nin": ["ada", "bob", 5]}}, ["c", "d", "e"]),
    ({"score": {"$in": [0.5, "0.95", 10]}}, ["b", "c", "d"]),
    ({"score": {"$in": []}}, []),
    # $exists: null exists; intermediate non-objects do not lead anywhere.
    ({"premium": {"$exists": True}}, ["a", "b", "c", "d"]),
    ({"premium": {"$exists": False}}, ["e", "f", "g"]),
    ({"p.tier": {"$exists": False}}, ["d", "e", "f", "g"]),
    # $contains: JSON containment.
    ({"tags": {"$contains": "x"}}, ["a", "e"]),
    ({"tags": {"$contains": ["x", "y"]}}, ["a"]),
    ({"tags": {"$contains": [["z"]]}}, ["e"]),
    ({"p": {"$contains": {"tier": "gold"}}}, ["a", "c"]),
    ({"p": {"$contains": {}}}, ["a", "b", "c", "e"]),
    ({"tags": {"$contains": []}}, ["a", "b", "c", "e"]),
    # $like: strings only, whole value, case-sensitive, \\ escapes.
    ({"name": {"$like": "%d%"}}, ["a", "d"]),
    ({"name": {"$like": "_o_"}}, ["b"]),
    ({"name": {"$like": "dee\\_"}}, ["d"]),
    ({"name": {"$like": "A%"}}, []),
    ({"name": {"$like": "5"}}, []),
    # AND, $or, $and.
    ({"p.tier": "gold", "premium": True}, ["a"]),
    ({"$or": [{"premium": True}, {"name": "bob"}]}, ["a", "b"]),
    (
        {"$or": [{"score": {"$gt": 5}}, {"tags": {"$contains": "x"}}], "name": {"$ne": "ada"}},
        ["c", "e"],
    ),
    ({"$and": [{"score": {"$gt": 0.1}}, {"score": {"$lt": 0.85}}]}, ["b", "f"]),
    ({}, ["a", "b", "c", "d", "e", "f", "g"]),
]


async def test_operators_give_the_same_answers_everywhere(hm: Harness) -> None:
    mf = await people(hm)
    for where, expected in CASES:
        assert await ids(mf, where) == expected, where
        assert await mf.entity.count("person", where) == len(expected), where


async def test_order_by_a_path_types_first_then_values_missing_last(hm: Harness) -> None:
    mf = await people(hm)
    # strings, then numbers, then booleans; the rest (null, missing) last, by id.
    assert await ids(mf, {}, "score") == ["d", "b", "f", "a", "c", "e", "g"]
    assert await ids(mf, {}, "-score") == ["c", "a", "f", "b", "d", "g", "e"]
    assert await ids(mf, {}, "premium") == ["c", "b", "a", "d", "e", "f", "g"]
    assert await ids(mf, {}, "name") == ["c", "a", "b", "d", "e", "f", "g"]
    assert await ids(mf, {}, "-id") == ["g", "f", "e", "d", "c", "b", "a"]


@pytest.mark.parametrize("order_by", ["score", "-score", "name", "-created_at", "id", None])
async def test_keyset_pages_cover_everything_once(hm: Harness, order_by: str | None) -> None:
    mf = await people(hm)
    whole = await ids(mf, {}, order_by)
    seen: list[str] = []
    page = await mf.entity.find("person", {}, limit=2, order_by=order_by)
    pages = 1
    while True:
        seen += [r.workflow_id for r in page]
        if page.cursor is None:
            break
        page = await mf.entity.find("person", {}, limit=2, order_by=order_by, after=page.cursor)
        pages += 1
    assert seen == whole
    assert pages == 4  # 7 rows, 2 a page: no empty last page


async def test_a_page_is_not_shifted_by_rows_added_before_it(hm: Harness) -> None:
    mf = await people(hm)
    first = await mf.entity.find("person", {}, limit=3, order_by="id")
    await (await mf.workflow.start("person", "put", "aa", [{}], "q")).result(timeout=20)
    rest = await mf.entity.find("person", {}, limit=10, order_by="id", after=first.cursor)
    assert [r.workflow_id for r in rest] == ["d", "e", "f", "g"]


async def test_find_one_get_and_records(hm: Harness) -> None:
    mf = await people(hm)
    one = await mf.entity.find_one("person", {"score": {"$gt": 0}}, order_by="-score")
    assert one is not None and one.workflow_id == "c" and one.context["score"] == 10
    assert await mf.entity.find_one("person", {"score": {"$gt": 100}}) is None
    record = await mf.entity.get("b")
    assert record is not None and record.entity == "person" and record.context["name"] == "bob"
    assert record.version == 1 and record.status == "completed"
    assert await mf.entity.get("nobody") is None


BAD: list[tuple[Any, str | None]] = [
    ({"score": {"$gt": True}}, "$gt"),
    ({"score": {"$gte": [1]}}, "$gte"),
    ({"score": {"$lt": None}}, "$lt"),
    ({"score": {"$in": 3}}, "$in"),
    ({"score": {"$nin": "abc"}}, "$nin"),
    ({"score": {"$exists": 1}}, "$exists"),
    ({"name": {"$like": 3}}, "$like"),
    ({"name": {"$like": "ab\\"}}, "$like"),
    ({"score": {"$regex": "x"}}, "$regex"),
    ({"$nor": [{"a": 1}]}, "$nor"),
    ({"$or": []}, "$or"),
    ({"$or": {"a": 1}}, "$or"),
    ({"score": {"$gt": 1, "plain": 2}}, None),
    ("score > 1", None),
]


async def test_bad_queries_raise_invalid_query_naming_the_operator(hm: Harness) -> None:
    mf = await people(hm)
    for where, operator in BAD:
        with pytest.raises(InvalidQuery) as caught:
            await mf.entity.find("person", where)
        assert caught.value.operator == operator, where
        if operator is not None:
            assert operator in str(caught.value)
    with pytest.raises(SerializationError):  # not JSON, as anywhere else
        await mf.entity.find("person", {"score": {"$gt": float("nan")}})
    for limit in (0, -1, 10_001):
        with pytest.raises(InvalidQuery):
            await mf.entity.find("person", {}, limit=limit)
    page = await mf.entity.find("person", {}, limit=2, order_by="score")
    with pytest.raises(InvalidQuery, match="another query"):
        await mf.entity.find("person", {}, limit=2, order_by="name", after=page.cursor)
    with pytest.raises(InvalidQuery):
        await mf.entity.find("person", {}, after="not-a-cursor")
    # A cursor whose key was tampered with (it is opaque, not signed): refused, typed.
    query = JobQuery(entity="person", order=parse_order("score"))
    for key in (["x", "y", 3, "z"], [1, 2], [{"a": 1}, 0, "", "a"]):
        with pytest.raises(InvalidQuery):
            await mf.entity.find("person", {}, order_by="score", after=encode_cursor(query, key))


async def test_create_index_is_idempotent_and_checked(hm: Harness) -> None:
    mf = await people(hm)
    name = await mf.entity.create_index("person", "score")
    assert await mf.entity.create_index("person", "score") == name
    assert await mf.entity.create_index("person", "name", kind="text") != name
    await mf.entity.create_index("person", kind="gin")
    await mf.entity.create_index("person", where={"premium": True})
    assert await ids(mf, {"score": {"$gt": 0.5}}) == ["a", "c", "f"]
    with pytest.raises(InvalidQuery):
        await mf.entity.create_index("person", "score", kind="hash")
    with pytest.raises(InvalidQuery):
        await mf.entity.create_index("person", "score", kind="gin")
    with pytest.raises(InvalidQuery):
        await mf.entity.create_index("person", kind="text")
