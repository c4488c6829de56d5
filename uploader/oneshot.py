"""`uploader upload PATH... s3://BUCKET/PREFIX`: the same pipeline, once, then exit."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from uploader.config import Config
from uploader.errors import ConfigError
from uploader.filters import FileFilter
from uploader.journal import Journal
from uploader.pipeline import Outcome, Totals
from uploader.progress import track_progress
from uploader.sources.walk import TreeWalker
from uploader.transfer.job import Signature
from uploader.transfer.multipart import abort_upload
from uploader.wiring import Services, services


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, text: str) -> "S3Url":
        if not text.startswith("s3://") or len(text) <= len("s3://"):
            raise ConfigError(f"{text!r}: the destination must look like s3://BUCKET[/PREFIX]")
        bucket, _, prefix = text[len("s3://"):].partition("/")
        return cls(bucket=bucket, prefix=prefix)


@dataclass
class Summary:
    totals: Totals
    retries: int
    throttles: int
    seconds: float

    @property
    def failed(self) -> int:
        """Failed for good, or still failing transiently when the run ended."""
        return self.totals.counts[Outcome.FAILED] + self.totals.counts[Outcome.DEFERRED]

    def line(self) -> str:
        c = self.totals.counts
        mib = self.totals.bytes_uploaded / 1024**2
        rate = mib / self.seconds if self.seconds > 0 else 0.0
        files_rate = c[Outcome.UPLOADED] / self.seconds if self.seconds > 0 else 0.0
        return (f"uploaded {c[Outcome.UPLOADED]} files ({mib:.1f} MiB, {rate:.1f} MiB/s, "
                f"{files_rate:.1f} files/s) in "
                f"{self.seconds:.1f}s; {c[Outcome.ALREADY_UPLOADED]} already there, "
                f"{self.failed} failed, {c[Outcome.SKIPPED] + c[Outcome.CHANGED]} "
                f"skipped; {self.retries} retries, {self.throttles} throttled")


async def run_oneshot(config: Config, paths: list[Path], *,
                      progress: IO[str] | None = None) -> Summary:
    """`progress`: where to show progress (a bar on a terminal, lines elsewhere), or None."""
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
    started = time.monotonic()
    journal = Journal(":memory:")  # a one-shot run keeps no state between runs
    try:
        async with services(config, journal=journal) as svc, track_progress(
                svc.pipeline, paths=paths, config=config, stream=progress) as tracker:
            svc.pool.start()
            for path in paths:
                await _submit_tree(path, config=config, submit=tracker.submit(svc.pool.submit))
            tracker.listing_done()
            await svc.pool.join()
            await svc.pool.stop(grace_seconds=0)
            await _abort_parked(svc)
            return Summary(totals=svc.pipeline.totals, retries=svc.retry.retries, throttles=svc.retry.throttles,
                           seconds=time.monotonic() - started)
    finally:
        journal.close()


async def _submit_tree(path: Path, *, config: Config, submit) -> None:  # noqa: ANN001
    """A file goes up under its name; a directory's contents under their relative paths."""
    if path.is_file():
        await submit(path, path.name)
        return
    walker = TreeWalker(root=path, file_filter=FileFilter(config.source),
                        follow_symlinks=config.source.follow_symlinks)
    for found in walker.files():
        await submit(found.path, found.relative, Signature.of(found.stat))


async def _abort_parked(svc: Services) -> None:
    """A one-shot run keeps no journal, so uploads parked by transient failures are aborted."""
    for upload in svc.journal.uploads():
        await abort_upload(svc.pipeline.ctx, upload, reason="the one-shot run is over")
