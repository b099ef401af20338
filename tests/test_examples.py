"""The seed's programs run on every backend and end with the expected entity."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hotmesh_core import VirtualClock
from hotmesh_core.plugins import backend_test_options

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def options(backend: str) -> dict[str, Any]:
    extra: dict[str, Any] = {"clock": VirtualClock()} if backend == "memory" else {}
    return {
        "app_id": f"ex{uuid.uuid4().hex[:10]}",
        "backend": backend,
        **backend_test_options(backend),
        **extra,
    }


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_research_agent(backend: str) -> None:
    final = await load("research_agent").main(**options(backend))
    assert final["status"] == "completed"
    assert set(final["perspectives"]) == {"optimistic", "skeptical", "synthesis"}
    assert final["perspectives"]["synthesis"] == {
        "finalAssessment": "cautiously positive",
        "confidence": 0.6,
    }
    assert final["confidence"] == 0.6
    assert len(final["findings"]) == 2
    checker = final["verification"]  # the child's own entity
    assert checker["query"] == final["query"]
    assert {v["source"] for v in checker["verifications"]} == set(checker["sources"])
    assert "verifications" not in final


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_data_pipeline(backend: str) -> None:
    pipeline = load("data_pipeline")
    final = await pipeline.main(interval="0.05s", iterations=12, **options(backend))
    # Twelve cleanings, each its own generation, then one triggered from outside
    # (a hook, while the job persists); the entity keeps the last ten entries.
    assert final["runs"] == 13
    assert final["rowsCleaned"] == sum(100 * run for run in range(1, 14))
    assert len(final["changeLog"]) == pipeline.KEEP
    assert [(e["action"], e["run"]) for e in final["changeLog"][-3:]] == [
        ("clean", 11),
        ("clean", 12),
        ("triggered", 13),
    ]
    assert final["policy"] == {"refreshInterval": "0.05s"}


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_the_greeter_worker_target_serves_the_demo(backend: str) -> None:
    """examples/greeter.py is what the README's `hotmesh worker` line serves."""
    from hotmesh_core import MemFlow
    from hotmesh_core.worker_command import load_target

    workflows, activities = load_target("examples.greeter:served")
    async with MemFlow.init(**options(backend)) as mf:
        await mf.worker("hello", workflows=workflows, activities=activities)
        handle = await mf.workflow.start("greeter", "hello", "greet-ada", ["Ada"], "hello")
        assert await handle.result(timeout=20) == {"name": "Ada", "greetings": ["Hello, Ada!"]}
