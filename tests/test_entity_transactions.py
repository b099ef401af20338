"""``connection=``: start, signal and entity operations inside the caller's own
transaction (SQLAlchemy sessions and connections, psycopg connections), so a
business row and the workflow commit together or not at all."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from hotmesh_core import (
    EntityPathError,
    MemFlow,
    TransactionNotSupported,
    WorkflowNotFound,
    workflow,
)
from hotmesh_postgres.testing import test_dsn

pytestmark = pytest.mark.asyncio


async def process(order_id: str) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"order": order_id, "state": "processed"})
    note = await workflow.wait_for(f"note-{order_id}")
    done: dict[str, Any] = await entity.merge({"note": note})
    return done


def sa_url(driver: str = "psycopg") -> str:
    return test_dsn().replace("postgresql://", f"postgresql+{driver}://", 1)


@pytest_asyncio.fixture
async def mf() -> AsyncIterator[MemFlow]:
    app_id = f"t{uuid.uuid4().hex[:20]}"
    opened = await MemFlow.init(
        app_id=app_id, backend="postgres", dsn=test_dsn(), drop_on_close=True
    )
    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{app_id}".orders (id text PRIMARY KEY)')
    try:
        yield opened
    finally:
        await opened.shutdown()


def stored(mf: MemFlow) -> dict[str, int]:
    """What the app's tables hold, read with plain SQL."""
    with psycopg.connect(test_dsn()) as conn:
        return {
            table: conn.execute(f'SELECT count(*) FROM "{mf.app_id}".{table}').fetchone()[0]  # type: ignore[index]
            for table in ("orders", "jobs", "tasks", "signals", "entity_changes")
        }


async def test_async_session_commit_and_rollback(mf: MemFlow) -> None:
    engine = create_async_engine(sa_url())
    try:
        # Rolled back: nothing of the workflow exists, nor the order.
        with pytest.raises(RuntimeError, match="payment declined"):
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(text(f"INSERT INTO \"{mf.app_id}\".orders VALUES ('o1')"))
                await mf.workflow.start("order", "process", "o1", ["o1"], "q", connection=session)
                raise RuntimeError("payment declined")
        assert stored(mf) == {"orders": 0, "jobs": 0, "tasks": 0, "signals": 0, "entity_changes": 0}
        with pytest.raises(WorkflowNotFound):
            await mf.workflow.get_handle("o1")
        # Committed: both, and a worker runs the workflow.
        await mf.worker("q", workflows=[process])
        async with AsyncSession(engine) as session, session.begin():
            await session.execute(text(f"INSERT INTO \"{mf.app_id}\".orders VALUES ('o2')"))
            handle = await mf.workflow.start(
                "order", "process", "o2", ["o2"], "q", connection=session
            )
            # Not visible outside the transaction before it commits.
            with pytest.raises(WorkflowNotFound):
                await mf.workflow.get_handle("o2")
            # The session is still the caller's: it sees the job row in its own transaction.
            seen = await session.execute(text(f'SELECT id FROM "{mf.app_id}".jobs'))
            assert [row[0] for row in seen] == ["o2"]
        # A signal sent in a transaction that rolls back is not delivered (nor kept).
        with pytest.raises(RuntimeError):
            async with AsyncSession(engine) as session, session.begin():
                await mf.workflow.signal("note-o2", "lost", connection=session)
                raise RuntimeError("changed my mind")
        assert stored(mf)["signals"] == 0
        async with AsyncSession(engine) as session, session.begin():
            await mf.workflow.signal("note-o2", "kept", connection=session)
        assert await handle.result(timeout=20) == {
            "order": "o2",
            "state": "processed",
            "note": "kept",
        }
        assert stored(mf)["orders"] == 1
    finally:
        await engine.dispose()


async def test_sync_session_and_connection(mf: MemFlow) -> None:
    engine = create_engine(sa_url())
    try:
        with Session(engine) as session:
            session.execute(text(f"INSERT INTO \"{mf.app_id}\".orders VALUES ('s1')"))
            await mf.workflow.start("order", "process", "s1", ["s1"], "q", connection=session)
            session.rollback()
        assert stored(mf)["jobs"] == 0 and stored(mf)["orders"] == 0
        with engine.begin() as conn:
            conn.execute(text(f"INSERT INTO \"{mf.app_id}\".orders VALUES ('s2')"))
            await mf.workflow.start("order", "process", "s2", ["s2"], "q", connection=conn)
            # The caller's search_path is theirs again after HotMesh's statements.
            path = conn.execute(text("SHOW search_path")).scalar()
            assert path is not None and mf.app_id not in path
        assert (await (await mf.workflow.get_handle("s2")).status()) == "pending"
        assert stored(mf)["orders"] == 1
    finally:
        engine.dispose()


async def test_entity_update_in_a_psycopg_transaction(mf: MemFlow) -> None:
    await mf.workflow.start("order", "process", "p1", ["p1"], "q")
    async with await psycopg.AsyncConnection.connect(test_dsn()) as conn:
        async with conn.transaction(force_rollback=True):
            assert await mf.entity.update("p1", "merge", value={"a": 1}, connection=conn) == {
                "a": 1
            }
        assert (await mf.entity.get("p1")).version == 0  # type: ignore[union-attr]
        async with conn.transaction():
            await conn.execute(f"INSERT INTO \"{mf.app_id}\".orders VALUES ('p1')")
            await mf.entity.update("p1", "increment", "n", 2, connection=conn)
            # A HotMesh error is raised, and the caller's transaction goes on.
            with pytest.raises(EntityPathError):
                await mf.entity.update("p1", "append", "n", 1, connection=conn)
            with pytest.raises(WorkflowNotFound):
                await mf.entity.update("nobody", "merge", value={}, connection=conn)
            await conn.execute(f"INSERT INTO \"{mf.app_id}\".orders VALUES ('p2')")
    record = await mf.entity.get("p1")
    assert record is not None and record.context == {"n": 2} and record.version == 1
    assert stored(mf)["orders"] == 2


async def test_connections_that_cannot_be_joined_are_refused(mf: MemFlow) -> None:
    async with await psycopg.AsyncConnection.connect(test_dsn(), autocommit=True) as conn:
        with pytest.raises(TransactionNotSupported, match="autocommit"):
            await mf.workflow.start("order", "process", "x", ["x"], "q", connection=conn)
    with pytest.raises(TransactionNotSupported, match="str"):
        await mf.workflow.start("order", "process", "x", ["x"], "q", connection="dsn")
    assert stored(mf)["jobs"] == 0


async def test_the_memory_backend_refuses_connection() -> None:
    mf = await MemFlow.init(app_id="joined", backend="memory")
    try:
        with pytest.raises(TransactionNotSupported, match="memory"):
            await mf.workflow.start("order", "process", "m", ["m"], "q", connection=object())
        with pytest.raises(TransactionNotSupported):
            await mf.workflow.signal("s", 1, connection=object())
        with pytest.raises(WorkflowNotFound):
            await mf.workflow.get_handle("m")
    finally:
        await mf.shutdown()


async def test_the_sync_facade_starts_in_a_sync_session(mf: MemFlow) -> None:
    """A Django/Flask-style view (in a thread of its own): a blocking client, a
    SQLAlchemy Session."""
    from hotmesh_core.sync import connect

    def view() -> None:
        engine = create_engine(sa_url())
        try:
            with connect(app_id=mf.app_id, backend="postgres", dsn=test_dsn()) as client:
                with Session(engine) as session, session.begin():
                    session.execute(text(f"INSERT INTO \"{mf.app_id}\".orders VALUES ('v1')"))
                    client.workflow.start("order", "process", "v1", ["v1"], "q", connection=session)
                    client.workflow.signal("note-v1", "early", connection=session)
                with Session(engine) as session:
                    session.execute(text(f"INSERT INTO \"{mf.app_id}\".orders VALUES ('v2')"))
                    client.workflow.start("order", "process", "v2", ["v2"], "q", connection=session)
                    session.rollback()
                page = client.entity.find("order", {}, limit=1)
                assert [r.workflow_id for r in page] == ["v1"] and page.cursor is None
        finally:
            engine.dispose()

    await asyncio.to_thread(view)
    assert stored(mf) == {"orders": 1, "jobs": 1, "tasks": 1, "signals": 1, "entity_changes": 0}
