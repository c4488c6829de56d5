"""The worker pool's intake: a bounded FIFO of files that no throttled partition can monopolise.

S3 throttles per partition, and the limiter paces each partition on its own
(`uploader.limiter`). But the workers are shared: from a plain FIFO, a worker
that takes a file of a throttled partition waits there for a token, and in
time every worker waits on that partition while files for the others queue
behind them (head-of-line blocking): one throttled prefix would slow them all.

So a file is handed out only if its partition `has_room` (the limiter's
answer: unthrottled, or only a short queue of callers already waiting for its
tokens). Otherwise it is set aside, in order with the partition's other files,
and those are the first taken once the partition has room again (looked at
whenever a file is done, and every RECHECK_SECONDS while files are set aside).
At most `max_set_aside` files are set aside (MAX_SET_ASIDE: a few MB of paths;
far more than the queue, because a throttled partition's files can be most of
a backlog, and the others must be able to go past all of them); beyond that
files are taken in order, as from a plain FIFO.

Waiting (`put` while full, `get` while nothing can be taken) follows
asyncio.Queue: futures woken one at a time, cancellation-safe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

RECHECK_SECONDS = 0.5
MAX_SET_ASIDE = 10_000


class FairIntake(Generic[T]):
    def __init__(self, *, maxsize: int, max_set_aside: int = MAX_SET_ASIDE,
                 partition_of: Callable[[T], str] | None = None,
                 has_room: Callable[[str], bool] | None = None) -> None:
        """`partition_of(item)`: its S3 partition; `has_room(partition)`: whether a file
        of it may start now. Without them: a plain FIFO."""
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._maxsize = maxsize
        self._max_set_aside = max_set_aside
        self._partition_of = partition_of or (lambda item: "")
        self._has_room = has_room or (lambda partition: True)
        self._ready: collections.deque[tuple[T, str]] = collections.deque()
        self._set_aside: dict[str, collections.deque[T]] = {}
        self._aside_count = 0
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._putters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._unfinished = 0
        self._all_done = asyncio.Event()
        self._all_done.set()

    def __len__(self) -> int:
        """Files waiting to be taken (set-aside ones included)."""
        return len(self._ready) + self._aside_count

    @property
    def set_aside(self) -> int:
        return self._aside_count

    async def put(self, item: T) -> None:
        """Queue `item`; waits while `maxsize` items wait in line (back-pressure)."""
        while len(self._ready) >= self._maxsize:
            await self._wait(self._putters)
        self._ready.append((item, self._partition_of(item)))
        self._unfinished += 1
        self._all_done.clear()
        _wake_one(self._getters)

    async def get(self) -> T:
        """The next item a worker should take; call `done` when it is finished with it."""
        while (item := self._take()) is None:
            await self._wait(self._getters,
                             timeout=RECHECK_SECONDS if self._aside_count else None)
        if self._ready:
            _wake_one(self._getters)  # we may have taken a set-aside item, not the new one
        return item

    def done(self) -> None:
        """A worker is finished with an item (whatever the outcome)."""
        self._unfinished -= 1
        if self._unfinished == 0:
            self._all_done.set()
        if self._aside_count:
            _wake_one(self._getters)  # its partition may have room now

    async def join(self) -> None:
        """Wait until every item put has been taken and is done."""
        await self._all_done.wait()

    def _take(self) -> T | None:
        for partition, waiting in self._set_aside.items():
            if self._has_room(partition):
                item = waiting.popleft()
                self._aside_count -= 1
                if not waiting:
                    del self._set_aside[partition]
                return item
        while self._ready:
            item, partition = self._ready.popleft()
            _wake_one(self._putters)
            if self._has_room(partition) or self._aside_count >= self._max_set_aside:
                return item
            self._set_aside.setdefault(partition, collections.deque()).append(item)
            self._aside_count += 1
        return None

    async def _wait(self, waiters: collections.deque[asyncio.Future[None]], *,
                    timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        waiters.append(waiter)
        timer = loop.call_later(timeout, _resolve, waiter) if timeout else None
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                _wake_one(waiters)  # woken, then cancelled: the wake-up goes to the next
            raise
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _wake_one(waiters: collections.deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return
