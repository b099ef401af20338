"""Helpers for users' own tests: a ``MemFlow`` on the memory backend with a virtual clock.

Enable in a ``conftest.py`` with ``pytest_plugins = ["hotmesh_core.testing"]``,
then take the ``memflow`` fixture.  Time skips forward while a test awaits a
result and only timers are left, so a workflow that sleeps for a day finishes
at once; ``memflow.clock.advance("1 hour")`` moves time by hand.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from .clock import VirtualClock
from .memflow import MemFlow

__all__ = ["memflow", "open_test_memflow"]


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
    mf = await open_test_memflow()
    try:
        yield mf
    finally:
        await mf.shutdown()
