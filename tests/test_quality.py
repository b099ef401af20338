"""The packages stay clean under ruff, ruff format, mypy --strict and the import contracts.

Each tool runs as ``python -m ...`` of this interpreter (the ``dev`` extra
installs them), so a tool on PATH from another install is never what is
checked. A missing tool skips its test, saying so, except in CI (``CI`` set),
where it fails: there a skipped quality check would pass unchecked code.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(module: str, *command: str) -> None:
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed for {sys.executable} (pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run every quality check", pytrace=False)
        pytest.skip(message)
    done = subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff() -> None:
    run("ruff", "-m", "ruff", "check", ".")


def test_ruff_format() -> None:
    run("ruff", "-m", "ruff", "format", "--check", ".")


def test_mypy_strict() -> None:
    run("mypy", "-m", "mypy")


def test_import_contracts() -> None:
    run(
        "importlinter",
        "-c",
        "import sys; from importlinter.cli import lint_imports_command;"
        " sys.exit(lint_imports_command())",
    )
