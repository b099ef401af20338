"""Every code block of the README runs, and the demo command works with nothing configured."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hotmesh_postgres.testing import test_dsn

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def run(code: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_demo_is_the_readme_program() -> None:
    assert PYTHON_BLOCKS[0] in (ROOT / "examples" / "hello.py").read_text()


def test_python_blocks_run_in_order_against_postgres() -> None:
    env = {**os.environ, "HOTMESH_DSN": test_dsn()}
    env.pop("HOTMESH_BACKEND", None)
    outputs = [run(block, env) for block in PYTHON_BLOCKS]
    assert outputs[0].strip() == "{'name': 'Ada', 'greetings': ['Hello, Ada!']}"
    assert "time to stretch" in outputs[2]
    assert outputs[-1].strip() == outputs[0].strip()  # the sync facade reads the same job
    assert len(PYTHON_BLOCKS) >= 4


def test_demo_command_runs_on_embedded_postgres(tmp_path: Path) -> None:
    """`python examples/hello.py` with no server configured: the embedded default."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HOTMESH_DSN", "DATABASE_URL", "HOTMESH_BACKEND")
    }
    env["HOTMESH_DATA_DIR"] = str(tmp_path / "pg")
    done = subprocess.run(
        [sys.executable, "examples/hello.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'name': 'Ada', 'greetings': ['Hello, Ada!']}"
    assert (tmp_path / "pg" / "PG_VERSION").exists()


@pytest.mark.parametrize(
    "command",
    ["pip install -e . && python examples/hello.py", 'pip install -e ".[dev]" && python -m pytest'],
)
def test_the_two_commands_are_in_the_readme_and_ci(command: str) -> None:
    assert command in README
    if "pytest" in command:
        assert command in (ROOT / ".ci" / "run").read_text().replace("-q ", "")
