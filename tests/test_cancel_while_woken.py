"""A cancel that arrives in the same loop turn as a wake-up is never lost.

On Python 3.10 and 3.11, ``asyncio.wait_for`` returns normally when the
awaited event is set in the turn the waiting task is cancelled (CPython
gh-86296): the cancel is gone, and a loop that waits again never ends. An
entity watch cancelled by its consumer as a change arrived ran forever that
way, and a CI run hung on it. Every wait of the engine's wake-ups goes through
``wait_event``; these tests set the event and cancel the waiter in one turn.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest

from hotmesh_core.changes import ChangeQueue
from hotmesh_core.event_wait import Wakeup, wait_any, wait_event
from hotmesh_memory.backend import MemoryBackend
from hotmesh_postgres.backend import _PgWatch

pytestmark = pytest.mark.asyncio


async def cancelled_as_woken(wait: Awaitable[object], wake: Callable[[], None]) -> None:
    """Start ``wait``, let it block, then wake it and cancel it in one turn:
    the cancel must win (the waiter raises CancelledError, never returns)."""
    task = asyncio.ensure_future(wait)
    for _ in range(5):
        await asyncio.sleep(0)  # the waiter is blocked on its event now
    assert not task.done()
    wake()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_wait_event_keeps_a_cancel_that_meets_the_wake_up() -> None:
    event = asyncio.Event()
    await cancelled_as_woken(wait_event(event, 30), event.set)


async def test_wait_event_reports_set_and_timed_out() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0) is True
    later = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, later.set)
    assert await wait_event(later, None) is True


async def test_an_entity_change_feed_keeps_the_cancel() -> None:
    feed = ChangeQueue()
    await cancelled_as_woken(feed.wait(30), lambda: feed.put(("job", 1)))


async def test_a_wakeup_keeps_a_cancel_that_meets_the_wake_up() -> None:
    wakeup = Wakeup()
    await cancelled_as_woken(wakeup.wait(30), wakeup.set)


async def test_a_wakeup_wakes_every_waiter_and_reports_set_and_timed_out() -> None:
    wakeup = Wakeup()
    assert await wakeup.wait(0.01) is False
    assert await wakeup.wait(0) is False
    waiters = [asyncio.ensure_future(wakeup.wait(30)) for _ in range(3)]
    await asyncio.sleep(0)
    wakeup.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [True, True, True]
    assert await wakeup.wait(None) is True  # stays set until cleared
    wakeup.clear()
    asyncio.get_running_loop().call_later(0.01, wakeup.set)
    assert await wakeup.wait(None) is True
    # Waits that ended (timed out, cancelled, woken) leave nothing behind.
    wakeup.clear()
    cancelled = asyncio.ensure_future(wakeup.wait(30))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.wait_for(wakeup.wait(0.01), 5)
    assert not wakeup._waiters


async def test_wait_any_wakes_on_the_first_and_leaves_nothing_behind() -> None:
    """A worker of several queues waits for all their wake-ups with one future."""
    first, second = Wakeup(), Wakeup()
    assert await wait_any((first, second), 0.01) is False
    waiting = asyncio.ensure_future(wait_any((first, second), 30))
    await asyncio.sleep(0)
    second.set()
    assert await asyncio.wait_for(waiting, 5) is True
    assert not first._waiters and not second._waiters
    second.clear()
    await cancelled_as_woken(wait_any((first, second), 30), first.set)
    assert not first._waiters and not second._waiters


async def test_a_postgres_job_watch_keeps_the_cancel() -> None:
    event = Wakeup()
    await cancelled_as_woken(_PgWatch(event).wait(30), event.set)


async def test_memory_waits_keep_the_cancel() -> None:
    backend = MemoryBackend(f"wake-{uuid.uuid4().hex[:8]}", {})
    await backend.open()
    async with backend.watch_job("job") as watch:
        [event] = backend.state.job_watchers["job"]
        await cancelled_as_woken(watch.wait(30), event.set)
    waiting = backend.wait_for_tasks(["q"], 30)
    await cancelled_as_woken(waiting, lambda: backend.state.wake_queues({"q"}))


async def test_a_watch_cancelled_by_its_consumer_as_a_change_arrives_ends() -> None:
    """The user's view: cancelling the consumer of ``entity.watch`` ends it."""
    from hotmesh_core import MemFlow

    mf = await MemFlow.init(app_id=f"wake-{uuid.uuid4().hex[:8]}", backend="memory")
    await mf.workflow.start("agent", "nobody-runs-this", "probe", [], "elsewhere")
    heard = asyncio.Event()

    async def consume() -> None:
        async for _change in mf.entity.watch("agent"):
            heard.set()

    for _round in range(20):
        heard.clear()
        consumer = asyncio.ensure_future(consume())
        for tick in range(200):
            await mf.entity.update("probe", "merge", value={"tick": tick})
            if await wait_event(heard, 0.05):
                break
        # A change commits (its note wakes the watch) in the turn of the cancel.
        await mf.entity.update("probe", "merge", value={"last": _round})
        consumer.cancel()
        await asyncio.wait_for(asyncio.gather(consumer, return_exceptions=True), 5)
    await mf.shutdown()
