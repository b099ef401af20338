"""A worker's cache of suspended runs: resume a workflow instead of replaying it.

Replaying from the top makes step n cost O(n), so a workflow that lives for
thousands of steps slows down without end. A worker keeps the runs it just
committed, suspended as they are (their event loop, their coroutines), and
hands the next answers to them (:meth:`hotmesh_core.replay.Run.resume`).

A cached run is only a shortcut: it is used only while its thread's stored
activation is the one it made (``Job.activation``/``Thread.activation``), so a
run that another worker advanced meanwhile is dropped and the history replayed;
and even then the compare-and-set that records a delivery refuses a stale run.
Eviction, a restart or another worker lose nothing but time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from attrs import define

from .replay import Run

__all__ = ["DEFAULT_MAX_CACHED_WORKFLOWS", "DEFAULT_STICKY_WAIT", "Suspended", "WorkflowCache"]

DEFAULT_MAX_CACHED_WORKFLOWS = 1000

#: Seconds a run task waits for the worker that keeps its run cached before any
#: worker may take it (that worker died, or is busy); one that stops hands its
#: tasks on at once. Temporal's sticky schedule-to-start timeout is 5 s.
DEFAULT_STICKY_WAIT = 2.0


@define
class Suspended:
    """A run whose last outcome committed as it was, waiting for answers."""

    run: Run
    fn: Callable[..., Any]
    args: list[Any]
    name: str


class WorkflowCache:
    """At most ``size`` suspended runs, least recently used first out (0: none)."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("max_cached_workflows must be 0 (no cache) or more")
        self.size = size
        self._runs: OrderedDict[tuple[str, str], Suspended] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.stale = 0  # taken, but the stored thread had moved on: replayed instead

    def __len__(self) -> int:
        return len(self._runs)

    def put(self, suspended: Suspended) -> None:
        if self.size == 0:
            return
        key = (suspended.run.job.id, suspended.run.dimension)
        self._runs[key] = suspended
        self._runs.move_to_end(key)
        while len(self._runs) > self.size:
            self._runs.popitem(last=False)

    def peek(self, job_id: str, dimension: str) -> Suspended | None:
        """The run of this thread, left in the cache (not counted as a hit or miss)."""
        return self._runs.get((job_id, dimension))

    def take(self, job_id: str, dimension: str) -> Suspended | None:
        """Remove and return the run of this thread: while in use it is no one
        else's, and it goes back only once its next outcome has committed."""
        found = self._runs.pop((job_id, dimension), None)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found
