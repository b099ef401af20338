"""The postgres backend's options are checked before anything is connected:
a bad one is an InvalidOption that names it, and no app is created."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from hotmesh_core import HotMeshError, InvalidOption, MemFlow
from hotmesh_postgres.testing import test_dsn


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"pool_size": "abc"}, "pool_size"),
        ({"pool_size": 0}, "pool_size"),
        ({"pool_size": True}, "pool_size"),
        ({"pool_min": -1}, "pool_min"),
        ({"pool_min": 5, "pool_size": 2}, "pool_min"),
        ({"pool_timeout": -1}, "pool_timeout"),
        ({"pool_timeout": float("inf")}, "pool_timeout"),
        ({"connect_timeout": "x"}, "connect_timeout"),
        ({"connect_timeout": -1}, "connect_timeout"),
    ],
)
async def test_a_bad_option_is_named_and_creates_nothing(
    options: dict[str, Any], named: str
) -> None:
    app_id = f"opt{uuid.uuid4().hex[:8]}"
    with pytest.raises(InvalidOption, match=named) as raised:
        await MemFlow.init(app_id=app_id, backend="postgres", dsn=test_dsn(), **options)
    assert isinstance(raised.value, HotMeshError) and isinstance(raised.value, ValueError)
    with psycopg.connect(test_dsn(), autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (app_id,)
        ).fetchone()
    assert found == (0,), f"a rejected init created the app {app_id}"


async def test_good_options_are_taken_as_given() -> None:
    mf = await MemFlow.init(
        app_id=f"opt{uuid.uuid4().hex[:8]}",
        backend="postgres",
        dsn=test_dsn(),
        pool_size="4",
        pool_min=2,
        pool_timeout="2.5",
        connect_timeout=3,
        drop_on_close=True,
    )
    try:
        pool = mf.backend.pool  # type: ignore[attr-defined]
        assert (pool.min_size, pool.max_size, pool.timeout) == (2, 4, 2.5)
        assert pool.kwargs["connect_timeout"] == 3
    finally:
        await mf.shutdown()
