"""An adversarial round on pooling.give_back / _carry_on (1ea556b).

_carry_on runs the rest of a putconn that had to wait (for the pool's lock) in
a task of its own; when that task is cancelled (a shutdown cancelling
asyncio.all_tasks(), asyncio.run's end), it close()s the coroutine: a
GeneratorExit, not the CancelledError a Task would throw in. asyncio.Lock.acquire
passes the lock on to the next waiter only on CancelledError, so a putconn cut
short just after the lock was handed to it leaves the pool's lock unlocked with
waiters nobody wakes: every later getconn/putconn waits for ever. Now a
cancel of _carry_on is raised once putconn is done, not thrown into it.
The tests use the test database (hotmesh_postgres.testing.test_dsn) only.
"""

from __future__ import annotations

import asyncio
import uuid

from hotmesh_core import MemFlow
from hotmesh_postgres.testing import test_dsn


async def _app(size: int) -> MemFlow:
    mf = await MemFlow.init(
        app_id="gb" + uuid.uuid4().hex[:8],
        backend="postgres",
        dsn=test_dsn(),
        pool_size=size,
        pool_min=size,
        pool_timeout=5,
        drop_on_close=True,
    )
    for _ in range(100):
        if mf.backend.pool.get_stats()["pool_available"] == size:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.05)
    return mf


async def _returns_waiting_on_the_lock(mf: MemFlow, n: int):  # type: ignore[no-untyped-def]
    """n transactions end while the pool's lock is held (as by another putconn
    handing its connection to a waiting caller): n give_backs carry on in
    _carry_on tasks, waiting for the lock."""
    pool = mf.backend.pool  # type: ignore[union-attr]
    gate = asyncio.Event()

    async def body() -> None:
        async with mf.backend.transaction(readonly=True) as tx:
            await tx.one("SELECT 1 AS v", [])
            await gate.wait()

    callers = [asyncio.create_task(body()) for _ in range(n)]
    await asyncio.sleep(0.3)
    await pool._lock.acquire()
    gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    carry = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "_carry_on"]
    assert len(carry) == n and len(pool._lock._waiters or ()) == n
    return pool, callers, carry


async def _can_transact(mf: MemFlow, within: float) -> str:
    """ "ok", or how a transaction failed within ``within`` s."""
    try:
        async with asyncio.timeout(within):
            async with mf.backend.transaction(readonly=True) as tx:
                await tx.one("SELECT 1 AS v", [])
        return "ok"
    except (TimeoutError, Exception) as error:
        return repr(error)[:160]


async def test_cancelled_carry_on_does_not_wedge_the_pool_lock() -> None:
    """The _carry_on task the lock was just handed to is cancelled: the other
    returns, and every caller after, must still get the lock."""
    mf = await _app(3)
    try:
        pool, callers, carry = await _returns_waiting_on_the_lock(mf, 3)
        first = pool._lock._waiters[0]
        victim = next(t for t in carry if t.get_coro().cr_frame.f_locals.get("waits_on") is first)
        pool._lock.release()
        victim.cancel()  # in the same turn: the lock is already its
        await asyncio.wait(callers + carry, timeout=3)
        ok = await _can_transact(mf, 8)
        stats = pool.get_stats()
        lock = repr(pool._lock)
        assert ok == "ok" and stats["pool_available"] >= 2, (
            f"{ok}; pool wedged after one cancelled return: lock {lock}, "
            f"pool_available {stats['pool_available']} of {stats['pool_size']}, "
            f"callers done {sum(c.done() for c in callers)}/3"
        )
    finally:
        async with asyncio.timeout(15):
            await mf.shutdown()


async def test_cancel_all_then_a_transaction_does_not_hang() -> None:
    """A graceful shutdown: every transaction and its return is cancelled
    (asyncio.all_tasks()), then a cleanup transaction runs. The connections
    being given back must reach the pool: cancelled, _carry_on close()s putconn
    and the pool (still counting them) is empty for good."""
    mf = await _app(3)
    try:
        pool, callers, carry = await _returns_waiting_on_the_lock(mf, 3)
        pool._lock.release()
        for t in callers + carry:
            t.cancel()
        cleanup = asyncio.create_task(_can_transact(mf, 10))
        await asyncio.wait(callers + carry, timeout=3)
        ok = await cleanup
        stats = pool.get_stats()
        assert ok == "ok" and stats["pool_available"] == 3, (
            f"cleanup transaction: {ok}; every connection being given back was lost: "
            f"pool_available {stats['pool_available']} of {stats['pool_size']}"
        )
    finally:
        async with asyncio.timeout(15):
            await mf.shutdown()
