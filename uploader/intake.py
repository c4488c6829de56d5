"""The worker pool's intake: a bounded FIFO of files that no throttled partition can monopolise.

S3 throttles per partition, and the limiter paces each partition on its own
(`uploader.limiter`). But the workers are shared: from a plain FIFO, a worker
that takes a file of a throttled partition waits there for a token, and in
time every worker waits on that partition while files for the others queue
behind them (head-of-line blocking): one throttled prefix would slow them all.

So while a partition is throttled, at most `allowance` workers hold its files:
its rate times HOLD_SECONDS (enough to keep it sending at that rate while each
request takes up to HOLD_SECONDS), and at least MIN_ALLOWANCE. Its further
files are set aside, in order, and are the first taken once it has room (a
file of it finishes, or its rate rises: looked at every RECHECK_SECONDS while
files are set aside). An unthrottled partition has no allowance. At most
`maxsize` files are set aside; beyond that files are taken in order, as from
a plain FIFO.

Waiting (`put` while full, `get` while nothing can be taken) follows
asyncio.Queue: futures woken one at a time, cancellation-safe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

HOLD_SECONDS = 1.0
MIN_ALLOWANCE = 2
RECHECK_SECONDS = 0.5


class PartitionShares:
    """How many workers hold files of each partition, and whether one may take another."""

    def __init__(self, rate_of: Callable[[str], float | None] | None = None) -> None:
        """`rate_of(partition)`: the requests/s the limiter allows there now, None if
        unthrottled (then there is always room)."""
        self._rate_of = rate_of or (lambda partition: None)
        self._holding: collections.Counter[str] = collections.Counter()

    def has_room(self, partition: str) -> bool:
        rate = self._rate_of(partition)
        if rate is None:
            return True
        allowance = max(MIN_ALLOWANCE, math.ceil(rate * HOLD_SECONDS))
        return self._holding[partition] < allowance

    def hold(self, partition: str) -> None:
        self._holding[partition] += 1

    def release(self, partition: str) -> None:
        self._holding[partition] -= 1
        if self._holding[partition] <= 0:
            del self._holding[partition]


class FairIntake(Generic[T]):
    def __init__(self, *, maxsize: int,
                 partition_of: Callable[[T], str] | None = None,
                 rate_of: Callable[[str], float | None] | None = None) -> None:
        """`partition_of(item)`: its S3 partition; `rate_of(partition)`: the requests/s
        the limiter allows there now, None if unthrottled. Without them: a plain FIFO."""
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._maxsize = maxsize
        self._partition_of = partition_of or (lambda item: "")
        self._shares = PartitionShares(rate_of)
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

    async def get(self) -> tuple[T, str]:
        """The next item a worker should take, and its partition (for `done`)."""
        while (entry := self._take()) is None:
            await self._wait(self._getters,
                             timeout=RECHECK_SECONDS if self._aside_count else None)
        self._shares.hold(entry[1])
        if self._ready:
            _wake_one(self._getters)  # we may have taken a set-aside item, not the new one
        return entry

    def done(self, partition: str) -> None:
        """A worker is finished with an item of `partition` (whatever the outcome)."""
        self._shares.release(partition)
        self._unfinished -= 1
        if self._unfinished == 0:
            self._all_done.set()
        if self._aside_count:
            _wake_one(self._getters)  # the room it leaves may let a set-aside item go

    async def join(self) -> None:
        """Wait until every item put has been taken and is done."""
        await self._all_done.wait()

    def _take(self) -> tuple[T, str] | None:
        for partition, waiting in self._set_aside.items():
            if self._shares.has_room(partition):
                item = waiting.popleft()
                self._aside_count -= 1
                if not waiting:
                    del self._set_aside[partition]
                return item, partition
        while self._ready:
            item, partition = self._ready.popleft()
            _wake_one(self._putters)
            if self._shares.has_room(partition) or self._aside_count >= self._maxsize:
                return item, partition
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
