"""The worker pool: N tasks taking files from a bounded queue.

The queue (`uploader.intake.FairIntake`) keeps a throttled S3 partition from
taking every worker: one throttled prefix does not slow the others.

Shutdown is two-phase (see `stop`): idle workers stop at once, busy ones get
until the deadline to finish their file, then they are cancelled, which parks
multipart uploads for the next start.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable, Protocol

from uploader.intake import FairIntake
from uploader.pipeline import Outcome, Pipeline
from uploader.transfer.job import Signature

log = logging.getLogger(__name__)


class Workforce(Protocol):
    """What hands files to the pipeline in a daemon, as its metrics and a reload see it:
    this worker pool (directory source) or the SQS source (a message in hand is a slot)."""

    concurrency: int  # files uploaded at once at most (`transfer.concurrency`)

    @property
    def depth(self) -> int:
        """Files taken and waiting for their turn."""

    @property
    def set_aside(self) -> int:
        """Files waiting for their throttled S3 partition to have room."""

    @property
    def in_flight(self) -> int:
        """Files being uploaded now."""

    @property
    def deferred(self) -> int:
        """Files waiting here to be retried after a transient failure."""

    def resize(self, concurrency: int) -> None:
        """Apply a new `transfer.concurrency` live."""


class WorkerPool:
    def __init__(self, *, pipeline: Pipeline, concurrency: int, queue_size: int = 1000,
                 retry_later_seconds: float | None = None,
                 on_changed: Callable[[Path], None] | None = None,
                 partition_of: Callable[[str], str] | None = None,
                 has_room: Callable[[str], bool] | None = None) -> None:
        """`partition_of(relative)`: the file's S3 partition; `has_room(partition)`:
        whether a file of it may start now. Without them, files go in order."""
        self.pipeline = pipeline
        self.concurrency = concurrency
        self._queue: FairIntake[tuple[Path, str, Signature | None]] = FairIntake(
            maxsize=queue_size, has_room=has_room,
            partition_of=(lambda item: partition_of(item[1])) if partition_of else None)
        self._queued: set[Path] = set()
        self._busy: dict[asyncio.Task[None], Path] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._retry_later_seconds = retry_later_seconds
        self._deferred: dict[Path, asyncio.TimerHandle] = {}
        self.on_changed = on_changed
        self._active = 0  # workers running and not told to stop (see resize)
        self._started = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def set_aside(self) -> int:
        """Queued files waiting for their throttled partition to have room (in `depth`)."""
        return self._queue.set_aside

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    @property
    def deferred(self) -> int:
        """Files waiting to be retried after a transient failure."""
        return len(self._deferred)

    async def submit(self, path: Path, relative: str,
                     signature: Signature | None = None) -> None:
        """Queue a settled file (waits while the queue is full: back-pressure).

        `signature`: the file's stat as just seen by the caller (saves a stat).
        """
        if path in self._queued or self._stopping:
            return
        self._queued.add(path)
        await self._queue.put((path, relative, signature))

    def start(self) -> None:
        self._tasks = []
        self._add_workers(self.concurrency)

    def resize(self, concurrency: int) -> None:
        """Change the number of workers live (a reload): idle ones stop at once, busy
        ones after their current file; new ones start at once."""
        self.concurrency = concurrency
        if self._stopping or not self._tasks:
            return  # not started: start() uses the new number
        if concurrency > self._active:
            self._add_workers(concurrency - self._active)
            return
        idle = [task for task in self._tasks
                if task not in self._busy and not task.done() and not task.cancelling()]
        for task in idle[:self._active - concurrency]:
            task.cancel()  # waiting in queue.get(), which loses nothing when cancelled
            self._active -= 1
        # Any excess left is busy: those workers stop after their file (see _work).

    def _add_workers(self, count: int) -> None:
        for _ in range(count):
            self._tasks.append(asyncio.create_task(self._work(),
                                                   name=f"worker-{self._started}"))
            self._started += 1
            self._active += 1

    async def join(self) -> None:
        """Wait until every queued file has been processed (the one-shot's end)."""
        await self._queue.join()

    async def stop(self, *, grace_seconds: float) -> None:
        self._stopping = True
        for timer in self._deferred.values():
            timer.cancel()  # they stay pending in the journal; the next start takes them
        self._deferred.clear()
        for task in self._tasks:
            if task not in self._busy:
                task.cancel()
        busy = [task for task in self._tasks if task in self._busy]
        if busy:
            log.info("waiting up to %.0fs for %d upload(s) in flight", grace_seconds, len(busy))
            _, pending = await asyncio.wait(busy, timeout=grace_seconds)
            for task in pending:
                log.warning("grace period over; parking %s", self._busy.get(task))
                task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.error("worker failed: %r", result)

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self._stopping:
            if self._active > self.concurrency:  # shrunk by a reload
                self._active -= 1
                return
            path, relative, signature = await self._queue.get()
            self._busy[task] = path
            try:
                outcome = await self.pipeline.process(path, relative, signature=signature)
                if outcome is Outcome.CHANGED and self.on_changed:
                    self.on_changed(path)
                elif outcome is Outcome.DEFERRED:
                    self._retry_later(path, relative)
            except Exception:
                log.exception("unexpected error while uploading %s", path)
            finally:
                del self._busy[task]
                self._queued.discard(path)
                self._queue.done()

    def _retry_later(self, path: Path, relative: str) -> None:
        """Put a file back in line after a transient failure (not in a one-shot run)."""
        if self._retry_later_seconds is None or self._stopping:
            return

        def resubmit() -> None:
            del self._deferred[path]
            task = asyncio.ensure_future(self.submit(path, relative))
            task.add_done_callback(_log_failure)

        previous = self._deferred.pop(path, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._deferred[path] = loop.call_later(self._retry_later_seconds, resubmit)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not put a file back in line: %r", task.exception())
