"""What a worker (or read-only) role of one app is granted, by the app's owner.

The layout (docs/least-privilege.md): one owner role per app (or for all of
them) owns the schema, migrates it and runs the maintenance pass; a worker
role per app gets only what running workflows needs. Privileges on a
partitioned table are checked on the parent only when rows are reached
through it, which is how the engine reaches them, so the day partitions that
maintenance attaches later need no grant of their own; the owner's default
privileges in the schema cover them anyway, and, what matters, the tables and
sequences a later migration creates (migrations run as the owner).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from hotmesh_core.errors import HotMeshError

from .connection import PermissionDenied

__all__ = ["UnknownRole", "grant_role", "grant_statements"]


class UnknownRole(HotMeshError, LookupError):
    """``db grant`` was given a role that does not exist on the server."""


# Workers write every table but the migrations record (whose versions decide
# what an open does) and the expiry bookkeeping, which only maintenance writes.
READ_ONLY_TABLES = ("migrations", "expire_days")


def grant_statements(schema: str, owner: str, role: str, *, read_only: bool) -> list[sql.Composed]:
    """The statements that give ``role`` a worker's privileges on one app's schema
    (``read_only``: those of an inspecting client: SELECT only)."""
    s, o, r = sql.Identifier(schema), sql.Identifier(owner), sql.Identifier(role)
    tables = sql.SQL("SELECT" if read_only else "SELECT, INSERT, UPDATE, DELETE")
    sequences = sql.SQL("SELECT" if read_only else "USAGE, SELECT")
    found = [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r),
        sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(tables, s, r),
        sql.SQL("GRANT {} ON ALL SEQUENCES IN SCHEMA {} TO {}").format(sequences, s, r),
        sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {} TO {}").format(s, r),
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON TABLES TO {}"
        ).format(o, s, tables, r),
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON SEQUENCES TO {}"
        ).format(o, s, sequences, r),
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT EXECUTE ON FUNCTIONS TO {}"
        ).format(o, s, r),
    ]
    if not read_only:
        found.extend(
            sql.SQL("REVOKE INSERT, UPDATE, DELETE ON {}.{} FROM {}").format(
                s, sql.Identifier(table), r
            )
            for table in READ_ONLY_TABLES
        )
    return found


async def grant_role(
    conn: psycopg.AsyncConnection[Any], schema: str, role: str, *, read_only: bool = False
) -> list[str]:
    """Grant ``role`` access to ``schema`` in one transaction; return the statements run.

    Run as the schema's owner or a member of it (a superuser, say): the grants
    are made as the owner (``SET LOCAL ROLE``), so that the owner, who is the
    grantor, can take them back, and its default privileges are the ones set.
    """
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        "SELECT (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s) AS owner,"
        " EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) AS known",
        [schema, role],
    )
    row = await cursor.fetchone()
    assert row is not None
    owner, exists = row["owner"], row["known"]
    if owner is None:
        raise HotMeshError(f"app {schema!r} is not provisioned: run `hotmesh db migrate` first")
    if not exists:
        raise UnknownRole(f"no role {role!r} on this server: CREATE ROLE it first")
    statements = grant_statements(schema, str(owner), role, read_only=read_only)
    try:
        async with conn.transaction():
            await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(str(owner))))
            for statement in statements:
                await conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as error:
        said = " ".join(str(error).split())
        raise PermissionDenied(
            f"only app {schema!r}'s owner ({owner!r}) or a member of it may grant access"
            f" to it; run this with the owner's DSN ({said})",
            role=conn.info.user,
            app=schema,
        ) from None
    return [statement.as_string(conn) for statement in statements]
