"""Clocks: the real one, and a virtual one for tests of long sleeps.

A backend that supports it (the memory backend) reads time from a clock object.
:class:`VirtualClock` only moves when told to (``advance``) or, with
``auto_skip``, when the backend sees that nothing but timers is left to do while
someone awaits a result — the time-skipping users know from Temporal's test
environment.  A 24-hour ``sleep_for`` then completes in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from .durations import Duration, parse_duration

__all__ = ["Clock", "SystemClock", "VirtualClock"]


class Clock(Protocol):
    virtual: bool

    def now(self) -> float: ...


class SystemClock:
    virtual = False

    def now(self) -> float:
        return time.time()


class VirtualClock:
    """A clock that moves only when advanced."""

    virtual = True

    def __init__(self, start: float | None = None, *, auto_skip: bool = True) -> None:
        self._now = time.time() if start is None else start
        self.auto_skip = auto_skip
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        return self._now

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every move (backends use it to wake timers)."""
        self._listeners.append(listener)

    def advance(self, duration: Duration) -> None:
        """Move time forward by ``duration`` and wake whatever became due."""
        self.advance_to(self._now + parse_duration(duration))

    def advance_to(self, moment: float) -> None:
        if moment > self._now:
            self._now = moment
        for listener in list(self._listeners):
            listener()
