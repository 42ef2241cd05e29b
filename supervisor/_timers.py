"""The supervisor's timers: one entry per session, one trio deadline for them all.

A session's deadlines (idle, init, lifetime; once closing, the end of its grace) are not trio
deadlines of its own scope. Each session has at most one live entry here, at or before the time
it is due (`Session._armed`); the hot paths (send, call, touch) arm nothing. When an entry
fires, the supervisor looks at the session afresh: due, it is expired (or, closing, cancelled);
not yet (it was active since), the entry moves to the new due time. Entries are bucketed by time
rounded up to ``deadline_slack``, so sessions due within one slack share a bucket, and only the
earliest bucket is a trio deadline (on the scope the timer task sleeps in).

The due work is spread: after a bounded amount of it (`BUDGET`) the task yields, so the actors it
cancelled unwind, and other tasks run, before it goes on. A million sessions that all expire at
once never block the event loop for longer than one such slice.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, final

import trio
import trio.lowlevel

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["BUDGET", "Timers"]

#: Work units between two yields of the timer task: re-arming an entry costs 1, cancelling an
#: actor (whose unwinding runs in the next batch of the scheduler) `EXPIRY_COST`.
BUDGET = 4096
EXPIRY_COST = 16


@final
class Timers:
    """Buckets of sessions by the time their entry fires, and the task that fires them."""

    __slots__ = ("_buckets", "_keys", "_scope", "_tick")

    def __init__(self, tick: float) -> None:
        self._tick = tick
        self._buckets: dict[float, list[Session]] = {}
        self._keys: list[float] = []  # a heap of the bucket times
        self._scope: trio.CancelScope | None = None  # the timer task's sleep, while it sleeps

    def __len__(self) -> int:
        """Entries held (stale ones included: they are dropped when their bucket fires)."""
        return sum(map(len, self._buckets.values()))

    def arm(self, session: Session, at: float) -> None:
        """Give ``session`` its entry at ``at`` (rounded up to the tick); inf: none.

        Any earlier entry of the session goes stale: it is dropped when its bucket fires.
        """
        if at == math.inf:
            session._armed = math.inf
            return
        tick = self._tick
        if tick:
            when = math.ceil(at / tick) * tick
            if when < at:  # floating point: never before ``at``
                when = at
        else:
            when = at
        session._armed = when
        bucket = self._buckets.get(when)
        if bucket is not None:
            bucket.append(session)
            return
        self._buckets[when] = [session]
        heapq.heappush(self._keys, when)
        scope = self._scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when

    async def run(self, on_due: Callable[[Session, float], int]) -> None:
        """Fire due entries forever: ``on_due(session, now)`` returns the work it did."""
        keys, buckets = self._keys, self._buckets
        work = 0
        while True:
            if not keys or keys[0] > trio.current_time():
                work = 0
                with trio.CancelScope() as scope:
                    scope.deadline = keys[0] if keys else math.inf
                    self._scope = scope
                    try:
                        await trio.sleep_forever()
                    finally:
                        self._scope = None
                continue
            when = keys[0]
            bucket = buckets[when]
            now = trio.current_time()
            while bucket and work < BUDGET:
                session = bucket.pop()
                if session._armed == when:  # else stale: the session has a later entry
                    session._armed = math.inf
                    work += on_due(session, now)
                else:
                    work += 1
            if not bucket:
                heapq.heappop(keys)
                del buckets[when]
            if work >= BUDGET:
                work = 0
                await trio.lowlevel.checkpoint()
