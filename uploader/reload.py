"""Live reload on SIGHUP: re-read the YAML, apply what can change while running.

The file is read as at start (same path, same `UPLOADER_*` environment
overrides) and validated whole; a file that does not load is rejected with
the reason logged, and every setting in force stays. Of a valid file:

- applied live: `rate_limit.*` (the shared limiter's ceilings and adaptive
  switch), `transfer.concurrency` (the worker pool grows at once; it shrinks
  by stopping idle workers, busy ones after their file; the SQS source holds
  more messages at once, or fewer as those in hand finish), `source.include` and
  `source.exclude` (the directory source's filter; a rescan then picks up
  files newly included), `logging.level` and `logging.library_level`;
- any other change is logged as needing a restart and not applied, so the
  settings in force (`Reloader.config`) always describe the running daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from uploader.config import Config, load_config
from uploader.errors import ConfigError
from uploader.filters import FileFilter
from uploader.limiter import RateLimiter
from uploader.logs import set_levels
from uploader.open_files import fitting_concurrency
from uploader.sources.directory import DirectorySource
from uploader.workers import Workforce

log = logging.getLogger(__name__)

LIVE_KEYS = frozenset({
    "rate_limit.adaptive", "rate_limit.max_requests_per_second",
    "rate_limit.max_bytes_per_second", "transfer.concurrency", "source.include",
    "source.exclude", "logging.level", "logging.library_level",
})


@dataclass
class LiveTargets:
    """The running pieces a reload reaches (None: not in this daemon, e.g. no watcher)."""

    limiter: RateLimiter | None = None
    pool: Workforce | None = None  # the worker pool, or the SQS source
    watcher: DirectorySource | None = None
    set_log_levels: Callable[..., None] = set_levels


@dataclass
class ReloadReport:
    applied: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    needs_restart: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    error: str | None = None


def changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every setting that differs."""
    before, after = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return {key: (before.get(key), after.get(key))
            for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, Mapping) and name != "metadata":
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


class Reloader:
    """Owns the settings in force; `request()` from a signal handler, `run()` as a task."""

    def __init__(self, *, path: Path, config: Config, targets: LiveTargets,
                 environ: Mapping[str, str] | None = None,
                 on_result: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.config = config
        self._targets = targets
        self._environ = os.environ if environ is None else environ
        self._on_result = on_result
        self._wanted = asyncio.Event()

    def request(self) -> None:
        self._wanted.set()

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()  # signals during a reload fold into one more
            try:
                await self.reload()
            except Exception:  # a bug here must not end reloading, nor the daemon
                log.exception("configuration reload failed")
                self._report("rejected")

    async def reload(self) -> ReloadReport:
        log.info("SIGHUP: reloading %s", self.path)
        try:
            new = load_config(self.path, environ=self._environ)
        except ConfigError as exc:
            log.error("configuration reload rejected, the settings in force stay: %s", exc)
            self._report("rejected")
            return ReloadReport(error=str(exc))
        report = ReloadReport()
        for key, (before, after) in changes(self.config, new).items():
            live = key in LIVE_KEYS and self._can_apply(key)
            (report.applied if live else report.needs_restart)[key] = (before, after)
        await self._apply(new, report)
        for key, (before, after) in report.needs_restart.items():
            log.warning("configuration reload: %s changed (%r -> %r) but needs a restart to "
                        "take effect; still using %r", key, before, after, before)
        if report.applied:
            log.info("configuration reloaded: %s", ", ".join(
                f"{key} {before!r} -> {after!r}" for key, (before, after) in report.applied.items()))
        elif not report.needs_restart:
            log.info("configuration reloaded: nothing changed")
        self._report("applied")
        return report

    def _can_apply(self, key: str) -> bool:
        section = key.split(".", 1)[0]
        t = self._targets
        return {"rate_limit": t.limiter is not None, "transfer": t.pool is not None,
                "source": t.watcher is not None}.get(section, True)

    async def _apply(self, new: Config, report: ReloadReport) -> None:
        keys = report.applied.keys()
        current, t = self.config.model_copy(deep=True), self._targets
        if any(key.startswith("rate_limit.") for key in keys) and t.limiter is not None:
            t.limiter.set_ceilings(
                max_requests_per_second=new.rate_limit.max_requests_per_second,
                max_bytes_per_second=new.rate_limit.max_bytes_per_second)
            t.limiter.adaptive = new.rate_limit.adaptive
            current.rate_limit = new.rate_limit.model_copy()
        if "transfer.concurrency" in keys and t.pool is not None:
            t.pool.resize(fitting_concurrency(new))
            current.transfer.concurrency = new.transfer.concurrency
        if any(key.startswith("logging.") for key in keys):
            t.set_log_levels(level=new.logging.level, library_level=new.logging.library_level)
            current.logging.level = new.logging.level
            current.logging.library_level = new.logging.library_level
        self.config = current
        if any(key.startswith("source.") for key in keys) and t.watcher is not None:
            current.source.include = list(new.source.include)
            current.source.exclude = list(new.source.exclude)
            t.watcher.walker.filter = FileFilter(current.source)
            await t.watcher.scan(t.watcher.root)  # files the old filter left out

    def _report(self, result: str) -> None:
        if self._on_result is not None:
            self._on_result(result)
