"""The PostgreSQL backend: a pool, transactions, LISTEN/NOTIFY wake-ups.

Every NOTIFY is sent from the committing transaction, so no wake-up arrives
before its row is visible.  One listening connection per backend turns
notifications into asyncio events; polling with short timeouts is the safety
net for a dropped listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from hotmesh_core.changes import ChangeQueue
from hotmesh_core.errors import BackendUnavailable, InvalidOption, UnknownApp
from hotmesh_core.event_wait import Wakeup, wait_any, wait_event
from hotmesh_core.group_commit import ADVANCE_MANY
from hotmesh_core.protocols import Backend

from .connection import check_server_version, permission_denied, resolve_dsn
from .joined import JoinedBackend, driver_connection
from .migrations import app_schemas, apply_migrations
from .pooling import (
    RECONNECT_ATTEMPT,
    Connection,
    connect_options,
    connection_from,
    give_back,
    number_option,
    pooled,
    restart_reconnecting,
)
from .roles import grant_role
from .signal import PgSignal
from .store import PgStore
from .stream import PgStream

__all__ = ["PgTransaction", "PostgresBackend"]

log = logging.getLogger("hotmesh.postgres")

BUCKET_HINTS = 100_000
# "The server ended this session" (admin shutdown, crash shutdown, cannot
# connect now): read from a pooled connection before it ran anything.
SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})
FRESH_CLAIM = 0.05  # seconds: a claim's "next due" serves the idle wait right after it
# Jobs first: once its row is gone a job is gone, whatever history follows it.
DROPPED_WITH_THEIR_DAY = ("jobs", "threads", "steps", "entity_changes", "signals", "dead_letters")
Params = Sequence[Any]


class PgTransaction:
    """One database transaction, seen through the Store, Stream and Signal roles."""

    def __init__(
        self, backend: PostgresBackend, conn: Connection, *, readonly: bool, single: bool = False
    ) -> None:
        self.backend = backend
        self.conn = conn
        self.returned = False  # conn given back to the pool already (_on_live_connection)
        self.readonly = readonly
        self.single = single  # one call, run without BEGIN/COMMIT
        self.store = PgStore(self)
        self.stream = PgStream(self)
        self.signal = PgSignal(self)
        self._notifications: set[tuple[str, str]] = set()
        self.found_jobs: set[str] = set()  # found by their bucket in this transaction

    async def begin(self) -> None:
        await self._on_live_connection("BEGIN", None, prepare=False)

    async def _execute(self, query: Any, params: Params) -> Any:
        if self.readonly:  # each statement stands alone: safe to send again
            return await self._on_live_connection(query, params)
        if self.single:  # a write: sent again only if it never ran
            return await self._on_live_connection(query, params, never_ran_only=True)
        return await self.conn.execute(query, params)

    async def _on_live_connection(
        self,
        query: Any,
        params: Params | None,
        *,
        prepare: bool | None = None,
        never_ran_only: bool = False,
    ) -> Any:
        """Execute where nothing of this transaction can be lost: if the server
        dropped the connection (it restarted, say), while it sat in the pool,
        take another one and send the statement again. ``never_ran_only`` (a
        single write, which commits on its own): only when the server said it
        had ended the session before the statement (a terminated backend, a
        shutdown: SESSION_ENDED), never when the connection broke mid-flight,
        where the write may have committed."""
        pool = self.backend.pool
        assert pool is not None
        for attempt in range(pool.max_size + 2):
            try:
                return await self.conn.execute(query, params, prepare=prepare)
            except psycopg.OperationalError as error:
                never_ran = error.sqlstate in SESSION_ENDED
                if (
                    not self.conn.broken
                    or (never_ran_only and not never_ran)
                    or attempt == pool.max_size + 1
                ):
                    raise
                log.info("connection lost; using another one (attempt %d)", attempt + 1)
                # Given back once only: should no other come (a timeout, a
                # cancel), transaction() must not give it back again (a second
                # return of a broken connection made the pool grow past its size).
                self.returned = True
                await give_back(pool, self.conn)  # the pool discards a broken connection
                self.conn = await connection_from(pool)
                self.returned = False
        raise AssertionError("unreachable")

    async def one(self, query: Any, params: Params) -> dict[str, Any] | None:
        cursor = await self._execute(query, params)
        row: dict[str, Any] | None = await cursor.fetchone()
        return row

    async def all(self, query: Any, params: Params) -> list[dict[str, Any]]:
        cursor = await self._execute(query, params)
        found: list[dict[str, Any]] = await cursor.fetchall()
        return found

    async def run(self, query: Any, params: Params) -> None:
        await self._execute(query, params)

    def notify_queue(self, queue: str) -> None:
        self._notifications.add((self.backend.queue_channel, queue))

    def notify_job(self, job_id: str) -> None:
        self._notifications.add((self.backend.job_channel, job_id))

    def notify_change(self, job_id: str, version: int) -> None:
        """Tell entity watchers, at commit, which change was made (``version:job``)."""
        self._notifications.add((self.backend.change_channel, f"{version}:{job_id}"))

    async def finish(self, *, commit: bool) -> None:
        """Send this transaction's NOTIFYs, and COMMIT, in one round trip.

        A query without parameters may hold several statements (simple query
        protocol), so the wake-ups cost no round trip of their own; their
        channels and payloads are quoted literals.
        """
        statements: list[sql.Composable] = []
        if self._notifications:
            notifies = sql.SQL(", ").join(
                sql.SQL("pg_notify({}, {})").format(sql.Literal(channel), sql.Literal(payload))
                for channel, payload in sorted(self._notifications)
            )
            statements.append(sql.SQL("SELECT {}").format(notifies))
        if commit:
            statements.append(sql.SQL("COMMIT"))
        if statements:
            await self.conn.execute(sql.SQL("; ").join(statements), prepare=False)


class _PgWatch:
    def __init__(self, event: Wakeup) -> None:
        self.event = event

    async def wait(self, timeout: float) -> None:
        await self.event.wait(timeout)
        self.event.clear()


class PostgresBackend:
    name = "postgres"
    capabilities = frozenset({"multi_process", "partial_index", "join_transaction", ADVANCE_MANY})

    def __init__(self, app_id: str, options: dict[str, Any]) -> None:
        self.app_id = app_id
        self.schema = app_id  # validated by the core: ^[a-z][a-z0-9_-]{0,47}$
        self.options = options
        self.queue_channel = f"hotmesh:{app_id}:q"
        self.job_channel = f"hotmesh:{app_id}:j"
        self.change_channel = f"hotmesh:{app_id}:c"  # entity changes, for watch
        self._change_feeds: set[ChangeQueue] = set()
        # Names this app's connections in pg_stat_activity (operators, tests).
        self.application_name = f"hotmesh:{app_id}"
        self.dsn = ""
        self.pool: AsyncConnectionPool[Connection] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._queue_events: dict[str, Wakeup] = {}
        # queue -> (monotonic time, seconds until its next task was due then),
        # from a claim that found nothing: the idle wait that follows uses it.
        self._next_due: dict[str, tuple[float, float | None]] = {}
        self._job_watchers: dict[str, set[Wakeup]] = {}
        self.buckets: dict[str, str] = {}  # job id -> bucket (PgStore's hint)
        self._told_not_maintaining = False  # said once: this role skips maintenance
        self._warned_unmaintained = False  # warned once: nobody has maintained for a day

    def remember_bucket(self, job_id: str, bucket: str) -> None:
        if len(self.buckets) >= BUCKET_HINTS:
            self.buckets.clear()  # hints only: forgetting costs one wider query each
        self.buckets[job_id] = bucket

    # -- lifecycle -------------------------------------------------------------
    async def open(self) -> None:
        if self.pool is not None:
            return
        # The options first: a typo is said before anything is connected or started.
        pool_size = int(number_option(self.options, "pool_size", 10, whole=True, least=1))
        pool_min = int(number_option(self.options, "pool_min", 1, whole=True, least=0))
        if pool_min > pool_size:
            raise InvalidOption(
                f"the postgres backend option pool_min ({pool_min}) is more than"
                f" pool_size ({pool_size})"
            )
        number_option(self.options, "pool_timeout", 30.0, whole=False, least=0.001)
        connect_options("", self.options)
        self.dsn = await resolve_dsn(self.options)
        try:
            first = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, **connect_options(self.dsn, self.options)
            )
        except psycopg.OperationalError as error:
            # Unreachable, refused, bad credentials: the server's own words.
            message = " ".join(str(error).split())
            raise BackendUnavailable(f"cannot connect to PostgreSQL: {message}") from None
        async with first as conn:
            check_server_version(conn.info.server_version)
            if self.options.get("provision", True):
                await apply_migrations(conn, self.schema)
            else:  # a read-only look (the CLI): never create an app by a typo
                apps = await app_schemas(conn)
                if self.schema not in apps:
                    raise UnknownApp(self.app_id, apps)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.dsn,
            min_size=pool_min,
            max_size=pool_size,
            # How long a statement waits for a connection (and, while the
            # server is away, for it to come back) before BackendUnavailable.
            timeout=number_option(self.options, "pool_timeout", 30.0, whole=False, least=0.001),
            name=self.application_name,  # psycopg.pool's log lines say whose pool
            reconnect_timeout=RECONNECT_ATTEMPT,
            reconnect_failed=restart_reconnecting,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "application_name": self.application_name,
                **connect_options(self.dsn, self.options),
            },
            configure=self._configure,
            open=False,
        )
        await pool.open(wait=True)
        self.pool = pool
        self._listener = asyncio.create_task(self._listen(), name=f"hotmesh-listen:{self.app_id}")
        await wait_event(self._listening, 10)

    async def list_apps(self) -> list[str]:
        """The apps of this database (schemas with HotMesh's tables), without opening."""
        dsn = self.dsn or await resolve_dsn(self.options)
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, **connect_options(dsn, self.options)
            )
        except psycopg.OperationalError as error:
            message = " ".join(str(error).split())
            raise BackendUnavailable(f"cannot connect to PostgreSQL: {message}") from None
        async with conn:
            return await app_schemas(conn)

    async def _configure(self, conn: Connection) -> None:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.options.get("drop_on_close"):
            # Test isolation only: a real app's schema is never dropped.
            async with await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, **connect_options(self.dsn, self.options)
            ) as conn:
                await conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
                )

    def now(self) -> float:
        return time.time()

    # -- housekeeping ------------------------------------------------------------
    async def maintain(self, *, now: datetime | None = None) -> int:
        """One pass (every worker, about once a minute); returns the jobs removed.

        First, in a transaction, ``hm_maintain``: expired jobs outside a
        droppable partition are deleted, the coming days' partitions made. Then
        the partitions of days that are over and fully expired are detached
        ``CONCURRENTLY`` (no lock that stops the workload; it cannot run in a
        transaction) and dropped. ``now`` runs the pass as of another time
        (tests, operators catching up).

        Making and dropping partitions is DDL, so only the schema's owner may
        run the pass; a member of the owner role (a superuser, say) runs it as
        the owner, so that every partition keeps the one owner that can drop it
        later. Any other role (a least-privilege worker) skips it, saying so
        once: the owner runs ``hotmesh db maintain`` on a schedule instead
        (docs/least-privilege.md explains why this is not a SECURITY DEFINER
        function).
        """
        allowed, role = await self._maintainer(now)
        if not allowed:
            return 0
        async with self.transaction() as tx:
            if role is not None:
                await tx.run(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)), [])
            removed = await tx.store.expire_jobs(now)
        async with self._owner_connection(role) as conn:
            # The very lock hm_maintain tries (session-scoped here): a drop and
            # another process's pass never overlap, so an ATTACH there cannot
            # wait on a DETACH ... CONCURRENTLY here that waits on it.
            lock = [f"{self.schema}:maintain"]
            cursor = await conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 7)) AS mine", lock
            )
            mine = await cursor.fetchone()
            if mine is None or not mine["mine"]:
                return removed  # another worker is dropping
            try:
                cursor = await conn.execute(
                    "SELECT bucket, jobs FROM hm_droppable(coalesce(%s::timestamptz,"
                    " clock_timestamp()))",
                    [now],
                )
                for day in await cursor.fetchall():
                    for table in DROPPED_WITH_THEIR_DAY:
                        await self._drop_partition(conn, table, f"{table}_{day['bucket']}")
                    removed += int(day["jobs"])
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 7))", lock)
        return removed

    async def _maintainer(self, now: datetime | None) -> tuple[bool, str | None]:
        """Whether this role may run the maintenance pass, and the owner role to
        act as when it is a member of the owner rather than the owner itself.

        A role that may not is told once per process, and warned once if no
        pass has run for a day (tomorrow's signals partition, made by every
        pass, is missing), since then expired work is piling up.
        """
        async with self.transaction(readonly=True) as tx:
            row = await tx.one(
                "SELECT current_user AS me, pg_get_userbyid(nspowner) AS owner,"
                " pg_has_role(nspowner, 'MEMBER') AS member,"
                " to_regclass(quote_ident('signals_' || hm_day_bucket("
                "coalesce(%s::timestamptz, clock_timestamp()) + interval '1 day'))) IS NOT NULL"
                " AS maintained FROM pg_namespace WHERE nspname = %s",
                [now, self.schema],
            )
        if row is None:
            return False, None  # the schema is gone: nothing to maintain
        if row["member"]:
            return True, None if row["owner"] == row["me"] else str(row["owner"])
        if not self._told_not_maintaining:
            self._told_not_maintaining = True
            log.info(
                "role %r does not own app %r (%r does): this process skips the maintenance"
                " pass (expiry, partitions); the owner runs it: `hotmesh --app %s db"
                " maintain` with the owner's DSN, on a schedule (hourly is plenty)",
                row["me"],
                self.app_id,
                row["owner"],
                self.app_id,
            )
        if not row["maintained"] and not self._warned_unmaintained:
            self._warned_unmaintained = True
            log.warning(
                "app %r has had no maintenance pass for a day (no partitions ahead):"
                " expired work is not removed; schedule `hotmesh --app %s db maintain`"
                " with the owner's (%r) DSN",
                self.app_id,
                self.app_id,
                row["owner"],
            )
        return False, None

    @asynccontextmanager
    async def _owner_connection(self, role: str | None) -> AsyncIterator[Connection]:
        """A connection acting as the schema's owner: a pooled one when this role
        is the owner, else one of its own after ``SET ROLE``, so that no pooled
        connection (which the workload reuses) ever acts as the owner."""
        assert self.pool is not None
        if role is None:
            async with pooled(self.pool) as conn:
                yield conn
            return
        async with await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            row_factory=dict_row,
            application_name=self.application_name,
            **connect_options(self.dsn, self.options),
        ) as conn:
            await self._configure(conn)
            await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            yield conn

    async def grant(self, role: str, *, read_only: bool = False) -> list[str]:
        """Give ``role`` what a worker (``read_only``: an inspecting client) of
        this app needs; run with the owner's DSN (``hotmesh db grant``)."""
        if self.pool is None:
            await self.open()
        assert self.pool is not None
        async with pooled(self.pool) as conn:
            return await grant_role(conn, self.schema, role, read_only=read_only)

    async def _drop_partition(self, conn: Connection, parent: str, child: str) -> None:
        cursor = await conn.execute(
            "SELECT inhdetachpending AS pending FROM pg_inherits"
            " WHERE inhrelid = to_regclass(%s) AND inhparent = to_regclass(%s)",
            [sql.Identifier(child).as_string(conn), sql.Identifier(parent).as_string(conn)],
        )
        attached = await cursor.fetchone()
        if attached is not None:  # a detach cut short earlier is finished instead
            how = sql.SQL("FINALIZE" if attached["pending"] else "CONCURRENTLY")
            await conn.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {} {}").format(
                    sql.Identifier(parent), sql.Identifier(child), how
                ),
                prepare=False,
            )
        await conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(child)), prepare=False
        )

    @asynccontextmanager
    async def transaction(
        self, *, readonly: bool = False, single: bool = False
    ) -> AsyncIterator[PgTransaction]:
        if self.pool is None:
            await self.open()
        assert self.pool is not None
        try:
            conn = await connection_from(self.pool)
        except psycopg.OperationalError as error:  # PoolTimeout too: no server to reach
            raise BackendUnavailable(f"PostgreSQL is unreachable: {error}") from error
        # Read-only work, and work of one statement, run as autocommit
        # statements (no BEGIN/COMMIT round trips); the rest BEGINs and COMMITs
        # by hand, so that the NOTIFYs ride with the COMMIT.
        begun = not (readonly or single)
        tx = PgTransaction(self, conn, readonly=readonly, single=single and not readonly)
        try:
            if begun:
                await tx.begin()
            yield tx
            await tx.finish(commit=begun)
        except BaseException as error:
            if begun and not tx.conn.broken:
                # A failed or cancelled body: undo. A connection cancelled
                # mid-query is reset or discarded by the pool anyway.
                with contextlib.suppress(Exception):
                    await tx.conn.execute("ROLLBACK", prepare=False)
            if isinstance(error, psycopg.OperationalError) and tx.conn.broken:
                raise BackendUnavailable(
                    f"the connection to PostgreSQL was lost mid-transaction ({error}); try again"
                ) from error
            if isinstance(error, psycopg.errors.InsufficientPrivilege):
                # A role without a grant it needs (docs/least-privilege.md):
                # a HotMesh error naming the role and the app, not psycopg's.
                raise permission_denied(error, role=tx.conn.info.user, app=self.app_id) from error
            raise
        finally:
            if not tx.returned:
                await give_back(self.pool, tx.conn)

    # -- wake-ups --------------------------------------------------------------
    def queue_event(self, queue: str) -> Wakeup:
        event = self._queue_events.get(queue)
        if event is None:
            event = self._queue_events[queue] = Wakeup()
        return event

    async def _listen(self) -> None:
        lost_at: float | None = None  # when the LISTEN connection was lost, till it is back
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    application_name=self.application_name,
                    **connect_options(self.dsn, self.options),
                ) as conn:
                    for channel in (self.queue_channel, self.job_channel, self.change_channel):
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self._listening.set()
                    self._wake_everyone()  # anything may have happened while we were away
                    if lost_at is not None:
                        log.warning(
                            "LISTEN connection back after %.1f s", time.monotonic() - lost_at
                        )
                        lost_at = None
                    async for note in conn.notifies():
                        if note.channel == self.queue_channel:
                            self.queue_event(note.payload).set()
                        elif note.channel == self.change_channel:
                            version, _, job_id = note.payload.partition(":")
                            for feed in self._change_feeds:
                                feed.put((job_id, int(version)))
                        else:
                            for event in self._job_watchers.get(note.payload, ()):
                                event.set()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # One line an outage, not one a second while it lasts.
                message = " ".join(str(error).split())
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning("LISTEN connection lost (%s); reconnecting every second", message)
                else:
                    log.debug("LISTEN connection not back yet (%s)", message)
                await asyncio.sleep(1.0)

    def _wake_everyone(self) -> None:
        for feed in self._change_feeds:
            feed.put(None)  # notes may have been missed while not listening
        for event in self._queue_events.values():
            event.set()
        for watchers in self._job_watchers.values():
            for event in watchers:
                event.set()

    def note_next_due(self, queue: str, due: float | None) -> None:
        """A claim of ``queue`` found nothing; its next task is due in ``due`` seconds."""
        self._next_due[queue] = (time.monotonic(), due)

    async def _seconds_to_next_due(self, queues: Sequence[str]) -> float | None:
        noted = self._next_due.pop(queues[0], None) if len(queues) == 1 else None
        if noted is not None and time.monotonic() - noted[0] < FRESH_CLAIM:
            at, due = noted
            return None if due is None else due - (time.monotonic() - at)
        async with self.transaction(readonly=True) as tx:
            row = await tx.one(
                "SELECT extract(epoch FROM min(visible_at) - clock_timestamp())::float8 AS due"
                " FROM tasks WHERE queue = ANY(%s) AND visible_at > clock_timestamp()",
                [list(queues)],
            )
        return None if row is None or row["due"] is None else float(row["due"])

    async def wait_for_tasks(self, queues: Sequence[str], timeout: float) -> None:
        # Anything enqueued after the claim that told us the due time NOTIFYs
        # (its queue event was cleared before the claim), so it is not missed.
        due = await self._seconds_to_next_due(queues)
        if due is not None:
            timeout = min(timeout, due + 0.001)
        await wait_any([self.queue_event(q) for q in queues], max(timeout, 0.0))

    @asynccontextmanager
    async def watch_job(self, job_id: str) -> AsyncIterator[_PgWatch]:
        event = Wakeup()
        watchers = self._job_watchers.setdefault(job_id, set())
        watchers.add(event)
        try:
            yield _PgWatch(event)
        finally:
            watchers.discard(event)
            if not watchers:
                self._job_watchers.pop(job_id, None)

    # -- the caller's transaction (connection=) --------------------------------
    async def joined(self, connection: Any) -> Backend:
        if self.pool is None:
            await self.open()
        return cast(Backend, JoinedBackend(self, await driver_connection(connection)))

    # -- entity change feed (watch) --------------------------------------------
    @asynccontextmanager
    async def watch_changes(self) -> AsyncIterator[ChangeQueue]:
        if self.pool is None:
            await self.open()
        await self._listening.wait()  # LISTEN is on: no change after this is missed
        feed = ChangeQueue()
        self._change_feeds.add(feed)
        try:
            yield feed
        finally:
            self._change_feeds.discard(feed)
