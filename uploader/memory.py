"""The memory budget: how many bytes of file data are held at once, over all uploads.

Every PUT body and every multipart part is read into memory before it is
sent (its checksum goes in a header, ahead of the body), so concurrency alone
does not bound memory: 16 files x 8 MiB, or parts whose size was raised for a
huge file, add up. Each upload reserves its bytes here first and gives them
back when its request is answered, so the data held never exceeds the budget
whatever the file sizes.

Reservations are served first come, first served (a large part is not starved
by a stream of small files). One reservation larger than the whole budget is
granted when nothing else is held, so a part bigger than the budget still goes
up, alone, instead of waiting forever.

Part buffers are reused (`buffer` / `recycle`): a part is read straight into a
buffer of its exact size that an earlier part gave back, so memory is not
allocated, faulted in and zeroed again for every part (~0.3 CPU-s per GB),
and freed parts do not linger in the allocator's arenas: the buffers kept plus
those in use never exceed the budget, so the process's memory for file data
is the budget at most.

A buffer is an anonymous memory mapping, so it starts on a page boundary. A
bytearray of a part's size would start 16 bytes past one (glibc serves it
from its own mapping, after a 16-byte header), and there the kernel copies
file pages into it 2.5 times slower (measured on this project's machine:
~0.5 against ~0.2 CPU-s per GB read; a destination 8 or 16 bytes off the
source's page alignment takes the slow path of the CPU's copy). Mapped with
MAP_POPULATE, its pages are faulted in by one call, not one fault per page.
"""

from __future__ import annotations

import asyncio
import collections
import mmap
from types import TracebackType

# Linux: fault every page in at mapping time (the whole buffer is about to be written).
_MAP_FLAGS = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)


class MemoryBudget:
    """A byte-counting semaphore, created once and shared by every transfer."""

    def __init__(self, *, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self.high_water = 0  # the most ever held at once (for tests, metrics, benchmarks)
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._free: dict[int, list[mmap.mmap]] = {}  # buffers given back, by size
        self._lent = 0  # bytes of buffers handed out and not given back
        self.buffers_allocated = 0  # buffers ever allocated (reuse shows as few)

    @property
    def waiting(self) -> int:
        """Reservations queued for room."""
        return sum(1 for _, future in self._waiters if not future.done())

    def hold(self, nbytes: int) -> "_Hold":
        """`async with budget.hold(n):` holds `n` bytes for the duration of the block."""
        return _Hold(self, nbytes)

    async def acquire(self, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        if not self._waiters and self._fits(nbytes):
            self._take(nbytes)  # the common case: no await, no future
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((nbytes, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(nbytes)  # granted just as we were cancelled: give it back
            else:
                self._grant()  # our place at the head may have blocked smaller ones
            raise

    def release(self, nbytes: int) -> None:
        self.in_use -= nbytes
        if self.in_use < 0:
            raise RuntimeError("memory budget released more than was held")
        self._grant()

    # ------------------------------------------------------------- buffers
    @property
    def pooled(self) -> int:
        """Bytes of buffers kept for reuse (not lent out)."""
        return sum(len(b) for buffers in self._free.values() for b in buffers)

    def buffer(self, nbytes: int) -> mmap.mmap:
        """A writable, page-aligned buffer of exactly `nbytes` (> 0), reused if one was
        given back. Call only while holding `nbytes` of the budget (`hold`)."""
        self._lent += nbytes
        kept = self._free.get(nbytes)
        if kept:
            return kept.pop()
        # Kept buffers of other sizes give way, so kept + lent stays within the budget.
        excess = self.pooled + self._lent - self.capacity
        for size in sorted(self._free, reverse=True):
            while excess > 0 and self._free[size]:
                self._free[size].pop()
                excess -= size
        self.buffers_allocated += 1
        # Unmapped when the last reference goes (a view a failed request still holds).
        return mmap.mmap(-1, nbytes, flags=_MAP_FLAGS)

    def recycle(self, buffer: mmap.mmap) -> None:
        """Give a buffer back for reuse, once nothing (a socket) can still read it."""
        self._lent -= len(buffer)
        self._free.setdefault(len(buffer), []).append(buffer)

    def discard(self, buffer: mmap.mmap) -> None:
        """A buffer not to reuse (a failed request may still hold it): let it go."""
        self._lent -= len(buffer)

    def _fits(self, nbytes: int) -> bool:
        return self.in_use + nbytes <= self.capacity or self.in_use == 0

    def _take(self, nbytes: int) -> None:
        self.in_use += nbytes
        self.high_water = max(self.high_water, self.in_use)

    def _grant(self) -> None:
        while self._waiters:
            nbytes, future = self._waiters[0]
            if future.done():  # cancelled while queued
                self._waiters.popleft()
                continue
            if not self._fits(nbytes):
                return
            self._waiters.popleft()
            self._take(nbytes)
            future.set_result(None)


class _Hold:
    """One reservation as an async context manager (lighter than a generator-based one:
    it runs for every file and every part)."""

    __slots__ = ("_budget", "_nbytes")

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self._budget = budget
        self._nbytes = nbytes

    async def __aenter__(self) -> None:
        await self._budget.acquire(self._nbytes)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._budget.release(self._nbytes)
