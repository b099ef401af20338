"""Entry point of the PostgreSQL backend (group ``hotmesh.backends``)."""

from __future__ import annotations

from typing import Any

from hotmesh_core.plugins import BackendPlugin

from .backend import PostgresBackend


def test_options() -> dict[str, Any]:
    """A throw-away database (local server or embedded), each app's schema dropped after."""
    from .testing import test_dsn

    return {"dsn": test_dsn(), "drop_on_close": True}


test_options.__test__ = False  # type: ignore[attr-defined]  # not a pytest test

plugin = BackendPlugin(
    "postgres",
    PostgresBackend,
    capabilities=PostgresBackend.capabilities,
    test_options=test_options,
)
