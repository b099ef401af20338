"""Backends are found through entry points, never by import."""

from importlib.metadata import entry_points

import pytest

from hotmesh_core import BackendNotFound, MemFlow
from hotmesh_core.config import choose_backend
from hotmesh_core.plugins import installed_backends


def test_memory_is_registered_by_entry_point_only() -> None:
    names = {ep.name for ep in entry_points(group="hotmesh.backends")}
    assert "memory" in names
    assert "memory" in installed_backends()


async def test_backend_selected_by_name() -> None:
    mf = await MemFlow.init(app_id="plugins-by-name", backend="memory")
    assert mf.backend.name == "memory"
    await mf.shutdown()


async def test_unknown_backend_error_lists_what_is_installed() -> None:
    with pytest.raises(BackendNotFound, match=r"installed backends: .*memory"):
        await MemFlow.init(app_id="x", backend="cassandra")


def test_backend_resolution_order() -> None:
    assert choose_backend("memory", {"HOTMESH_BACKEND": "other"}) == "memory"
    assert choose_backend(None, {"HOTMESH_BACKEND": "memory"}) == "memory"
    assert choose_backend(None, {"DATABASE_URL": "postgresql://x"}) == "postgres"
    assert choose_backend(None, {}) == "postgres"


async def test_environment_selects_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTMESH_BACKEND", "memory")
    mf = await MemFlow.init(app_id="plugins-by-env")
    assert mf.backend.name == "memory"
    await mf.shutdown()


def test_sqlalchemy_style_urls_are_accepted() -> None:
    from hotmesh_postgres.connection import configured_dsn

    assert configured_dsn({"dsn": "postgresql+psycopg://u:p@h:5433/db"}) == (
        "postgresql://u:p@h:5433/db"
    )
    assert configured_dsn({}, {"DATABASE_URL": "postgres://u@h/db"}) == "postgresql://u@h/db"
    assert configured_dsn({"dsn": "host=h dbname=db"}) == "host=h dbname=db"
    assert configured_dsn({}, {}) is None
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        configured_dsn({"dsn": "mysql://u@h/db"})
