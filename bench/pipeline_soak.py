"""W8 forever pipeline: the pipeline example (examples/data_pipeline.py), 10,000 iterations.

It continues as new every iteration, so its history should stay one
iteration long and the worker's memory flat however long it lives. Prints, at
every checkpoint, iterations done, the job's history length (steps), its
generation, the entity's size, the worker process's resident memory, and the
milliseconds per iteration since the last checkpoint.

    python -m bench.pipeline_soak [--iterations 10000] [--backend memory|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from hotmesh_core import MemFlow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "data_pipeline.py"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("data_pipeline_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def soak(backend: str, iterations: int, every: int, options: dict[str, Any]) -> None:
    pipeline = load_example()
    process = psutil.Process()
    async with MemFlow.init(app_id=f"soak{uuid.uuid4().hex[:8]}", backend=backend, **options) as mf:
        await mf.worker(pipeline.QUEUE, workflows=pipeline.WORKFLOWS, activities=[pipeline.clean])
        handle = await mf.workflow.start(
            "pipeline",
            "data_pipeline",
            "soak",
            ["s3://bucket/events.csv", "0s", iterations],
            pipeline.QUEUE,
            persistent=True,
        )
        print(
            f"{'backend':<9} {'iterations':>10} {'steps':>6} {'generation':>10}"
            f" {'entity B':>9} {'rss MiB':>8} {'ms/iter':>8}"
        )
        last_runs, last_time = 0, time.perf_counter()
        next_mark = every
        while True:
            state = await handle.state()
            runs = state.get("runs", 0)
            finished = await handle.status() == "completed"
            if runs >= next_mark or finished:
                # The history as stored (not export(): it also reads the whole
                # entity change log, whose size would show in the RSS).
                async with mf.backend.transaction(readonly=True) as tx:
                    steps = await tx.store.load_steps("soak")
                    job = await tx.store.get_job("soak")
                assert job is not None
                now = time.perf_counter()
                per = (now - last_time) / max(runs - last_runs, 1) * 1000
                print(
                    f"{backend:<9} {runs:>10} {len(steps):>6} {job.generation:>10}"
                    f" {len(json.dumps(state)):>9} {process.memory_info().rss / 2**20:>8.1f}"
                    f" {per:>8.2f}",
                    flush=True,
                )
                last_runs, last_time = runs, now
                next_mark = (runs // every + 1) * every
            if finished:
                break
            await asyncio.sleep(0.2)
        await handle.result()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--backend", action="append", default=[])
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    for backend in args.backend or ["memory", "postgres"]:
        options: dict[str, Any] = {}
        if backend == "postgres":
            options["drop_on_close"] = True
            if args.dsn:
                options["dsn"] = args.dsn
        await soak(backend, args.iterations, args.every, options)


if __name__ == "__main__":
    asyncio.run(main())
