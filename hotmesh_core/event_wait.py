"""Waiting for an :class:`asyncio.Event` with a timeout, without losing a cancel.

``asyncio.wait_for(event.wait(), timeout)`` is not safe for this on Python
3.10 and 3.11: when a cancel reaches the waiting task in the same loop turn as
the event is set, ``wait_for`` returns normally and the cancel is gone
(CPython gh-86296, fixed in 3.12). A loop that waits again afterwards then
never ends: an entity watch cancelled by its consumer went on forever, and so
did the test that cancelled it (a CI run hung on this). :func:`wait_event`
waits with :func:`asyncio.wait`, which never swallows a cancel of the caller.
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_event"]


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
