"""`python -m bench --quick` runs every workload end to end (correctness only, no thresholds)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from hotmesh_postgres.testing import test_dsn

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_runs_every_workload(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
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
    table = out.read_text()
    assert {f"W{i}" for i in range(7)} <= set(re.findall(r"^\| (W\d) \|", table, re.M))
    rows = {
        line.split(" | ")[1]: line.split(" | ")[2:]
        for line in table.splitlines()
        if line.startswith("| W")
    }
    assert rows["contention final value (must be 1000)"][0] == "[1000]"
    assert rows["recovery: lost"][0] == "0"
    assert rows["recovery: completed"][0] == "20"
    assert float(rows["sequential-3 workflows/s"][0].replace(",", "")) > 0
