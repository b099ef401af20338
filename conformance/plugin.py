"""pytest plugin of the conformance suite (loaded through the ``pytest11`` entry point).

Adds ``--hotmesh-backend`` (repeatable; default: every installed backend) and
the ``hm`` fixture, a :class:`Harness` that opens isolated apps on the backend
under test and shuts them down after the test.
"""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from hotmesh_core import MemFlow, VirtualClock
from hotmesh_core.memflow import Client
from hotmesh_core.plugins import backend_test_options, capabilities, installed_backends


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hotmesh")
    group.addoption(
        "--hotmesh-backend",
        action="append",
        default=[],
        dest="hotmesh_backends",
        help="backend(s) to certify with the conformance suite (default: all installed,"
        " except opt-in wrappers such as faults)",
    )


LOOP_SCOPE_UNSET = 'The configuration option "asyncio_default_fixture_loop_scope" is unset'


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(capability): skip unless the backend declares this capability"
    )
    # pytest-asyncio warns, at configure time, about a setting that changes
    # nothing for our fixtures (all function-scoped): a project that runs the
    # suite or uses our fixtures without setting it should not see that noise
    # (or fail on it under -W error). Runs before pytest-asyncio's configure.
    warnings.filterwarnings("ignore", message=re.escape(LOOP_SCOPE_UNSET), category=Warning)
    config.addinivalue_line("filterwarnings", f"ignore:{LOOP_SCOPE_UNSET}")


def selected_backends(config: pytest.Config) -> list[str]:
    """The backends named with ``--hotmesh-backend``, else every installed backend
    except those declaring ``opt_in`` (wrappers such as ``faults``, which re-run
    another backend and are certified only when named)."""
    chosen: list[str] = config.getoption("hotmesh_backends") or [
        name for name in installed_backends() if "opt_in" not in capabilities(name)
    ]
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hotmesh_backend" in metafunc.fixturenames:
        metafunc.parametrize("hotmesh_backend", selected_backends(metafunc.config))


class Harness:
    """Opens apps on the backend under test; each test gets apps of its own."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.capabilities = capabilities(backend)
        self.options = backend_test_options(backend)
        self._opened: list[Client] = []

    def require(self, capability: str) -> None:
        if capability not in self.capabilities:
            pytest.skip(f"backend {self.backend!r} does not declare capability {capability!r}")

    def new_app_id(self) -> str:
        return f"t{uuid.uuid4().hex[:20]}"

    async def memflow(
        self, app_id: str | None = None, *, virtual_clock: bool = False, **options: Any
    ) -> MemFlow:
        merged = {**self.options, **options}
        if app_id is not None:
            merged.pop("drop_on_close", None)  # the app's first opener cleans up, last
        if virtual_clock:
            self.require("virtual_clock")
            merged["clock"] = VirtualClock()
        mf = await MemFlow.init(app_id=app_id or self.new_app_id(), backend=self.backend, **merged)
        self._opened.append(mf)
        return mf

    async def client(self, app_id: str, **options: Any) -> Client:
        client = await MemFlow.Client(
            app_id=app_id, backend=self.backend, **{**self.options, **options}
        )
        self._opened.append(client)
        return client

    async def close(self) -> None:
        for opened in reversed(self._opened):
            await opened.shutdown()


@pytest_asyncio.fixture
async def hm(hotmesh_backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    harness = Harness(hotmesh_backend)
    marker = request.node.get_closest_marker("requires")
    if marker is not None:
        for capability in marker.args:
            harness.require(capability)
    try:
        yield harness
    finally:
        await harness.close()
