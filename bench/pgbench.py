"""W0: the ceiling — pgbench, one single-row INSERT per transaction, on the same server."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import psycopg


def ceiling_tps(dsn: str, clients: int, seconds: int) -> float | None:
    """Transactions per second of single-row INSERTs; None when pgbench is not installed."""
    if shutil.which("pgbench") is None:
        return None
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_w0")
        conn.execute("CREATE TABLE bench_w0 (id bigserial PRIMARY KEY, v integer)")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("INSERT INTO bench_w0 (v) VALUES (1);\n")
    done = subprocess.run(
        [
            "pgbench",
            "-n",
            "-f",
            script.name,
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(seconds),
            dsn,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 60,
    )
    match = re.search(r"tps = ([0-9.]+)", done.stdout)
    return float(match.group(1)) if match else None
