"""Prometheus metrics of one running daemon, on its own registry.

Almost everything is *read* at scrape time from the counters and state the
daemon keeps anyway (`Pipeline.totals`, `RetryPolicy.retries_by_code`, the
limiter's `snapshot()`, the breaker's state, the worker pool's depth, the
journal's write counters), so the hot path pays nothing for metrics. Only
what needs one observation per file (latency and size histograms, the time
of the last upload) listens to the pipeline (`Pipeline.listeners`).

Each daemon builds its own `CollectorRegistry` (never the global one), so
tests can run several in one process. Label cardinality is bounded: failure
and retry reasons are S3 error codes or error type names (a small set);
limiter partitions are exported for the `metrics.top_partitions` most
throttled ones, the rest summed under `partition="other"`.

The journal's backlog (files pending, uploading, failed) is counted on a
separate read-only SQLite connection in a thread, so a scrape never blocks
the event loop on a large journal.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from uploader import clock_skew
from uploader.breaker import BreakerState
from uploader.config import Config
from uploader.journal import FAILED, PENDING, UPLOADING
from uploader.limiter import PartitionStats
from uploader.pipeline import Outcome

if TYPE_CHECKING:
    from uploader.transfer.context import UploadResult
    from uploader.wiring import Services
    from uploader.workers import Workforce

__all__ = ["CONTENT_TYPE", "DaemonMetrics", "top_partitions"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER_PARTITIONS = "other"
BACKLOG_STATES = (PENDING, UPLOADING, FAILED)  # index range counts: cheap even when huge
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                    300.0, 900.0, 3600.0)
SIZE_BUCKETS = tuple(float(1024 * 4**i) for i in range(12))  # 1 KiB .. 4 GiB, x4


class DaemonMetrics:
    """Everything `/metrics` shows for one daemon."""

    def __init__(self, *, svc: Services, settings: Callable[[], Config],
                 workers: Workforce | None = None,
                 loop_lag: Callable[[], float] | None = None,
                 source_problem: Callable[[], str | None] | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """`workers`: what hands files to the pipeline (default: the worker pool).
        `source_problem`: the watched directory's (None: no directory watched)."""
        self.registry = CollectorRegistry()
        self.clock = wall_clock
        self.upload_seconds = Histogram(
            "uploader_upload_duration_seconds", "Time from taking a file to its object being "
            "recorded as uploaded (files actually sent).", buckets=DURATION_BUCKETS,
            registry=self.registry)
        self.upload_bytes = Histogram(
            "uploader_upload_size_bytes", "Size of the files uploaded.", buckets=SIZE_BUCKETS,
            registry=self.registry)
        self.reloads = Counter(
            "uploader_config_reloads", "Configuration reloads (SIGHUP) by result: applied or "
            "rejected (the old settings stay).", ["result"], registry=self.registry)
        for result in ("applied", "rejected"):
            self.reloads.labels(result)
        self.last_upload_at: float | None = None
        self.started_at = wall_clock()
        self.backlog = JournalBacklog(svc.journal.path)
        self.registry.register(_DaemonCollector(self, svc=svc, settings=settings,
                                                workers=workers or svc.pool,
                                                loop_lag=loop_lag,
                                                source_problem=source_problem))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        svc.pipeline.listeners.append(self.on_outcome)

    def on_outcome(self, path: Path, outcome: Outcome, result: UploadResult | None,
                   seconds: float) -> None:
        if outcome is Outcome.UPLOADED and result is not None:
            self.upload_seconds.observe(seconds)
            self.upload_bytes.observe(result.size)
            self.last_upload_at = self.clock()

    def count_reload(self, result: str) -> None:
        self.reloads.labels(result).inc()

    async def render(self) -> bytes:
        """The Prometheus text exposition (call in the daemon's loop)."""
        await self.backlog.refresh()
        return generate_latest(self.registry)

    def close(self) -> None:
        self.backlog.close()


class JournalBacklog:
    """Counts of files by state, read on a separate read-only connection in a thread."""

    def __init__(self, path: Path | str) -> None:
        self._path = None if str(path) == ":memory:" else Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self.counts: dict[str, int] = {}
        self.error: str | None = None

    async def refresh(self) -> None:
        if self._path is None:
            return
        async with self._lock:  # the connection is used by one thread at a time
            try:
                self.counts = await asyncio.to_thread(self._count)
                self.error = None
            except sqlite3.Error as exc:
                self.error = str(exc)

    def _count(self) -> dict[str, int]:
        if self._db is None:
            assert self._path is not None
            self._db = sqlite3.connect(f"{self._path.absolute().as_uri()}?mode=ro", uri=True,
                                       timeout=2.0, check_same_thread=False)
        return {state: self._db.execute("SELECT COUNT(*) FROM files WHERE status = ?",
                                        (state,)).fetchone()[0] for state in BACKLOG_STATES}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


@dataclass(frozen=True)
class PartitionView:
    name: str
    rate: float | None
    waiting: int


def top_partitions(snapshot: dict[str, PartitionStats], *, limit: int) -> list[PartitionView]:
    """At most `limit` partitions by name, the most throttled (then busiest) first, and
    the rest summed into one `other` entry (its rate: the sum of their limited rates)."""
    ranked = sorted(snapshot.items(), key=lambda item: (
        item[1].rate is None, -item[1].throttles, -item[1].waiting, item[0]))
    views = [PartitionView(name, stats.rate, stats.waiting) for name, stats in ranked[:limit]]
    rest = [stats for _, stats in ranked[limit:]]
    if rest:
        rates = [stats.rate for stats in rest if stats.rate is not None]
        views.append(PartitionView(OTHER_PARTITIONS, sum(rates) if rates else None,
                                   sum(stats.waiting for stats in rest)))
    return views


class _DaemonCollector(Collector):
    """Reads the daemon's live objects at scrape time (in the event loop's thread)."""

    def __init__(self, metrics: DaemonMetrics, *, svc: Services, settings: Callable[[], Config],
                 workers: Workforce, loop_lag: Callable[[], float] | None,
                 source_problem: Callable[[], str | None] | None) -> None:
        self._metrics = metrics
        self._svc = svc
        self._workers = workers
        self._settings = settings
        self._loop_lag = loop_lag
        self._source_problem = source_problem
        # Not reloadable: the semaphore in the transfer context was sized at start.
        self._max_parts = svc.config.transfer.max_parts_in_flight

    def collect(self) -> Iterator[Metric]:
        yield from self._files()
        yield from self._requests()
        yield from self._limiter()
        yield from self._breaker()
        yield from self._work()
        yield from self._journal()
        yield from self._liveness()

    def _files(self) -> Iterator[Metric]:
        totals = self._svc.pipeline.totals
        files = CounterMetricFamily("uploader_files", "Files processed, by outcome.",
                                    labels=["outcome"])
        for outcome, count in totals.counts.items():
            files.add_metric([outcome.name.lower()], count)
        yield files
        yield CounterMetricFamily("uploader_bytes_uploaded", "Bytes of files uploaded.",
                                  value=totals.bytes_uploaded)
        yield CounterMetricFamily("uploader_parts_uploaded", "Multipart parts sent.",
                                  value=totals.parts_sent)
        yield _labelled_counter("uploader_failures", "Files that failed (for good) or were "
                                "deferred (transient), by reason: S3's error code or the "
                                "error's type.", "reason", totals.failures)
        last = self._metrics.last_upload_at
        yield _gauge("uploader_last_upload_timestamp_seconds", "Unix time of the last "
                     "successful upload (no sample before the first).", last)
        yield _gauge("uploader_seconds_since_last_upload", "Seconds since the last successful "
                     "upload (no sample before the first).",
                     None if last is None else max(0.0, self._metrics.clock() - last))

    def _requests(self) -> Iterator[Metric]:
        retry = self._svc.retry
        yield _labelled_counter("uploader_retries", "Requests retried, by the reason of the "
                                "failed attempt (S3 error code or error type).", "reason",
                                retry.retries_by_code)
        yield CounterMetricFamily("uploader_throttles", "Throttling answers from S3 "
                                  "(SlowDown, 503, 429).", value=retry.throttles)
        if retry.budget is not None:
            yield GaugeMetricFamily("uploader_retry_budget_tokens", "Tokens left in the shared "
                                    "retry budget.", value=retry.budget.available)
            yield CounterMetricFamily("uploader_retries_refused", "Retries refused because "
                                      "the retry budget was empty.", value=retry.budget.refused)

    def _limiter(self) -> Iterator[Metric]:
        limiter = self._svc.retry.limiter
        if limiter is None:
            return
        settings = self._settings()
        snapshot = limiter.snapshot()
        rate = GaugeMetricFamily("uploader_limiter_requests_per_second", "Requests/s the "
                                 "limiter allows now, per S3 partition (absent: unlimited). "
                                 "The most throttled partitions by name, the rest summed "
                                 "as partition=\"other\".", labels=["partition"])
        waiting = GaugeMetricFamily("uploader_limiter_waiting_requests", "Requests waiting "
                                    "for the limiter, per S3 partition.", labels=["partition"])
        for view in top_partitions(snapshot, limit=self._svc.config.metrics.top_partitions):
            if view.rate is not None:
                rate.add_metric([view.name], view.rate)
            waiting.add_metric([view.name], view.waiting)
        yield rate
        yield waiting
        partitions = GaugeMetricFamily("uploader_limiter_partitions", "S3 partitions the "
                                       "limiter remembers, limited (a rate in force) or not.",
                                       labels=["state"])
        limited = sum(1 for stats in snapshot.values() if stats.rate is not None)
        partitions.add_metric(["limited"], limited)
        partitions.add_metric(["unlimited"], len(snapshot) - limited)
        yield partitions
        yield GaugeMetricFamily("uploader_limiter_adaptive", "1 if the limiter slows down on "
                                "throttling (rate_limit.adaptive).", value=int(limiter.adaptive))
        ceilings = settings.rate_limit
        yield _gauge("uploader_rate_limit_max_requests_per_second", "Configured ceiling on "
                     "requests/s per partition (no sample: none).",
                     ceilings.max_requests_per_second)
        yield _gauge("uploader_rate_limit_max_bytes_per_second", "Configured ceiling on upload "
                     "bytes/s overall (no sample: none).", ceilings.max_bytes_per_second)

    def _breaker(self) -> Iterator[Metric]:
        breaker = self._svc.retry.breaker
        if breaker is None:
            return
        state = breaker.state
        family = GaugeMetricFamily("uploader_breaker_state", "The circuit breaker's state: 1 "
                                   "for the current one (closed, open, half_open).",
                                   labels=["endpoint", "state"])
        for candidate in BreakerState:
            family.add_metric([breaker.endpoint, candidate.value], int(candidate is state))
        yield family
        opened = CounterMetricFamily("uploader_breaker_opened", "Times the circuit breaker "
                                     "opened.", labels=["endpoint"])
        opened.add_metric([breaker.endpoint], breaker.opened)
        yield opened

    def _work(self) -> Iterator[Metric]:
        workers = self._workers  # the worker pool, or the SQS source
        yield GaugeMetricFamily("uploader_queue_depth", "Files taken and waiting for their "
                                "turn (directory source: settled files waiting for a worker; "
                                "SQS: messages in hand waiting for a duplicate).",
                                value=workers.depth)
        yield GaugeMetricFamily("uploader_queue_set_aside", "Files waiting for their "
                                "throttled S3 partition to have room, while files for other "
                                "partitions go past them (directory source: part of the "
                                "queue depth; SQS: messages in hand, not counted as slots).",
                                value=workers.set_aside)
        yield GaugeMetricFamily("uploader_uploads_in_flight", "Files being uploaded now.",
                                value=workers.in_flight)
        yield GaugeMetricFamily("uploader_deferred_files", "Files waiting to be retried after "
                                "a transient failure (SQS: always 0, the queue holds them).",
                                value=workers.deferred)
        yield GaugeMetricFamily("uploader_workers", "Files uploaded at once at most "
                                "(transfer.concurrency).", value=workers.concurrency)
        yield _gauge("uploader_parts_in_flight", "Multipart parts being sent now.",
                     _parts_in_flight(self._svc.pipeline.ctx, self._max_parts))

    def _journal(self) -> Iterator[Metric]:
        journal = self._svc.journal
        yield CounterMetricFamily("uploader_journal_writes", "Journal writes.",
                                  value=journal.writes)
        yield CounterMetricFamily("uploader_journal_commits", "Journal commits (writes are "
                                  "grouped per event-loop iteration).", value=journal.commits)
        yield GaugeMetricFamily("uploader_journal_uncommitted", "1 while written changes wait "
                                "for their group commit.", value=int(journal.uncommitted))
        files = GaugeMetricFamily("uploader_journal_files", "Files in the journal by state "
                                  "(pending, uploading, failed): the backlog.", labels=["state"])
        for state, count in self._metrics.backlog.counts.items():
            files.add_metric([state], count)
        yield files

    def _liveness(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("uploader_start_time_seconds", "Unix time the daemon started.",
                                value=self._metrics.started_at)
        if self._loop_lag is not None:
            yield GaugeMetricFamily("uploader_event_loop_lag_seconds", "How late the event "
                                    "loop ran a timer lately (a busy or blocked loop).",
                                    value=self._loop_lag())
        if self._source_problem is not None:
            yield GaugeMetricFamily("uploader_source_available", "1 while the watched "
                                    "directory (source.directory) is there, 0 while it is "
                                    "gone (removed, moved away or unmounted).",
                                    value=0 if self._source_problem() else 1)
        checksums = self._svc.pipeline.ctx.checksums
        chosen = GaugeMetricFamily("uploader_checksum", "1 for the integrity checksum new "
                                   "uploads carry (transfer.checksum), and what chose it: "
                                   "setting (or AWS); under auto off AWS, learning, echo, "
                                   "no echo or refusal (the server's answer to "
                                   "x-amz-checksum-crc32c).", labels=["algorithm", "basis"])
        chosen.add_metric([checksums.algorithm, checksums.basis], 1)
        yield chosen
        yield GaugeMetricFamily("uploader_clock_offset_seconds", "Seconds the S3 server's "
                                "clock is ahead of the local one, as learned from a "
                                "RequestTimeTooSkewed (0 until one); requests are signed with "
                                "the server's time.", value=clock_skew.offset_seconds())


def _gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    """A gauge whose name is always listed; without a value it has no sample."""
    family = GaugeMetricFamily(name, documentation)
    if value is not None:
        family.add_metric([], value)
    return family


def _labelled_counter(name: str, documentation: str, label: str,
                      values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family


def _parts_in_flight(ctx: Any, max_parts: int) -> int | None:
    """Parts holding one of the transfer context's part slots now."""
    counted = getattr(ctx, "parts_in_flight", None)
    if isinstance(counted, int):
        return counted
    free = getattr(getattr(ctx, "part_slots", None), "_value", None)  # asyncio.Semaphore
    return max(0, max_parts - free) if isinstance(free, int) else None
