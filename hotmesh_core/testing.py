"""Helpers for users' own tests: a ``MemFlow`` on the memory backend with a virtual clock.

Enable in a ``conftest.py`` with ``pytest_plugins = ["hotmesh_core.testing"]``,
then take the ``memflow`` fixture (or ``postgres_memflow`` for a real database).
On ``memflow``, time skips forward while a test awaits a result and only
timers are left, so a workflow that sleeps for a day finishes at once;
``memflow.clock.advance("1 hour")`` moves time by hand.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from .clock import VirtualClock
from .memflow import MemFlow
from .plugins import backend_test_options

__all__ = ["memflow", "open_test_memflow", "postgres_memflow"]


async def open_test_memflow(
    app_id: str | None = None, *, clock: VirtualClock | None = None
) -> MemFlow:
    """A fresh in-memory app with a virtual clock (also usable without pytest)."""
    return await MemFlow.init(
        app_id=app_id or f"test-{uuid.uuid4().hex[:16]}",
        backend="memory",
        clock=clock or VirtualClock(),
    )


@pytest.fixture
async def memflow() -> AsyncIterator[MemFlow]:
    """A fresh app on the memory backend with a virtual clock."""
    mf = await open_test_memflow()
    try:
        yield mf
    finally:
        await mf.shutdown()


@pytest.fixture
async def postgres_memflow() -> AsyncIterator[MemFlow]:
    """A fresh app (its own schema, dropped afterwards) on a real PostgreSQL.

    The server is the one the ``postgres`` backend names for tests: the local
    server at 127.0.0.1:5432 when there is one, else an embedded server.
    """
    mf = await MemFlow.init(
        app_id=f"test-{uuid.uuid4().hex[:16]}",
        backend="postgres",
        **backend_test_options("postgres"),
    )
    try:
        yield mf
    finally:
        await mf.shutdown()
