"""Entry point of the PostgreSQL backend (group ``hotmesh.backends``)."""

from __future__ import annotations

from typing import Any

from hotmesh_core.plugins import hookimpl
from hotmesh_core.protocols import Backend

from .backend import PostgresBackend

NAME = "postgres"


@hookimpl
def hotmesh_backend_names() -> list[str]:
    return [NAME]


@hookimpl
def hotmesh_backend(name: str, app_id: str, options: dict[str, Any]) -> Backend | None:
    if name != NAME:
        return None
    return PostgresBackend(app_id, options)


@hookimpl
def hotmesh_test_options(name: str) -> dict[str, Any] | None:
    if name != NAME:
        return None
    from .testing import test_dsn

    return {"dsn": test_dsn(), "drop_on_close": True}


@hookimpl
def hotmesh_capabilities(name: str) -> list[str] | None:
    return sorted(PostgresBackend.capabilities) if name == NAME else None
