"""Waiting for an event with a timeout, without losing a cancel.

``asyncio.wait_for(event.wait(), timeout)`` is not safe for this on Python
3.10 and 3.11: when a cancel reaches the waiting task in the same loop turn as
the event is set, ``wait_for`` returns normally and the cancel is gone
(CPython gh-86296, fixed in 3.12). A loop that waits again afterwards then
never ends: an entity watch cancelled by its consumer went on forever, and so
did the test that cancelled it (a CI run hung on this).

:class:`Wakeup` is the engine's own event: its :meth:`Wakeup.wait` awaits a
bare future with a timer beside it, which never swallows a cancel (a task
cancelled while its future resolves is cancelled at its next step) and costs
no task. :func:`wait_event` waiting for an :class:`asyncio.Event` needs one
(``event.wait()`` in a task, awaited with :func:`asyncio.wait`): under W1 on
the memory backend, every worker idle wait and every ``result()`` took one
(6% of the CPU), so the backends' own wake-ups are Wakeups.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

__all__ = ["Wakeup", "wait_any", "wait_event"]


class Wakeup:
    """A flag that waiting coroutines are woken by, as :class:`asyncio.Event`,
    with a timeout on :meth:`wait` and no task per wait."""

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: dict[asyncio.Future[None], None] = {}  # in order, O(1) to drop

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        """Set the flag and wake every waiter (those waiting now; a later wait
        returns at once until :meth:`clear`)."""
        if self._flag:
            return
        self._flag = True
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until set or ``timeout`` seconds pass (``None``: no limit); return
        whether it is set. A cancel of the caller always raises."""
        return await wait_any((self,), timeout)


async def wait_any(wakeups: Sequence[Wakeup], timeout: float | None) -> bool:
    """Wait until one of ``wakeups`` is set or ``timeout`` seconds pass
    (``None``: no limit); return whether one is set. One future for them all,
    registered with each: no task however many are waited on. A cancel of the
    caller always raises."""
    if any(wakeup._flag for wakeup in wakeups):
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    for wakeup in wakeups:
        wakeup._waiters[waiter] = None
    timer = None if timeout is None else loop.call_later(max(timeout, 0.0), _expire, waiter)
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()
        if not waiter.done():
            waiter.cancel()
        for wakeup in wakeups:
            wakeup._waiters.pop(waiter, None)  # woken elsewhere, by the timer, or cancelled
    return any(wakeup._flag for wakeup in wakeups)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass (``None``: no
    limit); return whether it is set. A cancel of the caller always raises."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((waiter,), timeout=None if timeout is None else max(timeout, 0.0))
    finally:
        waiter.cancel()
    return event.is_set()
