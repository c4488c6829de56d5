"""`uploader upload PATH... s3://BUCKET/PREFIX`: the same pipeline, once, then exit.

Where objects go, as with `aws s3 cp` and s5cmd: a folder's files below PREFIX
taken as a folder (`s3://b/backup` and `s3://b/backup/` both give
`backup/a.txt`); a file given alone goes to PREFIX exactly unless PREFIX is
empty or ends in `/` (then under its own name); files among several sources
go under their own names.
"""

from __future__ import annotations

import logging
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from uploader.config import Config, check_bucket_name
from uploader.errors import ConfigError
from uploader.filters import FileFilter
from uploader.journal import Journal
from uploader.pipeline import Outcome, Totals
from uploader.progress import track_progress
from uploader.sources.walk import TreeWalker
from uploader.transfer.job import Signature
from uploader.transfer.multipart import abort_upload
from uploader.wiring import Services, services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, text: str) -> "S3Url":
        if not text.startswith("s3://") or len(text) <= len("s3://"):
            raise ConfigError(f"{text!r}: the destination must look like s3://BUCKET[/PREFIX]")
        bucket, _, prefix = text[len("s3://"):].partition("/")
        try:
            check_bucket_name(bucket)
        except ValueError as exc:
            raise ConfigError(f"{text!r}: {exc}") from None
        return cls(bucket=bucket, prefix=prefix)

    def target(self, paths: list[Path]) -> tuple[str, str | None]:
        """(s3.prefix, the object name of a file given alone, or None) for `paths`."""
        if not self.prefix or self.prefix.endswith("/"):
            return self.prefix, None
        if len(paths) == 1 and paths[0].is_file():
            folder, slash, name = self.prefix.rpartition("/")
            return folder + slash, name
        return self.prefix + "/", None


def source_paths(texts: list[str]) -> list[Path]:
    """The PATH arguments, each an existing regular file or folder. Raises ConfigError."""
    paths = []
    for text in texts:
        if not text:
            raise ConfigError("an empty PATH argument; give a file or a folder ('.' for the "
                              "current folder)")
        paths.append(Path(text))
        _check_source(paths[-1])
    return paths


def _check_source(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ConfigError(f"{path}: not a regular file or a folder ({_kind(mode)}); only "
                          "files and folders can be uploaded")


def _kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a named pipe", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


@dataclass
class Summary:
    totals: Totals
    retries: int
    throttles: int
    seconds: float
    unlisted: int = 0  # folders that could not be listed: their files were not even tried

    @property
    def failed(self) -> int:
        """Failed for good, or still failing transiently when the run ended."""
        return self.totals.counts[Outcome.FAILED] + self.totals.counts[Outcome.DEFERRED]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unlisted

    def line(self) -> str:
        c = self.totals.counts
        mib = self.totals.bytes_uploaded / 1024**2
        rate = mib / self.seconds if self.seconds > 0 else 0.0
        files_rate = c[Outcome.UPLOADED] / self.seconds if self.seconds > 0 else 0.0
        return (f"uploaded {c[Outcome.UPLOADED]} files ({mib:.1f} MiB, {rate:.1f} MiB/s, "
                f"{files_rate:.1f} files/s) in "
                f"{self.seconds:.1f}s; {c[Outcome.ALREADY_UPLOADED]} already there, "
                f"{self.failed} failed, {c[Outcome.SKIPPED] + c[Outcome.CHANGED]} "
                f"skipped; {self.retries} retries, {self.throttles} throttled"
                + (f"; {self.unlisted} folder(s) could not be listed" if self.unlisted else ""))


async def run_oneshot(config: Config, paths: list[Path], *,
                      progress: IO[str] | None = None, file_name: str | None = None) -> Summary:
    """`progress`: where to show progress (a bar on a terminal, lines elsewhere), or None.
    `file_name`: the object name below `s3.prefix` of a file given alone (`S3Url.target`);
    None: every file under its own name."""
    for path in paths:
        _check_source(path)
    started = time.monotonic()
    unlisted: list[Path] = []
    journal = Journal(":memory:")  # a one-shot run keeps no state between runs
    try:
        async with services(config, journal=journal, retry_later=False) as svc, track_progress(
                svc.pipeline, paths=paths, config=config, stream=progress) as tracker:
            svc.pool.start()
            for path in paths:
                await _submit_tree(path, config=config, submit=tracker.submit(svc.pool.submit),
                                   file_name=file_name, unlisted=unlisted)
            tracker.listing_done()
            await svc.pool.join()
            await svc.pool.stop(grace_seconds=0)
            await _abort_parked(svc)
            return Summary(totals=svc.pipeline.totals, retries=svc.retry.retries, throttles=svc.retry.throttles,
                           seconds=time.monotonic() - started, unlisted=len(unlisted))
    finally:
        journal.close()


async def _submit_tree(path: Path, *, config: Config, submit,  # noqa: ANN001
                       file_name: str | None, unlisted: list[Path]) -> None:
    """A file goes up under `file_name` or its own; a directory's contents under their
    relative paths. Folders that cannot be listed are logged and added to `unlisted`."""
    if path.is_file():
        await submit(path, file_name or path.name)
        return

    def cannot_list(folder: Path, exc: OSError) -> None:
        # No rescan will come: the run has failed for this folder's files.
        log.error("cannot list %s: %s; its files are not uploaded", folder, exc.strerror or exc)
        unlisted.append(folder)

    walker = TreeWalker(root=path, file_filter=FileFilter(config.source),
                        follow_symlinks=config.source.follow_symlinks, on_error=cannot_list)
    for found in walker.files():
        await submit(found.path, found.relative, Signature.of(found.stat))


async def _abort_parked(svc: Services) -> None:
    """A one-shot run keeps no journal, so uploads parked by transient failures are aborted."""
    for upload in svc.journal.uploads():
        await abort_upload(svc.pipeline.ctx, upload, reason="the one-shot run is over")
