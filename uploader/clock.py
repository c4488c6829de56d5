"""Time as an injected dependency: the real clock, and a fake one for tests.

Everything that waits or measures time (the rate limiter, the circuit breaker,
backoff) takes a `Clock` instead of calling `time.monotonic` and
`asyncio.sleep` directly, so tests can drive time by hand: exact arithmetic,
no real waiting, and a fake `sleep` that raises proves a code path never
waits (aiobotocore tests its token bucket the same way).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    """A monotonic time source plus a matching non-blocking sleep."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` of this clock's time."""
        ...


class SystemClock:
    """The real clock: `time.monotonic` and `asyncio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class SleepForbidden(AssertionError):
    """Raised by a `FakeClock(forbid_sleep=True)` when something tries to wait."""


@dataclass(order=True)
class _Sleeper:
    deadline: float
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class FakeClock:
    """A clock that only moves when the test moves it.

    - `monotonic()` returns `now`, which starts at `start`.
    - Every `sleep(seconds)` is recorded in `sleeps`.
    - `forbid_sleep=True`: `sleep` raises `SleepForbidden` (proves nothing waits).
    - `autoadvance=True`: `sleep` moves time forward by `seconds` and returns
      at once. Right for one task at a time; with concurrent sleepers use the
      default mode instead, where sleepers park until `advance` or
      `advance_to_next` reaches their deadline. Sleepers are woken in deadline
      order (ties in the order they went to sleep), `now` equals their
      deadline when they resume, and time moves on only once every runnable
      task has blocked again (`settle`), so concurrent simulations are exact
      and deterministic.
    """

    #: Upper bound on event-loop turns `settle` gives runnable tasks (a guard
    #: against a task that never blocks), and the fixed number it gives on a
    #: loop whose run queue it cannot see.
    MAX_SETTLE_TURNS = 1000
    FALLBACK_SETTLE_TURNS = 10

    def __init__(self, *, start: float = 0.0, autoadvance: bool = False,
                 forbid_sleep: bool = False) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._autoadvance = autoadvance
        self._forbid_sleep = forbid_sleep
        self._sleepers: list[_Sleeper] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if self._forbid_sleep:
            raise SleepForbidden(f"sleep({seconds!r}) called on a clock that forbids sleeping")
        self.sleeps.append(seconds)
        if self._autoadvance:
            self.now += max(0.0, seconds)
            await asyncio.sleep(0)
            return
        sleeper = _Sleeper(self.now + max(0.0, seconds), next(self._seq),
                           asyncio.get_running_loop().create_future())
        heapq.heappush(self._sleepers, sleeper)
        try:
            await sleeper.future
        finally:
            if not sleeper.future.done():  # cancelled while parked: forget it
                sleeper.future.cancel()

    @property
    def pending(self) -> int:
        """How many tasks are parked in `sleep` right now."""
        return sum(1 for s in self._sleepers if not s.future.done())

    def next_deadline(self) -> float | None:
        """When the earliest parked sleeper is due, or None if nobody sleeps."""
        self._drop_cancelled()
        return self._sleepers[0].deadline if self._sleepers else None

    async def settle(self) -> None:
        """Let every runnable task run until all are blocked again, without moving time.

        This is what makes concurrent fake time exact: time only moves once
        nothing can run at the current instant. It peeks at the default
        loop's run queue (`_ready`, private but long stable in CPython);
        other loops get a fixed number of turns.
        """
        ready = getattr(asyncio.get_running_loop(), "_ready", None)
        turns = self.MAX_SETTLE_TURNS if ready is not None else self.FALLBACK_SETTLE_TURNS
        for _ in range(turns):
            await asyncio.sleep(0)
            if ready is not None and not ready:
                return

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking every sleeper due on the way."""
        if seconds < 0:
            raise ValueError(f"time cannot go backwards (advance({seconds!r}))")
        target = self.now + seconds
        await self.settle()
        while (deadline := self.next_deadline()) is not None and deadline <= target:
            await self._wake_due(deadline)
        self.now = target

    async def advance_to_next(self) -> bool:
        """Jump to the earliest sleeper's deadline and wake it; False if nobody sleeps."""
        await self.settle()
        deadline = self.next_deadline()
        if deadline is None:
            return False
        await self._wake_due(deadline)
        return True

    async def _wake_due(self, deadline: float) -> None:
        self.now = max(self.now, deadline)
        while self._sleepers and self._sleepers[0].deadline <= deadline:
            sleeper = heapq.heappop(self._sleepers)
            if not sleeper.future.done():
                sleeper.future.set_result(None)
        await self.settle()

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0].future.done():
            heapq.heappop(self._sleepers)
