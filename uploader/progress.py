"""Progress of a one-shot `uploader upload`: files, bytes, rate and ETA, on stderr.

On a terminal a bar is redrawn in place a few times a second; otherwise (a
pipe, a CI log) a plain line is printed every `LINE_INTERVAL_SECONDS`, so logs
stay readable. The totals are counted by a walk of their own in a thread,
concurrently with the uploads, so a huge tree shows progress at once and an
ETA as soon as it is counted. Progress moves as files finish (a large file's
bytes count when its last part is sent).

`Progress` is the arithmetic (an injected clock, no I/O); `ProgressDisplay`
draws it; `track_progress` wires both to a pipeline for the run's length.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, AsyncIterator, Awaitable, Callable, Iterable

from uploader.config import Config
from uploader.filters import FileFilter
from uploader.pipeline import Outcome, Pipeline
from uploader.sources.walk import TreeWalker
from uploader.transfer.context import UploadResult
from uploader.transfer.job import Signature

BAR_INTERVAL_SECONDS = 0.2
LINE_INTERVAL_SECONDS = 5.0
RATE_WINDOW_SECONDS = 5.0
# Walks still listing after this long are counted ahead of the uploads (in a thread).
COUNT_AFTER_SECONDS = 2.0
CLEAR_LINE = "\r\x1b[K"
MiB = 1024 * 1024

Submit = Callable[[Path, str, Signature | None], Awaitable[None]]


@dataclass(frozen=True)
class Snapshot:
    files_done: int
    bytes_done: int
    files_total: int | None  # None while still counting
    bytes_total: int | None
    failed: int
    bytes_per_second: float
    files_per_second: float
    elapsed: float

    @property
    def eta_seconds(self) -> float | None:
        if self.bytes_total is None or self.files_total is None:
            return None
        if self.bytes_total > 0 and self.bytes_per_second > 0:
            return max(0.0, (self.bytes_total - self.bytes_done) / self.bytes_per_second)
        if self.files_per_second > 0:
            return max(0.0, (self.files_total - self.files_done) / self.files_per_second)
        return None

    @property
    def fraction(self) -> float | None:
        if self.bytes_total is None or self.files_total is None:
            return None
        if self.bytes_total > 0:
            return min(1.0, self.bytes_done / self.bytes_total)
        return min(1.0, self.files_done / self.files_total) if self.files_total else 1.0


class Progress:
    """Files and bytes done against the totals; rates over a sliding window."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 window_seconds: float = RATE_WINDOW_SECONDS) -> None:
        self._clock = clock
        self._window = window_seconds
        self.started = clock()
        self.files_total: int | None = None
        self.bytes_total: int | None = None
        self.files_done = 0
        self.bytes_done = 0
        self.files_listed = 0
        self.bytes_listed = 0
        self.failed = 0
        self._sizes: dict[Path, int] = {}  # submitted, not yet finished
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque(
            [(self.started, 0, 0)])

    def set_totals(self, *, files: int, nbytes: int) -> None:
        self.files_total, self.bytes_total = files, nbytes

    def submitted(self, path: Path, size: int) -> None:
        self._sizes[path] = size
        self.files_listed += 1
        self.bytes_listed += size

    def listing_done(self) -> None:
        """Every file has been handed on: the totals are what was listed."""
        self.set_totals(files=self.files_listed, nbytes=self.bytes_listed)

    def on_outcome(self, path: Path, outcome: Outcome, result: UploadResult | None,
                   seconds: float) -> None:
        """A `Pipeline` listener: one file finished, whatever its outcome."""
        size = self._sizes.pop(path, result.size if result is not None else 0)
        self.files_done += 1
        self.bytes_done += size
        if outcome in (Outcome.FAILED, Outcome.DEFERRED):
            self.failed += 1
        now = self._clock()
        self._samples.append((now, self.files_done, self.bytes_done))
        while len(self._samples) > 2 and self._samples[1][0] < now - self._window:
            self._samples.popleft()

    def snapshot(self) -> Snapshot:
        now = self._clock()
        since, files_then, bytes_then = self._samples[0]
        if since < now - self._window and len(self._samples) == 1:
            since = self.started  # nothing finished lately: the average since the start
        span = max(now - since, 1e-9)
        return Snapshot(files_done=self.files_done, bytes_done=self.bytes_done,
                        files_total=self.files_total, bytes_total=self.bytes_total,
                        failed=self.failed,
                        bytes_per_second=(self.bytes_done - bytes_then) / span,
                        files_per_second=(self.files_done - files_then) / span,
                        elapsed=now - self.started)


# ------------------------------------------------------------------ rendering
def bar_line(snap: Snapshot, *, width: int) -> str:
    """One terminal line: `[####....]  42%  12/40 files  3.2/10.0 MiB  1.4 MiB/s  ETA 0:05`."""
    stats = _stats(snap)
    fraction = snap.fraction
    if fraction is None:
        return _fit(f"counting…  {stats}", width)
    text = f"{fraction * 100:3.0f}%  {stats}"
    bar_width = max(10, min(40, width - len(text) - 3))
    filled = int(round(fraction * bar_width))
    return _fit(f"[{'#' * filled}{'.' * (bar_width - filled)}] {text}", width)


def plain_line(snap: Snapshot) -> str:
    fraction = snap.fraction
    percent = "" if fraction is None else f" ({fraction * 100:.0f}%)"
    return f"progress{percent}: {_stats(snap)}"


def _stats(snap: Snapshot) -> str:
    files = f"{snap.files_done}/{snap.files_total}" if snap.files_total is not None \
        else f"{snap.files_done}"
    done = snap.bytes_done / MiB
    data = f"{done:.1f}/{snap.bytes_total / MiB:.1f} MiB" if snap.bytes_total is not None \
        else f"{done:.1f} MiB"
    parts = [f"{files} files", data, f"{snap.bytes_per_second / MiB:.1f} MiB/s",
             f"{snap.files_per_second:.1f} files/s"]
    if snap.failed:
        parts.append(f"{snap.failed} failed")
    eta = snap.eta_seconds
    parts.append(f"ETA {_duration(eta)}" if eta is not None else "ETA -")
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


class ProgressDisplay:
    """Draws a `Progress` on `stream`: a live bar on a terminal, periodic lines elsewhere."""

    def __init__(self, progress: Progress, stream: IO[str], *, tty: bool | None = None) -> None:
        self.progress = progress
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = BAR_INTERVAL_SECONDS if self.tty else LINE_INTERVAL_SECONDS
        self._bar_shown = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.draw()

    def draw(self) -> None:
        snap = self.progress.snapshot()
        if self.tty:
            width = _columns(self.stream) - 1
            self.stream.write(CLEAR_LINE + bar_line(snap, width=width))
            self._bar_shown = True
        else:
            self.stream.write(plain_line(snap) + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """The last frame, left on screen (a terminal only; the summary follows)."""
        if self.tty:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
            self._bar_shown = False

    def clear(self) -> None:
        """Take the bar off its line so a log line can be written there."""
        if self._bar_shown:
            self.stream.write(CLEAR_LINE)
            self._bar_shown = False


class _ClearBarBeforeLogs(logging.Filter):
    def __init__(self, display: ProgressDisplay) -> None:
        super().__init__()
        self._display = display

    def filter(self, record: logging.LogRecord) -> bool:
        self._display.clear()
        return True


# ------------------------------------------------------------------- wiring
def count_files(paths: Iterable[Path], config: Config) -> tuple[int, int]:
    """(files, bytes) that `uploader upload` will take from `paths` (as oneshot walks them)."""
    files = nbytes = 0
    for path in paths:
        if path.is_file():
            files, nbytes = files + 1, nbytes + path.stat().st_size
            continue
        walker = TreeWalker(root=path, file_filter=FileFilter(config.source),
                            follow_symlinks=config.source.follow_symlinks,
                            on_error=_reported_by_the_uploads)
        for found in walker.files():
            files, nbytes = files + 1, nbytes + found.stat.st_size
    return files, nbytes


def _reported_by_the_uploads(folder: Path, exc: OSError) -> None:
    """The upload's own walk reports (and counts) a folder it cannot list; once is enough."""


class Tracker:
    """What `track_progress` hands the one-shot: wrap its submit with `submit`."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def submit(self, inner: Submit) -> Submit:
        async def submit(path: Path, relative: str, signature: Signature | None = None) -> None:
            if signature is not None:
                size = signature.size
            else:
                try:
                    size = os.stat(path).st_size
                except OSError:
                    size = 0
            self.progress.submitted(path, size)
            await inner(path, relative, signature)
        return submit

    def listing_done(self) -> None:
        self.progress.listing_done()


@contextlib.asynccontextmanager
async def track_progress(pipeline: Pipeline, *, paths: list[Path], config: Config,
                         stream: IO[str] | None) -> AsyncIterator[Tracker]:
    """Count, listen and draw while the block runs; `stream` None: count only."""
    progress = Progress()
    pipeline.listeners.append(progress.on_outcome)
    display = ProgressDisplay(progress, stream) if stream is not None else None
    log_filter = _ClearBarBeforeLogs(display) if display is not None and display.tty else None
    handlers = logging.getLogger().handlers if log_filter is not None else []
    for handler in handlers:
        handler.addFilter(log_filter)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(_count(progress, paths, config), name="progress-count")]
    if display is not None:
        tasks.append(asyncio.create_task(display.run(), name="progress-display"))
    try:
        yield Tracker(progress)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for handler in handlers:
            handler.removeFilter(log_filter)  # type: ignore[arg-type]
        pipeline.listeners.remove(progress.on_outcome)
        if display is not None:
            display.finish()


async def _count(progress: Progress, paths: list[Path], config: Config) -> None:
    # A walk that ends soon gives the totals itself (`listing_done`); only a big
    # tree is walked a second time, ahead of the uploads, for an early total.
    await asyncio.sleep(COUNT_AFTER_SECONDS)
    if progress.files_total is not None:
        return
    try:
        files, nbytes = await asyncio.to_thread(count_files, paths, config)
    except OSError:
        return  # the uploads report what is wrong with the paths
    progress.set_totals(files=files, nbytes=nbytes)


def _columns(stream: IO[str]) -> int:
    """The width of the terminal `stream` writes to (the bar's: stderr, whatever stdout
    is); if it tells none (0: a pseudo-terminal nobody sized), $COLUMNS, else 80."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns or shutil.get_terminal_size(fallback=(80, 24)).columns
