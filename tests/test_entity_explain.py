"""PostgreSQL: every query operator compiles to SQL that a matching index serves.

Each test explains the very statement ``mf.entity.find`` sends, with its
parameters bound, on a table of a few hundred entities. The table is small, so
``enable_seqscan = off`` leaves the choice to the indexes; what is checked is
that the SQL's shape lets the planner use the index made for it (the index
must appear as an index condition, not a filter over another index).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from hotmesh_core import MemFlow
from hotmesh_core.entity_query import JobQuery, parse_order, parse_where
from hotmesh_postgres.backend import PgTransaction
from hotmesh_postgres.entity_query import compile_query
from hotmesh_postgres.rows import JOB_COLUMNS
from hotmesh_postgres.testing import test_dsn

pytestmark = pytest.mark.asyncio

ROWS = 400


@pytest_asyncio.fixture
async def mf() -> AsyncIterator[MemFlow]:
    app_id = f"t{uuid.uuid4().hex[:20]}"
    opened = await MemFlow.init(
        app_id=app_id, backend="postgres", dsn=test_dsn(), drop_on_close=True
    )
    try:
        with psycopg.connect(test_dsn(), autocommit=True) as conn:
            docs = [
                (
                    f"u{i:04}",
                    "user" if i % 4 else "admin",
                    json.dumps(
                        {
                            "score": i / 10,
                            "name": f"name{i:04}",
                            "isPremium": i % 7 == 0,
                            "tags": [f"t{i % 13}"],
                            "profile": {"tier": "gold" if i % 5 == 0 else "basic"},
                        }
                    ),
                )
                for i in range(ROWS)
            ]
            with conn.cursor() as cursor:
                cursor.executemany(
                    f'INSERT INTO "{app_id}".jobs (id, entity, workflow_name, task_queue, context)'
                    " VALUES (%s, %s, 'wf', 'q', %s::jsonb)",
                    docs,
                )
            conn.execute(f'ANALYZE "{app_id}".jobs')
        yield opened
    finally:
        await opened.shutdown()


async def plan(
    mf: MemFlow, where: dict[str, Any], order_by: str | None = None, entity: str | None = "user"
) -> str:
    """EXPLAIN of the statement find() sends for ``where``, parameters bound.

    ``entity=None`` leaves out the entity condition, for operators that match
    most rows ($ne, $nin, $exists: True): with it, the planner rightly prefers
    the entity index; without it, the only alternative to the index is the
    (disabled) sequential scan, which shows the condition's shape is indexable.
    """
    query = JobQuery(where=parse_where(where), entity=entity, order=parse_order(order_by), limit=10)
    statement, params = compile_query(query, JOB_COLUMNS)
    async with mf.backend.transaction() as opened:
        tx = cast(PgTransaction, opened)
        await tx.run("SET LOCAL enable_seqscan = off", [])
        rows = await tx.all(sql.SQL("EXPLAIN ") + statement, params)
    return "\n".join(str(next(iter(row.values()))) for row in rows)


def index_children(mf: MemFlow, name: str) -> list[str]:
    with psycopg.connect(test_dsn()) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = %s::regclass ORDER BY 1",
                [f'"{mf.app_id}".{name}'],
            )
        ]


def uses(text: str, children: list[str]) -> bool:
    """The plan scans one of the index's partitions by an index condition (not a
    whole-index scan with the condition as a filter)."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if any(f" on {child}" in line or f" using {child}" in line for child in children):
            following = lines[number + 1 : number + 2]
            if following and ("Index Cond" in following[0] or "Recheck Cond" in following[0]):
                return True
    return False


def scans(text: str, children: list[str]) -> bool:
    """The plan scans one of a partial index's partitions (its predicate, proven
    from the query's conditions, is what selects the rows)."""
    return any(f" using {child} " in text for child in children)


async def test_btree_expression_index_serves_equality_ranges_and_membership(mf: MemFlow) -> None:
    name = await mf.entity.create_index("user", "score")
    children = index_children(mf, name)
    assert children
    for where in (
        {"score": 1.5},
        {"score": {"$gt": 39.5}},
        {"score": {"$gte": 10, "$lt": 10.3}},
        {"score": {"$lte": 0.2}},
        {"score": {"$in": [1.5, 2.5]}},
        {"score": {"$exists": False}},
    ):
        text = await plan(mf, where)
        assert uses(text, children), (where, text)
    with psycopg.connect(test_dsn(), autocommit=True) as conn:  # over every entity
        conn.execute(f"CREATE INDEX score_all ON \"{mf.app_id}\".jobs ((context -> 'score'))")
    whole = index_children(mf, "score_all")
    for where in (
        {"score": {"$ne": 1.5}},
        {"score": {"$exists": True}},
        {"score": {"$nin": [1.5]}},
    ):
        text = await plan(mf, where, entity=None)
        assert uses(text, whole), (where, text)
        assert "Index Cond" in text or "Recheck Cond" in text, (where, text)
    found = await mf.entity.find("user", {"score": {"$gte": 10, "$lt": 10.3}}, order_by="id")
    assert [r.workflow_id for r in found] == ["u0101", "u0102"]


async def test_text_index_serves_string_ranges_and_like_prefixes(mf: MemFlow) -> None:
    name = await mf.entity.create_index("user", "name", kind="text")
    children = index_children(mf, name)
    for where in (
        {"name": {"$gt": "name0390"}},
        {"name": {"$lte": "name0003"}},
        {"name": {"$like": "name039%"}},
    ):
        text = await plan(mf, where)
        assert uses(text, children), (where, text)
    found = await mf.entity.find("user", {"name": {"$like": "name039%"}}, order_by="id")
    assert [r.workflow_id for r in found] == [f"u0{i}" for i in range(390, 400) if i % 4]


async def test_gin_index_serves_contains(mf: MemFlow) -> None:
    name = await mf.entity.create_index("user", kind="gin")
    children = index_children(mf, name)
    for where in (
        {"tags": {"$contains": "t3"}},
        {"profile": {"$contains": {"tier": "gold"}}},
    ):
        text = await plan(mf, where)
        assert uses(text, children), (where, text)
    assert await mf.entity.count("user", {"tags": {"$contains": "t3"}}) == len(
        [i for i in range(ROWS) if i % 4 and i % 13 == 3]
    )


async def test_partial_indexes_serve_their_queries(mf: MemFlow) -> None:
    # The seed's, written by hand as README shows, and one made by create_index.
    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        conn.execute(
            f'CREATE INDEX idx_user_premium ON "{mf.app_id}".jobs (id)'
            " WHERE entity = 'user' AND (context->>'isPremium')::boolean = true"
        )
    seed = index_children(mf, "idx_user_premium")
    text = await plan(mf, {"isPremium": True}, order_by="id")
    assert scans(text, seed), text
    made = await mf.entity.create_index("user", where={"profile.tier": "gold"})
    text = await plan(mf, {"profile.tier": "gold", "score": {"$gt": 1}}, order_by="id")
    assert scans(text, index_children(mf, made)), text
    expected = [f"u{i:04}" for i in range(ROWS) if i % 4 and i % 7 == 0]
    assert [
        r.workflow_id
        for r in await mf.entity.find("user", {"isPremium": True}, order_by="id", limit=500)
    ] == expected


async def test_create_index_covers_present_and_future_partitions_once(mf: MemFlow) -> None:
    name = await mf.entity.create_index("user", "score")
    assert await mf.entity.create_index("user", "score") == name  # idempotent
    before = index_children(mf, name)
    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{mf.app_id}"')
        partitions = [
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'jobs'::regclass"
            )
        ]
        conn.execute("SELECT hm_ensure_partition('jobs', 'd20991231')")
    after = index_children(mf, name)
    assert len(before) == len(partitions)  # one per partition there was
    assert len(after) == len(before) + 1  # and one on the partition made later
    assert any(child.startswith("jobs_d20991231") for child in after)
    with psycopg.connect(test_dsn()) as conn:
        count = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
            [mf.app_id, name],
        ).fetchone()
    assert count is not None and count[0] == 1
