"""The wake-ups of entity watchers: which changes committed, as (job id, version).

A backend hands each watcher a :class:`ChangeQueue` (``Backend.watch_changes``)
and puts a note in it for every entity change that commits (PostgreSQL: a
``NOTIFY`` sent with the commit; memory: at the end of the transaction). A
note only says where to read: the watcher reads the change itself from the
change log (``Store.changes_after``), so a note lost or repeated costs a read,
never a gap or a duplicate. ``None`` means "notes may have been missed" (the
PostgreSQL listener reconnected): the watcher re-reads what it follows.
"""

from __future__ import annotations

from hotmesh_core.event_wait import Wakeup

__all__ = ["ChangeNote", "ChangeQueue"]

ChangeNote = tuple[str, int]  # (job id, version)
MAX_NOTES = 10_000  # past this many unread notes, one "re-read everything" stands for them


class ChangeQueue:
    def __init__(self) -> None:
        self._notes: list[ChangeNote | None] = []
        self._event = Wakeup()

    def put(self, note: ChangeNote | None) -> None:
        if len(self._notes) >= MAX_NOTES:
            self._notes = [None]
        else:
            self._notes.append(note)
        self._event.set()

    async def wait(self, timeout: float) -> list[ChangeNote] | None:
        """The notes since the last call; ``[]`` after ``timeout`` without any;
        ``None`` when some may have been missed."""
        if not self._notes:
            await self._event.wait(timeout)
        notes, self._notes = self._notes, []
        self._event.clear()
        if any(note is None for note in notes):
            return None
        return [note for note in notes if note is not None]
