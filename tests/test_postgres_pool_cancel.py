"""A cancel that comes as a pooled connection is handed over is not lost.

psycopg_pool waits for a connection with ``asyncio.wait_for``, which on Python
3.10 and 3.11 returns what it waited for, instead of raising, when the cancel
comes at that moment: a ``result()`` cancelled while it waited for a connection
returned the job's result (tests/test_adversarial_wake.py's waiters, 60 on a
pool of 10, failed so under load). Here many readers queue for one connection
and are cancelled at moments spread over the queue: every accepted cancel
raises CancelledError, and the others read.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from hotmesh_core import MemFlow
from hotmesh_postgres.testing import test_dsn

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="Python 3.10 does not count a task's cancels"
)


async def test_a_cancel_as_a_connection_is_handed_over_still_cancels() -> None:
    mf = await MemFlow.init(
        app_id="poolcancel", backend="postgres", dsn=test_dsn(), pool_size=1, drop_on_close=True
    )
    backend: Any = mf.backend
    loop = asyncio.get_running_loop()
    try:

        async def read() -> str:
            async with backend.transaction(readonly=True) as tx:
                await tx.store.get_job("none")
            return "read"

        assert await read() == "read"  # the connection is made and its statement prepared
        outcomes: list[str] = []
        for _ in range(15):
            readers = [asyncio.ensure_future(read()) for _ in range(40)]
            accepted: list[asyncio.Future[str]] = []

            def cancel(r: asyncio.Future[str], accepted: list[Any] = accepted) -> None:
                if r.cancel():
                    accepted.append(r)

            for i, r in enumerate(readers):
                loop.call_later(0.001 * i, cancel, r)
            results = await asyncio.gather(*readers, return_exceptions=True)
            for r, result in zip(readers, results, strict=True):
                if r in accepted:
                    assert isinstance(result, asyncio.CancelledError), result
                    outcomes.append("cancelled")
                else:
                    assert result == "read"
                    outcomes.append("read")
        assert "cancelled" in outcomes and "read" in outcomes  # both kinds met
        # Every connection came back: the pool serves a read at once.
        assert await asyncio.wait_for(read(), 5) == "read"
    finally:
        await mf.shutdown()
