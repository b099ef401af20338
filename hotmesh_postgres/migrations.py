"""Schema provisioning: one schema per app, migrated forward, never dropped.

Migrations are the ``sql/migrations/NNNN_name.sql`` files, applied in order
under a transaction-scoped advisory lock, so several processes may run their
first ``init`` at once.  Applied versions are kept in ``migrations``.

A schema that is already current is only read (catalogs and ``migrations``),
never locked or altered, so a least-privilege worker role, which may not
create anything, opens it like the owner does (docs/least-privilege.md). When
there is something to apply and the role may not, the open fails with
:class:`MigrationRequired` naming the role that must run ``hotmesh db
migrate``. Migrations run as the schema's owner (``SET LOCAL ROLE`` when a
member of it, a superuser say, connects), so every object keeps one owner and
the owner's default privileges keep covering the worker roles.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from hotmesh_core.errors import MigrationRequired, PermissionDenied

__all__ = ["Migration", "MigrationRequired", "apply_migrations", "migrations"]

log = logging.getLogger("hotmesh.postgres")


class Migration:
    def __init__(self, version: int, name: str, text: str) -> None:
        self.version = version
        self.name = name
        self.text = text


def migrations() -> list[Migration]:
    folder = files("hotmesh_postgres") / "sql" / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


# What the connected role finds and may do, from the catalogs (readable by any
# role, whatever its grants): whether the schema exists, who owns it, whether
# this role may use it, whether it has a migrations table and may read it, and
# whether it may migrate (be the owner, or a member that can SET ROLE to it;
# for a new schema, CREATE on the database). A schema made empty for the app
# by a DBA (CREATE SCHEMA ... AUTHORIZATION owner) is provisioned like a new one.
SCHEMA_STATE = """
SELECT current_user AS me, current_database() AS db, n.oid IS NOT NULL AS present,
       pg_get_userbyid(n.nspowner) AS owner, c.oid IS NOT NULL AS tracked,
       CASE WHEN n.oid IS NULL THEN false
            ELSE has_schema_privilege(n.oid, 'USAGE') END AS usable,
       CASE WHEN c.oid IS NULL OR NOT has_schema_privilege(n.oid, 'USAGE') THEN false
            ELSE has_table_privilege(c.oid, 'SELECT') END AS readable,
       CASE WHEN n.oid IS NULL THEN has_database_privilege(current_database(), 'CREATE')
            ELSE pg_has_role(n.nspowner, 'MEMBER') END AS may_migrate
  FROM (SELECT 1) AS one
  LEFT JOIN pg_namespace n ON n.nspname = %(schema)s
  LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'migrations'
"""


async def apply_migrations(conn: psycopg.AsyncConnection[Any], schema: str) -> list[int]:
    """Create the schema if needed and apply missing migrations; return the versions applied.

    Raises :class:`PermissionDenied` when this role may not use the schema at
    all, :class:`MigrationRequired` when there is work only the owner may do.
    """
    known = migrations()
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(SCHEMA_STATE, {"schema": schema})
    state = await cursor.fetchone()
    assert state is not None
    role, owner = str(state["me"]), state["owner"]
    if state["present"] and not state["readable"] and (state["tracked"] or not state["usable"]):
        raise PermissionDenied(
            f"role {role!r} has no access to app {schema!r} (schema {schema!r}, owned by"
            f" {owner!r}): a role of another app cannot use it; if this one should, the"
            f" owner grants it with `hotmesh --app {schema} db grant --role {role}`",
            role=role,
            app=schema,
        )
    if state["readable"]:
        done = await _applied(conn, schema)
        if done >= {m.version for m in known}:
            _warn_if_ahead(schema, done, known)
            return []  # current: nothing is locked, created or altered
        missing = sorted({m.version for m in known} - done)
    else:
        missing = [m.version for m in known]
    if not state["may_migrate"]:
        raise _migration_required(schema, role, owner, missing, str(state["db"]))
    try:
        return await _migrate(conn, schema, known, owner if owner != role else None)
    except psycopg.errors.InsufficientPrivilege:
        raise _migration_required(schema, role, owner, missing, str(state["db"])) from None


async def app_schemas(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Schemas that hold a HotMesh app: a ``migrations`` and a ``jobs`` table."""
    cursor = conn.cursor(row_factory=tuple_row)
    await cursor.execute(
        "SELECT n.nspname FROM pg_namespace n"
        " WHERE EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid"
        "   AND c.relname = 'migrations')"
        " AND EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid"
        "   AND c.relname = 'jobs')"
        " ORDER BY 1"
    )
    return [str(row[0]) for row in await cursor.fetchall()]


async def _applied(conn: psycopg.AsyncConnection[Any], schema: str) -> set[int]:
    cursor = conn.cursor(row_factory=tuple_row)  # whatever rows the connection makes
    await cursor.execute(
        sql.SQL("SELECT version FROM {}.migrations").format(sql.Identifier(schema))
    )
    return {int(row[0]) for row in await cursor.fetchall()}


def _migration_required(
    schema: str, role: str, owner: str | None, missing: list[int], database: str
) -> MigrationRequired:
    if owner is None:
        what = f"app {schema!r} is not provisioned, and role {role!r} may not create schemas"
        who = f"a role with CREATE on database {database!r} (the app's owner to be)"
    else:
        what = f"app {schema!r} needs migrations {missing}, and role {role!r} may not apply them"
        who = f"the owner's ({owner!r})"
    return MigrationRequired(
        f"{what}: run `hotmesh --app {schema} db migrate` with {who} DSN, then start"
        " this process again (docs/least-privilege.md)",
        role=role,
        app=schema,
    )


def _warn_if_ahead(schema: str, done: set[int], known: list[Migration]) -> None:
    newest = max(m.version for m in known)
    ahead = sorted(v for v in done if v > newest)
    if ahead:
        # A newer HotMesh migrated this schema (a rolling deploy, or a
        # downgrade): carry on, but say so, since this code never saw it.
        log.warning(
            "schema %r has migrations %s that this HotMesh does not know (it knows"
            " up to %d): upgrade HotMesh in every process of the app",
            schema,
            ahead,
            newest,
        )


async def _migrate(
    conn: psycopg.AsyncConnection[Any], schema: str, known: list[Migration], owner: str | None
) -> list[int]:
    """Apply what is missing, under the app's advisory lock, as ``owner`` if given."""
    applied_now: list[int] = []
    async with conn.transaction():
        if owner is not None:
            await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", [f"hotmesh:{schema}"]
        )
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        done = await _applied(conn, schema)
        _warn_if_ahead(schema, done, known)
        for migration in known:
            if migration.version in done:
                continue
            await conn.execute(migration.text.encode())
            await conn.execute(
                "INSERT INTO migrations (version, name) VALUES (%s, %s)",
                [migration.version, migration.name],
            )
            applied_now.append(migration.version)
    return applied_now
