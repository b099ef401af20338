"""``python -m bench [--quick]``: every standard workload, ours and the peer, one table.

Runs W0-W6 of ../shared/BENCH.md against HotMesh (postgres and memory backends)
and DBOS Transact on the same PostgreSQL server in the same run, reports the
median of the repetitions, and writes ``bench/results/latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from .harness import Engine, median, percentile
from .pgbench import ceiling_tps
from .recovery import run_recovery
from .report import Row, render

SIZES = {
    "full": {"w1": 500, "w2": 100, "w3": 200, "w4": 200, "w5": 200, "reps": 3, "w0_seconds": 10},
    "quick": {"w1": 60, "w2": 100, "w3": 20, "w4": 20, "w5": 20, "reps": 1, "w0_seconds": 3},
}


def server_dsn() -> str:
    return os.environ.get("HOTMESH_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


# Databases are named per run, and dropped after it: two runs at once (two
# checkouts' test suites on one server) must not drop each other's.
RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
CREATED: list[str] = []


def fresh_database(dsn: str, name: str) -> str:
    name = f"{name}_{RUN}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    CREATED.append(name)
    from sqlalchemy.engine import make_url  # a URL (not key=value): DBOS needs one

    return make_url(dsn).set(database=name).render_as_string(hide_password=False)


def commits(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def make_engine(name: str) -> Engine:
    if name.startswith("hotmesh-"):
        from .adapters.hotmesh import HotMeshEngine

        return HotMeshEngine(name.removeprefix("hotmesh-"))
    from .adapters.dbos_engine import DBOSEngine

    return DBOSEngine()


async def measure(name: str, dsn: str, size: dict[str, int]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    engine = make_engine(name)
    # Commits per workflow: a W1 run alone, between an open and a close (closing
    # connections flushes their statistics), less an empty open/close.
    before = commits(dsn)
    await engine.open(dsn)
    await engine.close()
    await asyncio.sleep(0.5)
    overhead = commits(dsn) - before
    before = commits(dsn)
    await engine.open(dsn)
    await engine.w1_sequential(size["w1"])
    await engine.close()
    await asyncio.sleep(0.5)
    figures["w1_commits"] = (commits(dsn) - before - overhead) / size["w1"]

    await engine.open(dsn)
    try:
        w1 = [await engine.w1_sequential(size["w1"]) for _ in range(size["reps"])]
        figures["w1_wfs"] = size["w1"] / median(w1)
        figures["w1_step_ms"] = median(w1) / (size["w1"] * 3) * 1000
        figures["w2_s"] = median([await engine.w2_fanout(size["w2"]) for _ in range(size["reps"])])
        w3: list[float] = []
        for _ in range(size["reps"]):
            w3 += await engine.w3_signal(size["w3"])
        figures["w3"] = (percentile(w3, 50), percentile(w3, 95), percentile(w3, 99))
        w4: list[float] = []
        for _ in range(size["reps"]):
            w4 += await engine.w4_sleep(size["w4"], 1.0)
        figures["w4"] = (percentile(w4, 50), percentile(w4, 99))
        w6 = [await engine.w6_contention(20, 50) for _ in range(size["reps"])]
        figures["w6_final"] = [final for final, _ in w6]
        figures["w6_ops"] = median([1000 / seconds for _, seconds in w6])
    finally:
        await engine.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized N, one repetition")
    parser.add_argument("--engines", default="hotmesh-postgres,hotmesh-memory,dbos")
    parser.add_argument("--skip-recovery", action="store_true", help="skip W5")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the table (default bench/results/latest.md)",
    )
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    engines = [e for e in args.engines.split(",") if e]
    if "dbos" in engines:
        try:
            import dbos  # noqa: F401
        except ImportError:
            print("dbos is not installed (pip install -e '.[bench]'): peer figures skipped")
            engines.remove("dbos")
    server = server_dsn()
    began = time.time()
    results: dict[str, dict[str, Any]] = {}
    for name in engines:
        dsn = fresh_database(server, f"bench_{name.replace('-', '_')}")
        print(f"measuring {name} ...", flush=True)
        results[name] = asyncio.run(measure(name, dsn, size))
        if not args.skip_recovery and name != "hotmesh-memory":
            results[name]["w5"] = run_recovery(name, dsn, size["w5"])
    clients = 10
    w0 = ceiling_tps(fresh_database(server, "bench_w0"), clients, size["w0_seconds"])
    rows: list[Row] = render(results, w0, clients)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with psycopg.connect(server) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()
    versions = [
        f"Python {platform.python_version()}",
        f"PostgreSQL {pg_version[0] if pg_version else '?'}",
    ]
    try:
        from importlib.metadata import version

        versions.append(f"dbos {version('dbos')}")
    except Exception:
        pass
    header = (
        f"{'quick' if args.quick else 'full'} run, {stamp}, {platform.machine()} "
        f"{os.cpu_count()} cores, {', '.join(versions)}; "
        f"{time.time() - began:.0f} s"
    )
    table = "\n".join(
        [
            "| id | figure | ours | peer (DBOS) | ratio |",
            "|---|---|---|---|---|",
            *(f"| {r.id} | {r.figure} | {r.ours} | {r.peer} | {r.ratio} |" for r in rows),
        ]
    )
    text = f"# Benchmark results\n\n{header}\n\n{table}\n"
    print("\n" + text)
    out = args.out or Path(__file__).parent / "results" / (
        "latest-quick.md" if args.quick else "latest.md"
    )
    out.write_text(text)
    print(f"written to {out}")
    sys.exit(0)


def drop_created() -> None:
    with psycopg.connect(server_dsn(), autocommit=True) as conn:
        for name in CREATED:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    try:
        main()
    finally:
        drop_created()
