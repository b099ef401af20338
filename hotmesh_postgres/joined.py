"""Work done in the caller's own transaction (``connection=`` on start, signal and
entity operations): a business row and the workflow commit together or not at all.

The caller passes a SQLAlchemy ``Session``/``AsyncSession``/``Connection``/
``AsyncConnection`` or a psycopg connection, in a transaction (or about to
begin one). :class:`JoinedBackend` runs HotMesh's statements on that very
connection, inside a ``SAVEPOINT`` (a HotMesh error leaves the caller's
transaction usable), with the app's schema as ``search_path`` for their
duration only; it never commits: the caller does. Wake-ups are ``pg_notify``
calls in the caller's transaction, so PostgreSQL delivers them only if it
commits. A sync connection (``Session``, ``Connection``, ``psycopg.Connection``)
is driven synchronously from the event loop: it is the caller's thread anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from hotmesh_core.transactions import TransactionNotSupported

if TYPE_CHECKING:
    from .backend import PgTransaction, PostgresBackend

__all__ = ["BorrowedConnection", "JoinedBackend", "driver_connection"]


async def driver_connection(
    connection: Any,
) -> psycopg.AsyncConnection[Any] | psycopg.Connection[Any]:
    """The psycopg connection under what the caller passed."""
    if isinstance(connection, (psycopg.AsyncConnection, psycopg.Connection)):
        return connection
    try:
        from sqlalchemy.engine import Connection as SaConnection
        from sqlalchemy.ext.asyncio import AsyncConnection as SaAsyncConnection
        from sqlalchemy.ext.asyncio import AsyncSession
        from sqlalchemy.orm import Session
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        raise TransactionNotSupported(_KINDS) from None
    if isinstance(connection, AsyncSession):
        connection = await connection.connection()  # begins the session's transaction
    elif isinstance(connection, Session):
        connection = connection.connection()
    if isinstance(connection, SaAsyncConnection):
        raw = await connection.get_raw_connection()
    elif isinstance(connection, SaConnection):
        raw = connection.connection
    else:
        raise TransactionNotSupported(
            f"connection= takes {_KINDS}, not {type(connection).__name__}"
        )
    driver = raw.driver_connection
    if not isinstance(driver, (psycopg.AsyncConnection, psycopg.Connection)):
        raise TransactionNotSupported(
            f"the connection's driver is {type(driver).__name__}; HotMesh joins psycopg (3)"
            " connections only (a SQLAlchemy URL of postgresql+psycopg://)"
        )
    return driver


_KINDS = (
    "a SQLAlchemy Session, AsyncSession, Connection or AsyncConnection, or a psycopg connection"
)


class _Cursor:
    """An async face on a sync or async psycopg cursor."""

    def __init__(self, cursor: Any, is_async: bool) -> None:
        self._cursor = cursor
        self._async = is_async

    async def fetchone(self) -> Any:
        return await self._cursor.fetchone() if self._async else self._cursor.fetchone()

    async def fetchall(self) -> Any:
        return await self._cursor.fetchall() if self._async else self._cursor.fetchall()


class BorrowedConnection:
    """The caller's connection, seen as the pooled connections are by PgTransaction."""

    def __init__(self, driver: psycopg.AsyncConnection[Any] | psycopg.Connection[Any]) -> None:
        self.driver = driver
        self.is_async = isinstance(driver, psycopg.AsyncConnection)

    @property
    def broken(self) -> bool:
        return bool(self.driver.broken)

    @property
    def info(self) -> Any:
        return self.driver.info

    async def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None) -> Any:
        cursor: Any = self.driver.cursor(row_factory=dict_row)
        if self.is_async:
            await cursor.execute(query, params, prepare=prepare)
        else:
            cursor.execute(query, params, prepare=prepare)
        return _Cursor(cursor, self.is_async)


class JoinedBackend:
    """A view of a :class:`PostgresBackend` whose transactions are the caller's."""

    def __init__(self, backend: PostgresBackend, driver: Any) -> None:
        self._backend = backend
        self._conn = BorrowedConnection(driver)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._backend, attribute)

    @asynccontextmanager
    async def transaction(
        self, *, readonly: bool = False, single: bool = False
    ) -> AsyncIterator[PgTransaction]:
        from .backend import PgTransaction

        conn = self._conn
        status = conn.info.transaction_status
        if status == TransactionStatus.INERROR:
            raise TransactionNotSupported(
                "the connection's transaction has failed (roll it back first)"
            )
        if status == TransactionStatus.IDLE and conn.driver.autocommit:
            raise TransactionNotSupported(
                "the connection is in autocommit mode and not in a transaction: begin one"
                " (with conn.transaction(), or a SQLAlchemy session) so your rows and the"
                " workflow commit together"
            )
        tx = PgTransaction(self._backend, conn, readonly=False)  # type: ignore[arg-type]
        await conn.execute("SAVEPOINT hotmesh_joined", prepare=False)
        previous = await tx.one("SELECT current_setting('search_path') AS path", [])
        await tx.run(
            "SELECT set_config('search_path', %s, true)",
            [f'"{self._backend.schema}"'],  # app ids are ^[a-z][a-z0-9_-]*$: quoted as is
        )
        try:
            yield tx
            await tx.finish(commit=False)  # pg_notify now: delivered if the caller commits
        except BaseException:
            if not conn.broken:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("ROLLBACK TO SAVEPOINT hotmesh_joined", prepare=False)
            raise
        finally:
            if not conn.broken and conn.info.transaction_status != TransactionStatus.INERROR:
                with contextlib.suppress(psycopg.Error):
                    await tx.run(
                        "SELECT set_config('search_path', %s, true)",
                        [previous["path"] if previous else "public"],
                    )
        await conn.execute("RELEASE SAVEPOINT hotmesh_joined", prepare=False)
