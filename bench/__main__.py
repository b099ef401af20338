"""``python -m bench [--quick]``: every standard workload, ours and the peers, three tables.

Runs W0-W6 of ../shared/BENCH.md against HotMesh (postgres and memory backends)
and the peers DBOS Transact and Absurd, and pgqueuer no-op job chains as the raw
queue floor, on the same PostgreSQL server in the same run; then W1 with the
client and 1, 2, 4 worker processes apart (CPU per process), and W1 before and
after 200,000 finished workflows are stored. Reports the median of the
repetitions and writes ``bench/results/latest.md``. A peer that is not
installed is skipped with a printed line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from .cpu import CpuMeter
from .harness import median, percentile
from .history import w1_history
from .pgbench import ceiling_tps
from .recovery import run_recovery
from .report import Row, history_table, main_table, render, scale_table
from .split import prepare, w1_split

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "w1": 500,
        "w2": 100,
        "w3": 200,
        "w4": 200,
        "w5": 200,
        "reps": 3,
        "w0_seconds": 10,
        "scale": [1, 2, 4],
        "history": 200_000,
    },
    "quick": {
        "w1": 60,
        "w2": 100,
        "w3": 20,
        "w4": 20,
        "w5": 20,
        "reps": 1,
        "w0_seconds": 3,
        "scale": [1],
        "history": 2_000,
    },
}
ENGINES = "hotmesh-postgres,hotmesh-memory,dbos,absurd,pgqueuer"
# What each optional engine needs, and the line printed when it is missing.
NEEDS = {"dbos": ["dbos"], "absurd": ["absurd_sdk", "absurdctl"], "pgqueuer": ["pgqueuer"]}
# The workloads only the workflow engines with a recovery harness run.
RECOVERY = {"hotmesh-postgres", "dbos"}


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


def make_engine(name: str, keep: bool = False) -> Any:
    """The engine ``name`` in one process; ``keep``: HotMesh keeps its schema at close."""
    if name.startswith("hotmesh-"):
        from .adapters.hotmesh import HotMeshEngine

        return HotMeshEngine(name.removeprefix("hotmesh-"), drop_on_close=not keep)
    if name == "absurd":
        from .adapters.absurd_engine import AbsurdEngine

        return AbsurdEngine()
    if name == "pgqueuer":
        from .adapters.pgqueuer_floor import PgQueuerFloor

        return PgQueuerFloor()
    from .adapters.dbos_engine import DBOSEngine

    return DBOSEngine()


def installed(name: str) -> bool:
    import importlib.util

    missing = [m for m in NEEDS.get(name, []) if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{', '.join(missing)} not installed (pip install -e '.[bench]'): {name} skipped")
    return not missing


async def measure(name: str, dsn: str, size: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    engine = make_engine(name)
    await prepare(name, dsn)  # a schema installed once is not an open's cost

    # Commits per workflow: W1 runs between an open and a close (closing
    # connections flushes their statistics). Cold: one run, less an empty
    # open/close; it includes what the engine sets up as load comes (the pool's
    # connections, each a login and a SET). Steady: two runs less one, the
    # second run on what the first set up.
    async def commits_of(runs: int) -> int:
        before = commits(dsn)
        await engine.open(dsn)
        for _ in range(runs):
            await engine.w1_sequential(size["w1"])
        await engine.close()
        await asyncio.sleep(0.5)
        return commits(dsn) - before

    overhead = await commits_of(0)
    one = await commits_of(1)
    two = await commits_of(2)
    figures["w1_commits_cold"] = (one - overhead) / size["w1"]
    figures["w1_commits"] = (two - one) / size["w1"]

    await engine.open(dsn)
    try:
        w1, cpu = [], []
        meter = CpuMeter(dsn)
        for _ in range(size["reps"]):
            meter.start()
            w1.append(await engine.w1_sequential(size["w1"]))
            meter.stop()
            cpu.append(meter.per(size["w1"]))
        figures["w1_wfs"] = size["w1"] / median(w1)
        figures["w1_step_ms"] = median(w1) / (size["w1"] * 3) * 1000
        if name != "hotmesh-memory":
            figures["w1_cpu"] = {key: median([c[key] for c in cpu]) for key in cpu[0]}
        if hasattr(engine, "noop_jobs"):
            jobs = size["w1"] * 3
            figures["noop_jobs"] = jobs / median(
                [await engine.noop_jobs(jobs) for _ in range(size["reps"])]
            )
        if hasattr(engine, "w2_fanout"):
            figures["w2_s"] = median(
                [await engine.w2_fanout(size["w2"]) for _ in range(size["reps"])]
            )
        if hasattr(engine, "w3_signal"):
            w3: list[float] = []
            for _ in range(size["reps"]):
                w3 += await engine.w3_signal(size["w3"])
            figures["w3"] = (percentile(w3, 50), percentile(w3, 95), percentile(w3, 99))
        if hasattr(engine, "w4_sleep"):
            w4: list[float] = []
            for _ in range(size["reps"]):
                w4 += await engine.w4_sleep(size["w4"], 1.0)
            figures["w4"] = (percentile(w4, 50), percentile(w4, 99))
        if hasattr(engine, "w6_contention"):
            w6 = [await engine.w6_contention(20, 50) for _ in range(size["reps"])]
            figures["w6_final"] = [final for final, _ in w6]
            figures["w6_ops"] = median([1000 / seconds for _, seconds in w6])
    finally:
        await engine.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized N, one repetition")
    parser.add_argument("--engines", default=ENGINES)
    parser.add_argument("--skip-recovery", action="store_true", help="skip W5")
    parser.add_argument("--skip-scale", action="store_true", help="skip the scale table")
    parser.add_argument("--skip-history", action="store_true", help="skip the history table")
    parser.add_argument(
        "--skip-main", action="store_true", help="skip W0-W6 (only the scale/history tables)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the table (default bench/results/latest.md)",
    )
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    engines = [e for e in args.engines.split(",") if e and installed(e)]
    server = server_dsn()
    began = time.time()
    results: dict[str, dict[str, Any]] = {}
    for name in [] if args.skip_main else engines:
        dsn = fresh_database(server, f"bench_{name.replace('-', '_')}")
        print(f"measuring {name} ...", flush=True)
        results[name] = asyncio.run(measure(name, dsn, size))
        if not args.skip_recovery and name in RECOVERY:
            results[name]["w5"] = run_recovery(name, dsn, size["w5"])
    postgres_engines = [name for name in engines if name != "hotmesh-memory"]
    if not args.skip_scale:
        # Repetitions interleave the engines (each with a fresh database and its
        # own processes every time): on a shared, noisy machine a burst of load
        # then hits every engine alike.
        for workers in size["scale"]:
            print(f"W1 scale, {workers} worker process(es) ...", flush=True)
            reps: dict[str, list[dict[str, Any]]] = {name: [] for name in postgres_engines}
            for rep in range(size["reps"]):
                for name in postgres_engines:
                    dsn = fresh_database(
                        server, f"bench_scale_{name.replace('-', '_')}_{workers}_{rep}"
                    )
                    reps[name].append(asyncio.run(w1_split(name, dsn, size["w1"], workers)))
            for name, figures in reps.items():
                results.setdefault(name, {})[f"scale_{workers}"] = {
                    key: median([f[key] for f in figures]) for key in figures[0]
                }
    if not args.skip_history:
        for name in postgres_engines:
            if name == "pgqueuer":
                continue
            print(f"W1 {name} with {size['history']:,} finished workflows ...", flush=True)
            label = f"bench_history_{name.replace('-', '_')}"
            results.setdefault(name, {})["history"] = asyncio.run(
                w1_history(
                    lambda keep, name=name: make_engine(name, keep=keep),  # type: ignore[misc]
                    lambda label=label: fresh_database(server, label + "_f"),  # type: ignore[misc]
                    fresh_database(server, label + "_s"),
                    size["w1"],
                    size["reps"],
                    size["history"],
                )
            )
    clients = 10
    w0 = (
        None
        if args.skip_main
        else ceiling_tps(fresh_database(server, "bench_w0"), clients, size["w0_seconds"])
    )
    rows: list[Row] = render(results, w0, clients)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with psycopg.connect(server) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()
    versions = [
        f"Python {platform.python_version()}",
        f"PostgreSQL {pg_version[0] if pg_version else '?'}",
    ]
    from importlib.metadata import PackageNotFoundError, version

    for package in ("dbos", "absurd-sdk", "pgqueuer"):
        with contextlib.suppress(PackageNotFoundError):
            versions.append(f"{package} {version(package)}")
    header = (
        f"{'quick' if args.quick else 'full'} run, {stamp}, {platform.machine()} "
        f"{os.cpu_count()} cores, {', '.join(versions)}; "
        f"{time.time() - began:.0f} s"
    )
    sections = [main_table(rows)]
    if not args.skip_scale:
        sections += [
            "## W1 scale: client and worker processes apart",
            f"N={size['w1']} per repetition, median of {size['reps']}; CPU is per workflow,"
            " all worker processes together.",
            scale_table(results, size["scale"]),
        ]
    if not args.skip_history:
        sections += [
            "## W1 with a long history of finished workflows",
            f"In one process as in the main table; N={size['w1']}, median of {size['reps']}"
            " pairs, each a fresh database and then the seeded one, seconds apart.",
            history_table(results),
        ]
    table = "\n\n".join(sections)
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
