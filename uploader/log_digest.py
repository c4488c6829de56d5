"""Repeated log lines summed up: the first of a kind at once, then one line per interval.

In the daemon a file deferred by a transient error (throttling past the retries, an outage,
a missing bucket, a journal that cannot be written) goes back in line and is tried again
every `retry.retry_later_seconds`: with a backlog of 100,000 files that was 3,300 WARNING
lines a second, each saying the same thing about another file. `LogDigest` logs the first
line of a kind in full, counts the ones after it (each still logged at DEBUG), and logs one
summary per `interval` while they go on:

    812 more like this in the last 60 s, the latest: upload deferred: SlowDown: ...

A kind quiet for a whole interval starts over: its next line is logged in full at once.
`close` says what is still counted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class _Run:
    level: int
    repeats: int = 0
    latest: str = ""
    latest_extra: Mapping[str, Any] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class LogDigest:
    def __init__(self, logger: logging.Logger, *, interval: float) -> None:
        """`interval` <= 0: every line is logged as it comes (nothing is summed up)."""
        self.logger = logger
        self.interval = interval
        self._runs: dict[str, _Run] = {}

    def log(self, level: int, kind: str, msg: str, *args: Any,
            extra: Mapping[str, Any] | None = None) -> None:
        """Log `msg % args` as `logger.log` would, unless a line of `kind` came within the
        interval: then it is counted for the summary and logged at DEBUG."""
        run = self._runs.get(kind)
        if self.interval <= 0 or run is None:
            self.logger.log(level, msg, *args, extra=extra)
            if self.interval > 0:
                self._start(kind, _Run(level=level))
            return
        run.repeats += 1
        run.latest, run.latest_extra = (msg % args if args else msg), extra or {}
        self.logger.debug(msg, *args, extra=extra)

    def close(self) -> None:
        for kind in list(self._runs):
            run = self._runs.pop(kind)
            if run.timer is not None:
                run.timer.cancel()
            self._summarize(run)

    def _start(self, kind: str, run: _Run) -> None:
        self._runs[kind] = run
        loop = asyncio.get_running_loop()
        run.timer = loop.call_later(self.interval, self._interval_over, kind)

    def _interval_over(self, kind: str) -> None:
        run = self._runs.pop(kind)
        if run.repeats:  # still going on: sum up, and count the next interval's
            self._summarize(run)
            self._start(kind, _Run(level=run.level))

    def _summarize(self, run: _Run) -> None:
        if run.repeats:
            self.logger.log(run.level, "%d more like this in the last %g s, the latest: %s",
                            run.repeats, self.interval, run.latest,
                            extra={**run.latest_extra, "repeats": run.repeats})
