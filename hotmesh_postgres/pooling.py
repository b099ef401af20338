"""The app's connections: taken from the pool, tried before use, and found again
quickly after an outage.

psycopg_pool is left to do the pooling; what is here is what it does not do
the way a durable engine needs: a cancel is never lost taking a connection, a
connection the server has closed while it sat idle is not handed out, a
server that is back is found within about a second, and a connect that hangs
(a partition, a frozen host) gives up in seconds rather than libpq's minutes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import select
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from hotmesh_core.errors import InvalidOption

Connection = psycopg.AsyncConnection[dict[str, Any]]

log = logging.getLogger("hotmesh.postgres")

#: Seconds one of the pool's reconnection attempts lasts (psycopg_pool's
#: ``reconnect_timeout``: it tries again after 1, 2, 4 s... within it) before
#: ``restart_reconnecting`` may start a fresh one, which tries at once.
RECONNECT_ATTEMPT = 2.0

#: Seconds a connect may take (libpq's ``connect_timeout``), unless the DSN,
#: ``PGCONNECT_TIMEOUT`` or the backend option ``connect_timeout`` says.
CONNECT_TIMEOUT = 5


def number_option(
    options: Mapping[str, Any], name: str, default: float, *, whole: bool, least: float
) -> float:
    """The backend option ``name`` as a number of at least ``least`` (a whole
    one if ``whole``), or InvalidOption naming it: ``int("abc")`` deep in
    ``open()`` said neither which option nor what it takes."""
    value = options.get(name, default)
    kind = "a whole number" if whole else "a number"
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (number >= least and math.isfinite(number)) or (whole and number != int(number)):
        raise InvalidOption(
            f"the postgres backend option {name} takes {kind} of at least {least:g}, not {value!r}"
        )
    return int(number) if whole else number


def connect_options(dsn: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """What every connect of the app adds to ``dsn``: a connect timeout.

    libpq's default (none, psycopg's 130 s) let a connect into a network
    partition hold a slot of the pool, and one of its three workers, for two
    minutes after the partition healed, so the app stayed without connections
    (tests/test_adversarial_reconnect.py)."""
    if "connect_timeout" in options:  # 0: wait for ever, as libpq's 0
        seconds = number_option(options, "connect_timeout", 0, whole=False, least=0)
        return {"connect_timeout": math.ceil(seconds)}
    if "connect_timeout" in conninfo_to_dict(dsn) or os.environ.get("PGCONNECT_TIMEOUT"):
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT}


def _cancels(task: asyncio.Task[Any] | None) -> int:
    """How many cancels ``task`` was asked for (0 where Python does not count them, 3.10)."""
    cancelling = getattr(task, "cancelling", None)
    return int(cancelling()) if cancelling is not None else 0


def _has_input(conn: Connection) -> bool:
    """Whether an idle connection has something to read: the server closed it
    (a crash, a restart, ``pg_terminate_backend``) or said why it will."""
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:
        return True  # closed already
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


async def _closed_by_server(conn: Connection) -> bool:
    if not _has_input(conn):
        return False
    try:
        await conn.execute("")  # reads what came: a live connection answers
    except psycopg.Error:
        return True
    return False


async def connection_from(pool: AsyncConnectionPool[Connection]) -> Connection:
    """A connection of ``pool`` that the server has not closed, and never one
    in place of a cancel.

    psycopg_pool waits for a connection with ``asyncio.wait_for``, which on
    Python 3.10 and 3.11 returns what it waited for when the cancel comes as a
    connection is handed over: the caller's cancel is lost, and a ``result()``
    cancelled while it waited for a connection returned the job's result (seen
    with 60 waiters on a pool of 10; tests/test_postgres_pool_cancel.py). A
    cancel asked for during the wait is raised here, the connection given back.
    On 3.10, which does not count cancels, it can still be lost.

    The connections a crash closed stay in the pool as if idle, and the first
    statement on one failed with no SQLSTATE, too late to be sent again safely:
    after a crash, an app's first ``start()`` raised BackendUnavailable although
    the server was back. A connection with input waiting is tried first (one
    ``poll`` otherwise) and, closed, given back for the pool to replace, without
    psycopg_pool's ``check``, which sleeps 1, 2, 4 s between the ones it finds
    broken.
    """
    task = asyncio.current_task()
    asked = _cancels(task)
    held: Connection | None = None  # what to give back if this raises
    try:
        conn = held = await pool.getconn()
        for _ in range(pool.max_size):
            if _cancels(task) > asked:
                raise asyncio.CancelledError
            if not await _closed_by_server(conn):
                return conn
            held = None
            await give_back(pool, conn)  # broken: the pool discards it and adds one
            conn = held = await pool.getconn()
        if _cancels(task) > asked:
            raise asyncio.CancelledError
        return conn  # every one was closed: its statement will say so
    except BaseException:
        if held is not None:
            await give_back(pool, held)
        raise


async def give_back(pool: AsyncConnectionPool[Connection], conn: Connection) -> None:
    """``pool.putconn(conn)``, carried through even when the caller is cancelled.

    putconn waits for the pool's lock, which another putconn may hold while it
    hands its connection to a waiting caller; a cancel there dropped the
    connection, neither in the pool nor closed and still counted, so each such
    cancel shrank the pool by one until every transaction waited out
    ``pool_timeout`` (a pool of 2 lost one in 1 to 3 s of cancelled reads;
    tests/test_adversarial_pooling.py).

    putconn is run here up to its first wait: nearly always it has none and is
    done, at no cost (a task per return, shielded, cost 35 us a transaction:
    9% of W1's CPU). If it must wait, the rest of it runs in a task of its own
    (``_carry_on``) that a cancel of the caller does not reach, and the cancel
    is raised once the connection is back.
    """
    putting = pool.putconn(conn)
    try:
        waits_on = putting.send(None)
    except StopIteration:
        return  # back without a wait: nothing a cancel could have cut short
    rest = asyncio.ensure_future(_carry_on(putting, waits_on))
    cancelled = False
    while not rest.done():
        try:
            await asyncio.shield(rest)
        except asyncio.CancelledError:
            if rest.cancelled():
                raise
            cancelled = True  # the caller's: finish giving back first
    if cancelled:
        raise asyncio.CancelledError
    rest.result()


async def _carry_on(coro: Coroutine[Any, Any, None], waits_on: Any) -> None:
    """Run the rest of ``coro``, which has yielded ``waits_on`` as it would to
    its task (asyncio's protocol: a future to wait for, or None to let the
    loop run once), in this task instead, to its end.

    A cancel of this task (a shutdown that cancels every task) is raised once
    the connection is back, not thrown into putconn: closed there, putconn
    dropped the connection and, handed the pool's lock just then, left the
    lock's other waiters asleep for good (tests/test_adversarial_giveback.py).
    """
    cancelled = False
    while True:
        try:
            if waits_on is None:
                await asyncio.sleep(0)
            else:
                waits_on._asyncio_future_blocking = False  # taken on, as a task does
                await asyncio.wait([waits_on])  # done; coro reads its outcome itself
        except asyncio.CancelledError:
            cancelled = True  # waits_on is left to finish; wait for it again
            continue
        try:
            waits_on = coro.send(None)
        except StopIteration:
            break
    if cancelled:
        raise asyncio.CancelledError


@asynccontextmanager
async def pooled(pool: AsyncConnectionPool[Connection]) -> AsyncIterator[Connection]:
    """A connection of ``pool`` for a block, as ``pool.connection()`` but taken
    by ``connection_from`` and given back by ``give_back``."""
    conn = await connection_from(pool)
    try:
        yield conn
    finally:
        await give_back(pool, conn)


async def restart_reconnecting(pool: AsyncConnectionPool[Connection]) -> None:
    """psycopg_pool's ``reconnect_failed``: a reconnection attempt gave up.

    Left to psycopg_pool, an attempt backs off 1, 2, 4, 8 s... for five
    minutes, so a server that is back was found only at the next try: a new
    workflow waited 12 to 18 s after a 20 to 40 s outage. An attempt here lasts
    RECONNECT_ATTEMPT and gives its slot up; when a connection is wanted (the
    pool is below ``pool_min``, or a caller waits), ``check()`` grows the pool
    into that slot at once with a fresh attempt, so while the server is away
    the pool tries about every second, and finds it within about one once it is
    back. When none is wanted, nothing is tried: an idle app knocked at a full
    server twice a second for as long as it stayed full; the next caller grows
    the pool again.
    """
    if pool.closed:
        return
    stats = pool.get_stats()
    if stats.get("pool_size", 0) >= pool.min_size and not stats.get("requests_waiting", 0):
        return
    try:
        await pool.check()
    except Exception as error:  # closed meanwhile (shutdown): nothing to restart
        log.debug("pool check after a failed reconnection: %s", error)
