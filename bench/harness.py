"""What an engine adapter implements, and the small statistics the report needs."""

from __future__ import annotations

import statistics
from typing import Protocol


class Engine(Protocol):
    """One engine under measurement. Every method runs a workload and returns raw figures."""

    name: str

    async def open(self, dsn: str) -> None: ...

    async def close(self) -> None: ...

    async def w1_sequential(self, n: int) -> float:
        """Start n workflows of 3 sequential steps (each returns input + 1); await all.

        Returns the seconds from the first start to the last completion.
        """

    async def w2_fanout(self, width: int) -> float:
        """One workflow running ``width`` parallel steps and awaiting all; wall seconds."""

    async def w3_signal(self, n: int) -> list[float]:
        """n times, one after another: a workflow waits for a signal, the client sends it.

        Returns the send -> result latencies in milliseconds.
        """

    async def w4_sleep(self, n: int, seconds: float) -> list[float]:
        """n workflows each sleep ``seconds``; returns wake-up lateness in milliseconds."""

    async def w6_contention(self, writers: int, times: int) -> tuple[int, float]:
        """``writers`` concurrent writers each increment one counter ``times`` times.

        Returns (final value, seconds).
        """


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
