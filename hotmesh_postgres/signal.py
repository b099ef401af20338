"""The Signal role in SQL: waiters, buffered signals, NOTIFY at commit.

Delivering and waiting on one signal id take the same transaction-scoped
advisory lock, so a signal and a new waiter can never miss each other (the
signal buffered while the waiter registers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hotmesh_core.advance import Handoff
from hotmesh_core.models import Waiter

from . import rows
from .rows import jsonb, waiter_columns

if TYPE_CHECKING:
    from .backend import PgTransaction


class PgSignal:
    def __init__(self, tx: PgTransaction) -> None:
        self.tx = tx

    async def _lock(self, signal_id: str) -> None:
        await self.tx.run("SELECT pg_advisory_xact_lock(hashtextextended(%s, 11))", [signal_id])

    async def add_waiter(self, waiter: Waiter) -> None:
        await self.tx.run(
            "INSERT INTO waiters (signal_id, job_id, dimension, idx) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            [waiter.signal_id, waiter.job_id, waiter.dimension, waiter.index],
        )

    async def take_waiter(self, signal_id: str) -> Waiter | None:
        await self._lock(signal_id)
        row = await self.tx.one(
            f"DELETE FROM waiters w USING ("
            f"  SELECT job_id, dimension, idx FROM waiters WHERE signal_id = %s"
            f"  ORDER BY created_at LIMIT 1 FOR UPDATE) first"
            f" WHERE (w.job_id, w.dimension, w.idx) = (first.job_id, first.dimension, first.idx)"
            f" RETURNING {waiter_columns('w')}",
            [signal_id],
        )
        return None if row is None else rows.waiter(row)

    async def remove_waiter(self, job_id: str, dimension: str, index: int) -> None:
        await self.tx.run(
            "DELETE FROM waiters WHERE job_id = %s AND dimension = %s AND idx = %s",
            [job_id, dimension, index],
        )

    async def remove_job_waiters(self, job_id: str) -> None:
        await self.tx.run("DELETE FROM waiters WHERE job_id = %s", [job_id])

    async def deliver(
        self, signal_id: str, data: Any, *, expire: float, handoff: Handoff | None = None
    ) -> bool:
        # hm_deliver (migration 0008): lock, waiters, answer, wake or buffer in one statement.
        if handoff is None:
            row = await self.tx.one(
                "SELECT hm_deliver(%s, %s, %s, %s) AS taken",
                [signal_id, jsonb(data), expire, self.tx.backend.queue_channel],
            )
            return bool(row is not None and row["taken"])
        # hm_deliver_to (migration 0012): the same, its run leased to a worker here.
        row = await self.tx.one(
            "SELECT hm_deliver_to(%s, %s, %s, %s, %s, %s, %s) AS taken",
            [
                signal_id,
                jsonb(data),
                expire,
                self.tx.backend.queue_channel,
                handoff.worker,
                handoff.owner,
                handoff.lease,
            ],
        )
        taken = None if row is None else row["taken"]
        if not taken:
            return False
        if taken.get("run_id") is not None:
            handoff.job_id, handoff.dimension = taken["job_id"], taken["dimension"]
            handoff.index, handoff.queue = int(taken["idx"]), taken["queue"]
            handoff.name, handoff.run_id = taken["name"], str(taken["run_id"])
        return True

    async def buffer(self, signal_id: str, data: Any, *, expire: float) -> None:
        await self.tx.run(
            "INSERT INTO signals (signal_id, data, expires_at, bucket)"
            " SELECT %s, %s, e, hm_bucket('signals', e, 'later')"
            " FROM (SELECT clock_timestamp() + make_interval(secs => %s) AS e) AS expiry",
            [signal_id, jsonb(data), expire],
        )

    async def take_buffered(self, signal_id: str) -> tuple[bool, Any]:
        await self._lock(signal_id)
        row = await self.tx.one(
            "DELETE FROM signals WHERE id = ("
            "  SELECT id FROM signals WHERE signal_id = %s AND expires_at > clock_timestamp()"
            "  ORDER BY id LIMIT 1 FOR UPDATE) RETURNING data",
            [signal_id],
        )
        return (False, None) if row is None else (True, row["data"])

    async def notify_queue(self, queue: str) -> None:
        self.tx.notify_queue(queue)

    async def notify_job(self, job_id: str) -> None:
        self.tx.notify_job(job_id)
