"""`python -m bench --quick` runs every workload end to end (correctness only, no thresholds).

Marked ``bench``: the README's test command runs this tier too, and the summary
reports it on a line of its own (``-m "not bench"`` leaves it out). The DBOS
peer figures need the ``bench`` extra (``pip install -e ".[bench]"``); without
it that one test is skipped, saying so, and the rest still run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hotmesh_postgres.testing import test_dsn

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    out = tmp_path_factory.mktemp("bench") / "table.md"
    env = {**os.environ, "HOTMESH_BENCH_DSN": test_dsn()}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert {f"W{i}" for i in range(7)} <= set(re.findall(r"^\| (W\d) \|", text, re.M))
    return {
        line.split(" | ")[1]: line.split(" | ")[2:]
        for line in text.splitlines()
        if line.startswith("| W")
    }


def test_quick_bench_runs_every_workload(table: dict[str, list[str]]) -> None:
    assert table["contention final value (must be 1000)"][0] == "[1000]"
    assert table["recovery: lost"][0] == "0"
    assert table["recovery: completed"][0] == "20"
    assert float(table["sequential-3 workflows/s"][0].replace(",", "")) > 0


@pytest.mark.skipif(
    importlib.util.find_spec("dbos") is None,
    reason="the bench extra is not installed (pip install -e '.[bench]'): no DBOS peer figures",
)
def test_quick_bench_measures_the_dbos_peer(table: dict[str, list[str]]) -> None:
    peer = table["sequential-3 workflows/s"][1]
    assert float(peer.replace(",", "")) > 0, table
    assert table["contention final value (must be 1000)"][1] == "[1000]"
    assert table["recovery: lost"][1] == "0"
