"""The Signal role in memory: waiters, buffered early signals, wake-ups at commit."""

from __future__ import annotations

from typing import Any

from hotmesh_core.advance import Handoff, deliver_signal
from hotmesh_core.models import Waiter

from .state import MemoryTx, clone


class MemorySignal:
    def __init__(self, tx: MemoryTx) -> None:
        self.tx = tx
        self.state = tx.state

    async def add_waiter(self, waiter: Waiter) -> None:
        stored = clone(waiter)
        stored.created_at = self.tx.now()
        waiters = self.state.waiters.get(waiter.signal_id, [])
        self.tx.put(self.state.waiters, waiter.signal_id, [*waiters, stored])

    async def take_waiter(self, signal_id: str) -> Waiter | None:
        waiters = self.state.waiters.get(signal_id, [])
        if not waiters:
            return None
        if len(waiters) == 1:
            self.tx.pop(self.state.waiters, signal_id)
        else:
            self.tx.put(self.state.waiters, signal_id, waiters[1:])
        return clone(waiters[0])

    async def remove_waiter(self, job_id: str, dimension: str, index: int) -> None:
        for signal_id, waiters in list(self.state.waiters.items()):
            kept = [
                w for w in waiters if (w.job_id, w.dimension, w.index) != (job_id, dimension, index)
            ]
            if len(kept) != len(waiters):
                self._replace(signal_id, kept)

    async def remove_job_waiters(self, job_id: str) -> None:
        for signal_id, waiters in list(self.state.waiters.items()):
            kept = [w for w in waiters if w.job_id != job_id]
            if len(kept) != len(waiters):
                self._replace(signal_id, kept)

    def _replace(self, signal_id: str, waiters: list[Waiter]) -> None:
        if waiters:
            self.tx.put(self.state.waiters, signal_id, waiters)
        else:
            self.tx.pop(self.state.waiters, signal_id)

    async def deliver(
        self, signal_id: str, data: Any, *, expire: float, handoff: Handoff | None = None
    ) -> bool:
        from .store import MemoryStore  # the store imports this module
        from .stream import MemoryStream

        store, stream = MemoryStore(self.tx), MemoryStream(self.tx)
        return await deliver_signal(store, stream, self, signal_id, data, expire, handoff)

    async def buffer(self, signal_id: str, data: Any, *, expire: float) -> None:
        kept = self.state.buffered.get(signal_id, [])
        entry = (self.tx.now() + expire, clone(data))
        self.tx.put(self.state.buffered, signal_id, [*kept, entry])

    async def take_buffered(self, signal_id: str) -> tuple[bool, Any]:
        now = self.tx.now()
        live = [entry for entry in self.state.buffered.get(signal_id, []) if entry[0] > now]
        if not live:
            self.tx.pop(self.state.buffered, signal_id)
            return False, None
        if len(live) == 1:
            self.tx.pop(self.state.buffered, signal_id)
        else:
            self.tx.put(self.state.buffered, signal_id, live[1:])
        return True, clone(live[0][1])

    async def notify_queue(self, queue: str) -> None:
        self.tx.queues_to_wake.add(queue)

    async def notify_job(self, job_id: str) -> None:
        self.tx.jobs_to_wake.add(job_id)
