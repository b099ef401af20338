"""Entry point of the ``faults`` backend (group ``hotmesh.backends``).

The wrapper's capabilities are those of the backend it wraps for tests
(``HOTMESH_FAULTS_INNER``, default ``memory``) plus ``opt_in``: the conformance
suite runs it only when named (``--hotmesh-backend faults``), since by default
it would certify the inner backend a second time, slower (injected waits and
retries) and, while the engine has the defects it is meant to find, red.
"""

from __future__ import annotations

import os
from typing import Any

from hotmesh_core.plugins import BackendPlugin, backend_test_options, capabilities, hookimpl

from .backend import FaultsBackend

#: Declared by backends the conformance suite certifies only when asked by name.
OPT_IN = "opt_in"

#: The faults the conformance suite runs under: lost connections and wake-ups.
#: No crashes: nobody supervises the suite's workers, so a crashed one would
#: stay dead (the soak, ``python -m conformance.faults``, supervises and crashes).
SUITE_PROFILE: dict[str, Any] = {
    "p_lose_before": 0.02,
    "p_lose_after": 0.02,
    "p_lose_wait": 0.02,
    "p_wake": 0.1,
    "budget": 20,
}


def profile_overrides(text: str) -> dict[str, Any]:
    """``HOTMESH_FAULTS_OPTIONS``: ``p_lose_wait=0,seed=3`` (numbers, or text)."""
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = float(value) if "." in value else int(value)
        except ValueError:
            overrides[key.strip()] = value.strip()
    return overrides


def suite_inner() -> str:
    return os.environ.get("HOTMESH_FAULTS_INNER", "memory")


def test_options() -> dict[str, Any]:
    """The suite's options: the inner backend's test options, the suite profile, a seed."""
    inner = suite_inner()
    return {
        **backend_test_options(inner),
        **SUITE_PROFILE,
        "inner": inner,
        "seed": int(os.environ.get("HOTMESH_FAULTS_SEED", "0")),
        **profile_overrides(os.environ.get("HOTMESH_FAULTS_OPTIONS", "")),
    }


test_options.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


class FaultsPlugin(BackendPlugin):
    """Like any backend plugin, with capabilities taken from the inner backend."""

    @hookimpl
    def hotmesh_capabilities(self, name: str) -> list[str] | None:
        if name != self.name:
            return None
        return sorted(capabilities(suite_inner()) | {OPT_IN})


plugin = FaultsPlugin("faults", FaultsBackend, test_options=test_options)
