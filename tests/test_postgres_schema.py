"""The PostgreSQL schema: provisioning, migrations, concurrent first init, user indexes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest

from hotmesh_core import MemFlow, workflow
from hotmesh_postgres.migrations import migrations
from hotmesh_postgres.testing import test_dsn


def catalog(dsn: str, schema: str) -> dict[str, Any]:
    """What a schema holds: tables and columns, indexes, functions."""
    with psycopg.connect(dsn) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, column_default, is_nullable"
            " FROM information_schema.columns WHERE table_schema = %s ORDER BY 1, 2",
            [schema],
        ).fetchall()
        indexes = conn.execute(
            "SELECT tablename, regexp_replace(indexdef, ' ON \\S+', ' ON t')"
            " FROM pg_indexes WHERE schemaname = %s ORDER BY 1, 2",
            [schema],
        ).fetchall()
        functions = conn.execute(
            "SELECT p.proname, pg_get_function_arguments(p.oid) FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s ORDER BY 1",
            [schema],
        ).fetchall()
    found = {"columns": columns, "indexes": indexes, "functions": functions}
    # Defaults and index definitions name their schema: compare shapes, not names.
    return {
        key: [tuple(str(v).replace(schema, "S") for v in row) for row in rows]
        for key, rows in found.items()
    }


def new_app() -> str:
    return f"s{uuid.uuid4().hex[:16]}"


async def test_concurrent_first_init_provisions_once() -> None:
    app_id, dsn = new_app(), test_dsn()
    opened = await asyncio.gather(
        *(MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn) for _ in range(5))
    )
    try:
        with psycopg.connect(dsn) as conn:
            versions = conn.execute(
                f'SELECT version FROM "{app_id}".migrations ORDER BY version'
            ).fetchall()
        assert [v for (v,) in versions] == [m.version for m in migrations()]
    finally:
        for mf in opened:
            await mf.shutdown()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{app_id}" CASCADE')


async def test_init_again_changes_nothing_and_keeps_data() -> None:
    app_id, dsn = new_app(), test_dsn()
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn)
    await mf.workflow.start("t", "wf", "kept", [1], "q")
    before = catalog(dsn, app_id)
    await mf.shutdown()
    again = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn, drop_on_close=True)
    try:
        assert catalog(dsn, app_id) == before
        assert await (await again.workflow.get_handle("kept")).status() == "pending"
    finally:
        await again.shutdown()


async def test_fresh_schema_equals_every_migration_applied_in_order() -> None:
    """A schema made by init equals one built by running each migration file by hand."""
    by_init, by_hand, dsn = new_app(), new_app(), test_dsn()
    mf = await MemFlow.init(app_id=by_init, backend="postgres", dsn=dsn, drop_on_close=True)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{by_hand}"')
            with conn.transaction():
                conn.execute(f'SET LOCAL search_path TO "{by_hand}"')
                conn.execute(
                    "CREATE TABLE migrations (version integer PRIMARY KEY,"
                    " name text NOT NULL, applied_at timestamptz NOT NULL"
                    " DEFAULT clock_timestamp())"
                )
                for migration in migrations():
                    conn.execute(migration.text.encode())
        assert catalog(dsn, by_hand) == catalog(dsn, by_init)
    finally:
        await mf.shutdown()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{by_hand}" CASCADE')


async def make_user(premium: bool) -> None:
    entity = await workflow.entity()
    await entity.set({"isPremium": premium, "name": workflow.info().workflow_id})


async def test_the_seed_partial_index_serves_entity_find() -> None:
    app_id, dsn = new_app(), test_dsn()
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn, drop_on_close=True)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                f'CREATE INDEX idx_user_premium ON "{app_id}".jobs (id)'
                " WHERE entity = 'user' AND (context->>'isPremium')::boolean = true;"
            )
        await mf.worker("q", workflows=[make_user])
        handles = [
            await mf.workflow.start("user", "make_user", f"u{i}", [i % 3 == 0], "q")
            for i in range(30)
        ]
        for handle in handles:
            await handle.result(timeout=20)
        found = await mf.entity.find("user", where={"isPremium": True}, order_by="id")
        assert sorted(r.workflow_id for r in found) == sorted(f"u{i}" for i in range(0, 30, 3))
        # The very statement find() sends, explained with its parameters bound.
        plan = await explain_find(mf, {"isPremium": True})
        with psycopg.connect(dsn) as conn:  # the index's per-partition children
            children = [
                name
                for (name,) in conn.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = %s::regclass",
                    [f'"{app_id}".idx_user_premium'],
                )
            ]
        assert children == ["jobs_keep_id_idx"]  # running and kept jobs live in 'keep'
        assert any(name in plan for name in children), plan
    finally:
        await mf.shutdown()


async def explain_find(mf: MemFlow, where: dict[str, Any]) -> str:
    from hotmesh_postgres.store import PgStore

    captured: list[tuple[Any, Any]] = []
    async with mf.backend.transaction() as tx:
        original = tx.all

        async def capture(query: Any, params: Any) -> list[dict[str, Any]]:
            captured.append((query, params))
            return await original(query, params)

        tx.all = capture  # type: ignore[method-assign]
        await PgStore(tx).find_jobs(entity="user", where=where, limit=100)
        query, params = captured[0]
        await tx.run("SET LOCAL enable_seqscan = off", [])
        plan = await tx.all(psycopg.sql.SQL("EXPLAIN ") + query, params)
    return "\n".join(str(next(iter(row.values()))) for row in plan)


async def test_a_schema_migrated_by_a_newer_hotmesh_is_said_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app_id, dsn = new_app(), test_dsn()
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn)
    await mf.workflow.start("t", "wf", "kept", [1], "q")
    await mf.shutdown()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{app_id}".migrations (version, name) VALUES (999, %s)', ["x"])
    again = await MemFlow.init(app_id=app_id, backend="postgres", dsn=dsn, drop_on_close=True)
    try:
        assert "migrations [999] that this HotMesh does not know" in caplog.text
        assert await (await again.workflow.get_handle("kept")).status() == "pending"
    finally:
        await again.shutdown()
