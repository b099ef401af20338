"""Schema provisioning: one schema per app, migrated forward, never dropped.

Migrations are the ``sql/migrations/NNNN_name.sql`` files, applied in order
under a transaction-scoped advisory lock, so several processes may run their
first ``init`` at once.  Applied versions are kept in ``migrations``.
"""

from __future__ import annotations

import logging
from importlib.resources import files

import psycopg
from psycopg import sql

__all__ = ["Migration", "apply_migrations", "migrations"]

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


async def apply_migrations(conn: psycopg.AsyncConnection[object], schema: str) -> list[int]:
    """Create the schema if needed and apply missing migrations; return the versions applied."""
    applied_now: list[int] = []
    async with conn.transaction():
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
        cursor = await conn.execute("SELECT version FROM migrations")
        done = {row[0] for row in await cursor.fetchall()}  # type: ignore[index]
        known = migrations()
        ahead = sorted(v for v in done if v > max(m.version for m in known))
        if ahead:
            # A newer HotMesh migrated this schema (a rolling deploy, or a
            # downgrade): carry on, but say so, since this code never saw it.
            log.warning(
                "schema %r has migrations %s that this HotMesh does not know (it knows"
                " up to %d): upgrade HotMesh in every process of the app",
                schema,
                ahead,
                max(m.version for m in known),
            )
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
