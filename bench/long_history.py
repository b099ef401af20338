"""W7 long history: one workflow of N sequential activities, per-step cost over time.

Prints, for each backend, the mean milliseconds per step over steps 100-200 and
over the last 100, and their ratio (flat = 1), with the worker's run cache on
(the default) and, as the peer measured in the same run, off
(``max_cached_workflows=0``: every step replays the history from the top).
Then the cost of one cold replay of the whole history (a cache miss at the last
step, as ``hotmesh replay`` does it): its microseconds per step, flat across
history sizes when replay is linear.

    python -m bench.long_history [--steps 2000] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from typing import Any

from hotmesh_core import MemFlow, workflow
from hotmesh_core.replayer import replay_runs

STAMPS: list[float] = []


async def inc(value: int) -> int:
    STAMPS.append(time.perf_counter())
    return value + 1


async def long_history(steps: int) -> int:
    acts = workflow.proxy_activities(activities=[inc])
    value = 0
    for _ in range(steps):
        value = await acts.inc(value)
    return value


async def measure(
    backend: str, steps: int, cache: int, options: dict[str, Any]
) -> dict[str, float]:
    STAMPS.clear()
    mf = await MemFlow.init(app_id=f"w7{uuid.uuid4().hex[:8]}", backend=backend, **options)
    try:
        await mf.worker("q", workflows=[long_history], activities=[inc], max_cached_workflows=cache)
        began = time.perf_counter()
        handle = await mf.workflow.start("w7", "long_history", "w7", [steps], "q")
        assert await handle.result(timeout=3600) == steps
        total = time.perf_counter() - began
        replay_began = time.perf_counter()
        (replayed,) = await replay_runs(mf.backend, [long_history], ids=["w7"])
        replay_s = time.perf_counter() - replay_began
        assert replayed.ok, replayed
    finally:
        await mf.shutdown()
    gaps = [b - a for a, b in itertools.pairwise(STAMPS)]
    early = sum(gaps[100:200]) / 100 * 1000
    late = sum(gaps[-100:]) / 100 * 1000
    return {
        "total_s": total,
        "early_ms": early,
        "late_ms": late,
        "ratio": late / early,
        "replay_ms": replay_s * 1000,
        "replay_us_step": replay_s / steps * 1e6,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--replay-steps", type=int, default=600, help="steps of the cache-off peer")
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    postgres: dict[str, Any] = {"drop_on_close": True}
    if args.dsn:
        postgres["dsn"] = args.dsn
    print(
        f"{'backend':<10} {'cache':<6} {'steps':>6} {'total s':>8} {'100-200 ms':>11} "
        f"{'last 100 ms':>12} {'ratio':>6} {'replay ms':>10} {'us/step':>8}"
    )
    for backend, options in (("memory", {}), ("postgres", postgres)):
        for cache, steps in ((1000, args.steps), (0, args.replay_steps)):
            r = await measure(backend, steps, cache, options)
            print(
                f"{backend:<10} {cache:<6} {steps:>6} {r['total_s']:>8.2f} {r['early_ms']:>11.2f} "
                f"{r['late_ms']:>12.2f} {r['ratio']:>6.2f} {r['replay_ms']:>10.1f}"
                f" {r['replay_us_step']:>8.1f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
