"""Backend discovery with pluggy: hook specs, the entry-point loader.

A backend package declares an entry point in the group ``hotmesh.backends``
pointing at a module with ``@hookimpl`` functions.  Nothing in ``hotmesh_core``
names a backend.  pluggy serves discovery and lifecycle only; the per-step path
calls the backend object directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from .errors import BackendNotFound
from .protocols import Backend

__all__ = [
    "BackendPlugin",
    "BackendSpec",
    "hookimpl",
    "hookspec",
    "plugin_manager",
    "resolve_backend",
]

PROJECT = "hotmesh"
ENTRY_POINT_GROUP = "hotmesh.backends"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class BackendSpec:
    """The hooks a backend plugin implements."""

    @hookspec
    def hotmesh_backend_names(self) -> list[str]:  # type: ignore[empty-body]
        """Names this plugin provides (used to list what is installed)."""

    @hookspec(firstresult=True)
    def hotmesh_backend(self, name: str, app_id: str, options: dict[str, Any]) -> Backend | None:
        """Return a backend instance for ``name``, or None if ``name`` is not yours."""

    @hookspec(firstresult=True)
    def hotmesh_test_options(self, name: str) -> dict[str, Any] | None:
        """Options for a throw-away test instance of ``name`` (used by ``conformance``)."""

    @hookspec(firstresult=True)
    def hotmesh_capabilities(self, name: str) -> list[str] | None:
        """Optional features of ``name`` that the conformance suite may exercise."""


class BackendPlugin:
    """The usual plugin: one backend name, its factory, its capabilities.

    A backend package exposes an instance and points its entry point at it::

        plugin = BackendPlugin("mydb", MyBackend, capabilities=["multi_process"])
        # pyproject.toml: [project.entry-points."hotmesh.backends"] mydb = "mypkg.plugin:plugin"
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[str, dict[str, Any]], Backend],
        *,
        capabilities: Iterable[str] = (),
        test_options: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.factory = factory
        self.capabilities = sorted(capabilities)
        self.test_options = test_options or dict

    @hookimpl
    def hotmesh_backend_names(self) -> list[str]:
        return [self.name]

    @hookimpl
    def hotmesh_backend(self, name: str, app_id: str, options: dict[str, Any]) -> Backend | None:
        return self.factory(app_id, options) if name == self.name else None

    @hookimpl
    def hotmesh_test_options(self, name: str) -> dict[str, Any] | None:
        return self.test_options() if name == self.name else None

    @hookimpl
    def hotmesh_capabilities(self, name: str) -> list[str] | None:
        return self.capabilities if name == self.name else None


_manager: pluggy.PluginManager | None = None


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded from entry points on first use."""
    global _manager
    if _manager is None:
        manager = pluggy.PluginManager(PROJECT)
        manager.add_hookspecs(BackendSpec)
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        manager.check_pending()
        _manager = manager
    return _manager


def installed_backends() -> list[str]:
    names: list[str] = []
    for provided in plugin_manager().hook.hotmesh_backend_names():
        names.extend(provided)
    return sorted(set(names))


def resolve_backend(name: str, app_id: str, options: dict[str, Any]) -> Backend:
    backend = plugin_manager().hook.hotmesh_backend(name=name, app_id=app_id, options=options)
    if backend is None:
        raise BackendNotFound(name, installed_backends())
    return backend  # type: ignore[no-any-return]


def backend_test_options(name: str) -> dict[str, Any]:
    options = plugin_manager().hook.hotmesh_test_options(name=name)
    return dict(options or {})


def capabilities(name: str) -> frozenset[str]:
    declared = plugin_manager().hook.hotmesh_capabilities(name=name)
    return frozenset(declared or ())
