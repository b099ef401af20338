"""Group commit: one statement for the advances of one worker that are ready together.

A worker running many workflows at once commits a step of each every few
milliseconds, one :meth:`Store.advance` per step: a round trip and a commit
each, and on 2 cores the client's CPU per round trip is what bounds W1. When
a worker's commits overlap, the ones that come while ``IN_FLIGHT`` are out
wait, and the first of them, when a flight lands, takes every one waiting
(up to ``MAX_GROUP``) to the backend in one transaction
(:meth:`Store.advance_many`). A commit that comes when fewer are out goes at
once, alone, as it always did: a quiet worker waits for nothing. One that has
waited ``LONGEST_WAIT`` without a flight landing leads a group itself: two
flights stuck on locks never hold up the rest.

What each step commits, and when it counts as committed, does not change:
each advance is applied as it would be alone, all-or-nothing on its own (one
that fails in the group is applied again alone, to fail or succeed as it
would have), and its caller returns only once the group's transaction has
committed. A group fails as a whole as one commit does (a connection cut,
the worker crashing), and every caller in it sees that error, as it would
have seen its own commit's.

The group is sent from the task of its first caller (the *leader*), never
from a task of its own, so whatever the backend or a fault injector knows of
the caller (``conformance.faults``: which worker, whether it has died) holds
for the group. One :class:`GroupCommit` per worker (``LocalWorker``): its
groups hold only its own steps.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .advance import Advance, Advanced
from .errors import BackendUnavailable, HotMeshError
from .protocols import Backend

__all__ = [
    "ADVANCE_MANY",
    "IN_FLIGHT",
    "LONGEST_WAIT",
    "MAX_GROUP",
    "GroupCommit",
    "commit_alone",
]

#: The capability of a backend whose store has ``advance_many``.
ADVANCE_MANY = "advance_many"
#: Commits of one worker out at once before the next ones wait to be grouped:
#: two, so that the client builds one group while the server applies another.
IN_FLIGHT = 2
#: Advances in one group at most. Each is a subtransaction on PostgreSQL,
#: and a transaction of more than 64 overflows its backend's cache of them.
MAX_GROUP = 32
#: Seconds a commit waits for a flight to land before it goes anyway, leading
#: a group of its own: a flight waiting on a row lock that another transaction
#: holds (an administrator's, a report's) must not hold up the worker's other
#: workflows. A flight takes a few milliseconds; a group's advances wait 50 ms
#: at most for a lock and then go alone, holding up nobody else.
LONGEST_WAIT = 0.025

_LEAD: Any = object()  # a waiting commit's turn: it leads the next group
_ALONE: Any = object()  # its advance failed in the group: apply it again alone


async def commit_alone(backend: Backend, plan: Advance) -> Advanced:
    """One advance, one statement: the way a commit goes when nothing is grouped."""
    async with backend.transaction(single=True) as tx:
        return await tx.store.advance(plan)


class _Waiting:
    """A commit waiting for its turn: grouped by a leader, or leading itself."""

    __slots__ = ("plan", "turn")

    def __init__(self, plan: Advance, turn: asyncio.Future[Any]) -> None:
        self.plan = plan
        self.turn = turn


class GroupCommit:
    """The commits of one worker: at most ``IN_FLIGHT`` out, the rest grouped."""

    def __init__(self) -> None:
        self._flights = 0  # out now, or handed to a leader about to send
        self._waiting: deque[_Waiting] = deque()
        self._timer: asyncio.TimerHandle | None = None  # the first waiting's LONGEST_WAIT
        self.groups = 0  # groups of two or more sent (tests, diagnostics)

    async def commit(self, backend: Backend, plan: Advance) -> Advanced:
        """Commit ``plan`` (as :func:`commit_alone` would), grouped with others
        of this worker's when commits are out already."""
        if ADVANCE_MANY not in backend.capabilities:
            return await commit_alone(backend, plan)
        if self._flights < IN_FLIGHT and not self._waiting:
            self._flights += 1
            try:
                return await commit_alone(backend, plan)
            finally:
                self._land()
        waiting = _Waiting(plan, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._rearm()
        try:
            turn = await waiting.turn
        except asyncio.CancelledError:
            self._leave(waiting)
            raise
        if turn is _ALONE:
            return await commit_alone(backend, plan)
        if turn is not _LEAD:
            assert isinstance(turn, Advanced)
            return turn  # committed in another's group
        return await self._lead(backend, waiting)

    async def _lead(self, backend: Backend, mine: _Waiting) -> Advanced:
        group = [mine]
        while self._waiting and len(group) < MAX_GROUP:
            waiting = self._waiting.popleft()
            if waiting.turn.done():
                continue  # cancelled while it waited: never sent
            group.append(waiting)
        self._rearm()
        followers = group[1:]
        try:
            if followers:
                self.groups += 1
                async with backend.transaction(single=True) as tx:
                    done = await tx.store.advance_many([w.plan for w in group])
            else:
                done = [await commit_alone(backend, mine.plan)]
            if len(done) != len(group):
                raise HotMeshError(
                    f"advance_many applied {len(done)} advances of {len(group)}: a backend defect"
                )
        except BaseException as error:
            shared: BaseException = error
            if isinstance(error, asyncio.CancelledError):
                # The leader was cancelled mid-commit: for the others it is a
                # commit cut short, which may or may not have landed.
                shared = BackendUnavailable(
                    "a grouped commit was cut short (its leader was cancelled); it may"
                    " or may not have committed"
                )
            for follower in followers:
                if not follower.turn.done():
                    follower.turn.set_exception(shared)
            raise
        finally:
            self._land()
        for follower, advanced in zip(followers, done[1:], strict=True):
            if not follower.turn.done():
                follower.turn.set_result(_ALONE if advanced is None else advanced)
        if done[0] is None:
            return await commit_alone(backend, mine.plan)
        return done[0]

    def _rearm(self) -> None:
        """Keep the one timer armed while commits wait, none when none do."""
        if not self._waiting:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LONGEST_WAIT, self._overdue)

    def _overdue(self) -> None:
        """No flight landed within ``LONGEST_WAIT`` of the first waiting commit's
        arrival (one may be waiting on a lock another transaction holds): it
        leads a group now, a flight beyond ``IN_FLIGHT``, rather than wait on."""
        self._timer = None
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.turn.done():
                self._flights += 1
                waiting.turn.set_result(_LEAD)
                break
        self._rearm()

    def _leave(self, waiting: _Waiting) -> None:
        """A waiting commit was cancelled: out of the line if it was never sent;
        if it had been handed the lead, the lead goes on to the next."""
        turn = waiting.turn
        if not turn.done() or turn.cancelled():
            if waiting in self._waiting:
                self._waiting.remove(waiting)
                self._rearm()
            return
        if turn.exception() is None and turn.result() is _LEAD:
            self._land()

    def _land(self) -> None:
        """A flight landed (or a lead was given up): hand the lead to the next waiting."""
        self._flights -= 1
        while self._waiting and self._flights < IN_FLIGHT:
            waiting = self._waiting.popleft()
            if waiting.turn.done():
                continue  # cancelled while it waited
            self._flights += 1
            waiting.turn.set_result(_LEAD)
        self._rearm()
