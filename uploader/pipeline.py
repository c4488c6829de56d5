"""One file's way through the uploader: decide, upload, verify, record, clean up.

`Pipeline.process` never raises for a file's own problems: every outcome is
written to the journal and the log, so one bad file cannot stop the others. Nor
for a journal that cannot be written (a full or read-only state volume): the
file is deferred, since nothing is sent before its journal row is on disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from uploader.bucket_check import BucketCheck
from uploader.errors import (
    InvalidFileName,
    PermanentError,
    SourceChanged,
    SourceError,
    SourceVanished,
    TransferError,
    TransientError,
    VerificationError,
)
from uploader.journal import FAILED, PENDING, SKIPPED, UPLOADED, UPLOADING, FileRecord, Journal
from uploader.keys import KeyNamer, is_unicode
from uploader.log_digest import LogDigest
from uploader.logfilters import bind_log_context, unbind_log_context
from uploader.transfer.context import TransferContext, UploadResult
from uploader.transfer.job import FileJob, Signature, stat_signature
from uploader.transfer.multipart import abort_upload, upload_multipart
from uploader.transfer.put import put_file
from uploader.transfer.sizing import MAX_OBJECT_BYTES
from uploader.verify import confirm_object, head_key, look_for_object, matching_object_exists

log = logging.getLogger(__name__)

#: How long after a restart a request the killed process had sent may still land.
ORPHAN_LANDING_SECONDS = 2.0


class Outcome(enum.Enum):
    UPLOADED = "uploaded"
    ALREADY_UPLOADED = "already uploaded"
    CHANGED = "changed"
    SKIPPED = "skipped"
    DEFERRED = "deferred"  # a transient failure outlasted the retries; try again later
    FAILED = "failed"


@dataclass
class Totals:
    """Counts for the one-shot summary and for tests."""

    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    bytes_uploaded: int = 0
    parts_sent: int = 0
    # Files failed or deferred, by reason: S3's error code or the error's type.
    failures: collections.Counter[str] = field(default_factory=collections.Counter)

    def failed_because(self, exc: BaseException) -> None:
        self.failures[getattr(exc, "code", None) or type(exc).__name__] += 1

    def add(self, outcome: Outcome, result: UploadResult | None = None) -> None:
        self.counts[outcome] += 1
        if result is not None and outcome is Outcome.UPLOADED:
            self.bytes_uploaded += result.size
            self.parts_sent += result.parts_sent


#: Told about every file processed: (path, outcome, result, seconds it took).
OutcomeListener = Callable[[Path, Outcome, "UploadResult | None", float], None]


@dataclass
class AfterUpload:
    action: str  # keep | delete | move
    move_to: Path | None = None


class Pipeline:
    def __init__(self, *, ctx: TransferContext, journal: Journal, keys: KeyNamer,
                 after_upload: AfterUpload, bucket_check: BucketCheck,
                 follow_symlinks: bool = False, shared_work: bool = False,
                 repeats_summary_seconds: float = 0.0, retried_later: bool = True) -> None:
        """`repeats_summary_seconds`: deferrals and journal failures of one reason after
        the first are summed up in a line per this long (`LogDigest`); 0: each logged.
        `retried_later`: a deferred file comes back (a daemon); False: it is a failure
        of the run, and logged as one (a one-shot run)."""
        self.ctx = ctx
        # Another instance may already have done this file's work (a fleet draining
        # one queue, a duplicate message): look in S3 before sending, verify after.
        self.shared_work = shared_work
        self.journal = journal
        self.keys = keys
        self.after_upload = after_upload
        self.follow_symlinks = follow_symlinks
        self.bucket_check = bucket_check
        self.totals = Totals()
        self.started_at = time.time()
        self._started = time.monotonic()
        self.listeners: list[OutcomeListener] = []  # metrics, progress
        self.repeats = LogDigest(log, interval=repeats_summary_seconds)
        self.retried_later = retried_later

    def partition_of(self, relative: str) -> str:
        """The rate-limiter partition the file at `relative` is uploaded to."""
        if not is_unicode(relative):
            return ""  # no key can be named for it; `process` fails it, saying why
        return self.ctx.partition_of(self.keys.key(relative))

    def _admitted(self, partition: str) -> contextlib.AbstractContextManager[None]:
        """Counted as queued on `partition` until its first request (`RateLimiter.admit`)."""
        limiter = self.ctx.retry.limiter
        return contextlib.nullcontext() if limiter is None else limiter.admit(partition)

    def partition_has_room(self, partition: str) -> bool:
        """Whether a file for `partition` may start now without a worker idling on a
        throttled partition's queue (`RateLimiter.has_room`)."""
        limiter = self.ctx.retry.limiter
        return limiter is None or limiter.has_room(partition)

    async def process(self, path: Path, relative: str,
                      metadata: dict[str, str] | None = None, *,
                      signature: Signature | None = None) -> Outcome:
        """Upload `path` under the key named for `relative` (its path below the watched root).

        `metadata`: extra user metadata for this object (e.g. from a queue message).
        `signature`: the file's stat as the caller just saw it (else it is stat'ed
        here); the upload proves the file still matches it when it opens the file.
        """
        started = time.monotonic()
        if is_unicode(str(path), relative):
            key = self.keys.key(relative)
            context = bind_log_context(file=str(path), key=key)
            try:
                with self._admitted(self.ctx.partition_of(key)):
                    outcome, result = await self._process(path, relative, key, metadata or {},
                                                          signature)
            except sqlite3.Error as exc:
                outcome, result = self._journal_failed(path, key, exc), None
            finally:
                unbind_log_context(context)
        else:
            outcome, result = self._unnamable(path), None
        self.totals.add(outcome, result)
        for listener in self.listeners:
            listener(path, outcome, result, time.monotonic() - started)
        return outcome

    def _deferred(self, exc: TransientError, *, path: Path, key: str) -> Outcome:
        """Throttling, an outage, a flaky network or filesystem: nothing is wrong with the
        file. It stays pending and goes back in line later (in a daemon)."""
        level, said = ((logging.WARNING, "upload deferred") if self.retried_later
                       else (logging.ERROR, "upload failed (no retry later in a one-shot run)"))
        self.repeats.log(level, f"deferred:{exc.code}", "%s: %s", said, exc,
                         extra={"file": str(path), "key": key, "error_code": exc.code})
        self.totals.failed_because(exc)
        return Outcome.DEFERRED

    def _journal_failed(self, path: Path, key: str, exc: sqlite3.Error) -> Outcome:
        """Deferred: no request goes out before the file's row is on disk, and an
        upload finished but not recorded is found in S3 next time (look-first)."""
        self.repeats.log(logging.ERROR, "journal", "the journal cannot be written (%s); %s is "
                         "tried again later", exc, path, extra={"file": str(path), "key": key})
        self.totals.failures["journal"] += 1
        return Outcome.DEFERRED

    async def _process(self, path: Path, relative: str, key: str, metadata: dict[str, str],
                       signature: Signature | None) -> tuple[Outcome, UploadResult | None]:
        try:
            if signature is None:
                signature = stat_signature(path, follow_symlinks=self.follow_symlinks)
        except SourceVanished as exc:
            return await self._vanished(path, key, reason=str(exc)), None
        except TransientError as exc:  # its filesystem failed, for now (the row stays as is)
            return self._deferred(exc, path=path, key=key), None
        except SourceError as exc:
            self.totals.failed_because(exc)
            self._record(path, key, size=0, mtime_ns=0, status=FAILED, error=str(exc))
            log.error("%s", exc, extra={"file": str(path), "key": key})
            return Outcome.FAILED, None
        job = FileJob(path=path, relative=relative, key=key, signature=signature,
                      metadata={**metadata, **self.keys.metadata(relative)})
        previous = self.journal.lookup(str(path))
        if _already_done(previous, job.key, job.signature):
            return Outcome.ALREADY_UPLOADED, None
        if self._failed_this_run(previous, job):
            return Outcome.FAILED, None
        return await self._upload(job, previous)

    def known_uploaded(self, path: Path, relative: str, signature: Signature) -> bool:
        """Whether `process` would answer ALREADY_UPLOADED from the journal alone: a
        rescan passes over such files (one lookup, not a trip through the workers,
        nor a count in the totals for every file at every rescan)."""
        if not is_unicode(str(path), relative):
            return False
        try:
            previous = self.journal.lookup(str(path))
        except sqlite3.Error:
            return False  # `process` says what is wrong with the journal
        return _already_done(previous, self.keys.key(relative), signature)

    async def _let_orphans_land(self) -> None:
        """A PUT the previous process had sent whole when it died still reaches S3, and
        on a loaded server may land after a look made at once (then the file would go
        up twice): files found interrupted are looked for ORPHAN_LANDING_SECONDS after
        the start at the earliest."""
        wait = self._started + ORPHAN_LANDING_SECONDS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    def _failed_this_run(self, previous: FileRecord | None, job: FileJob) -> bool:
        """A file that failed since this process started is not retried until it changes:
        its bytes (size, mtime), or what it is (a chmod or chown moves the ctime: a file
        refused for its permissions goes up once they are fixed)."""
        return (previous is not None and previous.status == FAILED
                and previous.updated_at >= self.started_at and previous.size == job.size
                and previous.mtime_ns == job.signature.mtime_ns
                and previous.same_identity(job.signature.inode, job.signature.ctime_ns))

    async def _upload(self, job: FileJob,
                      previous: FileRecord | None) -> tuple[Outcome, UploadResult | None]:
        extra = {"file": str(job.path), "key": job.key}
        try:
            result = await self._transfer(job, previous)
            if self.after_upload.action != "keep" or self.shared_work:
                await confirm_object(self.ctx, job, result)
        except SourceChanged as exc:
            log.info("%s", exc, extra=extra)
            self._record_job(job, PENDING, error=str(exc))
            return Outcome.CHANGED, None
        except SourceVanished as exc:
            return await self._vanished(job.path, job.key, reason=str(exc)), None
        except TransientError as exc:
            self._record_job(job, PENDING, error=str(exc))
            return self._deferred(exc, path=job.path, key=job.key), None
        except (TransferError, SourceError, VerificationError) as exc:
            log.error("upload failed: %s", exc,
                      extra={**extra, "error_code": getattr(exc, "code", None)})
            self._record_job(job, FAILED, error=str(exc))
            self.totals.failed_because(exc)
            return Outcome.FAILED, None
        self._record_job(job, UPLOADED, etag=result.etag)
        log.info("uploaded %s to s3://%s/%s (%d bytes)", job.path, self.ctx.bucket, job.key,
                 job.size, extra={**extra, "size": job.size})
        self._apply_after_upload(job)
        if result.reused:
            return Outcome.ALREADY_UPLOADED, None
        return Outcome.UPLOADED, result

    async def _transfer(self, job: FileJob, previous: FileRecord | None) -> UploadResult:
        if job.size > MAX_OBJECT_BYTES:
            # Refused now, not after 5 TiB of parts by CompleteMultipartUpload.
            raise PermanentError(f"{job.path}: {job.size} bytes is more than S3's largest "
                                 "object (5 TiB); not sent", code="EntityTooLarge")
        await self.bucket_check.ensure_exists()
        # A previous run (or another instance) may have finished the upload without this
        # journal knowing. Another instance may have, even while our upload was parked.
        # Or the journal has it uploaded, but another file, or one rewritten in place,
        # now holds the path with that size and mtime: S3 is compared with its bytes.
        interrupted = (_was_interrupted(previous, job)
                       and self.journal.find_upload(str(job.path)) is None)
        if self.shared_work or _uploaded_with(previous, job.key, job.signature) or interrupted:
            if interrupted:
                await self._let_orphans_land()
            exists, existing = await look_for_object(self.ctx, job)
            if not exists and self.shared_work:
                job = dataclasses.replace(job, create_only=True)  # lose a race, never win twice
            if existing is not None:
                log.info("%s is already in S3 (an earlier run or another instance); "
                         "not sending it again",
                         job.path, extra={"file": str(job.path), "key": job.key})
                await self._abort_parked(job.path, reason="the object is in S3 already")
                return existing
        self._record_job(job, UPLOADING)
        # On disk before anything is sent: after a crash, `uploading` is what
        # makes the restart look in S3 before sending the file again.
        await self.journal.durable()
        try:
            if job.size >= self.ctx.multipart_threshold:
                return await upload_multipart(self.ctx, job)
            if previous is not None and previous.status != UPLOADED:
                # Parked as multipart when the file was larger (or the threshold lower).
                await self._abort_parked(job.path, reason="the file now goes up in one PUT")
            return await put_file(self.ctx, job)
        except PermanentError as exc:
            if not (job.create_only and exc.code == "PreconditionFailed"):
                raise
            return await self._lost_the_race(job)

    async def _lost_the_race(self, job: FileJob) -> UploadResult:
        """Another instance created the key between our HEAD and our write."""
        existing = await matching_object_exists(self.ctx, job)
        if existing is not None:
            log.info("%s was published by another instance meanwhile; not sending it again",
                     job.path, extra={"file": str(job.path), "key": job.key})
            return existing
        raise TransientError(f"s3://{self.ctx.bucket}/{job.key}: another writer created it "
                             f"meanwhile with other bytes than {job.path}; trying again later",
                             code="PreconditionFailed", status=412)

    async def _vanished(self, path: Path, key: str, *, reason: str) -> Outcome:
        """The file is gone. Done already if it went up before and was then deleted or
        moved (a late event, a redelivered message); otherwise skipped, and a multipart
        upload parked for it is aborted: nothing could ever complete it."""
        previous = self.journal.lookup(str(path))
        if previous is not None and previous.status == UPLOADED and previous.key == key:
            log.info("%s is gone; it was uploaded before", path,
                     extra={"file": str(path), "key": key})
            return Outcome.ALREADY_UPLOADED
        if await self._removed_by_another_instance(key):
            log.info("%s is gone and s3://%s/%s exists: another instance uploaded it, then "
                     "applied after_upload: %s", path, self.ctx.bucket, key,
                     self.after_upload.action, extra={"file": str(path), "key": key})
            return Outcome.ALREADY_UPLOADED
        await self._abort_parked(path, reason=f"{path} is gone")
        self._record_skip(path, key, reason=reason)
        return Outcome.SKIPPED

    async def _removed_by_another_instance(self, key: str) -> bool:
        """A fleet sharing a queue, files deleted or moved after upload: an instance with
        a duplicate message finds the file gone, and only S3 knows it went up."""
        if not self.shared_work or self.after_upload.action == "keep":
            return False
        try:
            return await head_key(self.ctx, key) is not None
        except TransferError:
            return False  # cannot tell: skipped, as without the question

    async def _abort_parked(self, path: Path, *, reason: str) -> None:
        parked = self.journal.find_upload(str(path))
        if parked is not None:
            await abort_upload(self.ctx, parked, reason=reason)

    def _unnamable(self, path: Path) -> Outcome:
        """A file name that is not UTF-8: S3 keys and the journal hold UTF-8 text only."""
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        error = InvalidFileName(f"{shown}: the file name is not valid UTF-8, so it cannot "
                                "name an S3 object (rename the file)")
        log.error("%s", error)
        self.totals.failed_because(error)
        return Outcome.FAILED

    def _apply_after_upload(self, job: FileJob) -> None:
        action = self.after_upload.action
        try:
            if action == "delete":
                job.path.unlink()
            elif action == "move" and self.after_upload.move_to is not None:
                target = _inside(self.after_upload.move_to, job.relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(job.path, target)
        except OSError as exc:
            log.error("uploaded %s but could not %s it: %s", job.path, action, exc.strerror or exc,
                      extra={"file": str(job.path), "key": job.key})

    def _record_job(self, job: FileJob, status: str, *, etag: str | None = None,
                    error: str | None = None) -> None:
        signature = job.signature
        self.journal.set_state(str(job.path), size=job.size, mtime_ns=signature.mtime_ns,
                               key=job.key, status=status, etag=etag, error=error,
                               inode=signature.inode, ctime_ns=signature.ctime_ns)

    def _record(self, path: Path, key: str, *, size: int, mtime_ns: int, status: str,
                etag: str | None = None, error: str | None = None) -> None:
        self.journal.set_state(str(path), size=size, mtime_ns=mtime_ns, key=key, status=status,
                               etag=etag, error=error)

    def _record_skip(self, path: Path, key: str, *, reason: str) -> None:
        log.warning("skipped: %s", reason, extra={"file": str(path), "key": key})
        previous = self.journal.lookup(str(path))
        if previous is not None and previous.status == UPLOADED:
            return  # e.g. moved away after upload, then an old event arrived
        self._record(path, key, size=0, mtime_ns=0, status=SKIPPED, error=reason)


def _inside(folder: Path, relative: str) -> Path:
    """`folder / relative`, refusing a name that would leave `folder` (`..`, a leading `/`)."""
    target = Path(os.path.normpath(folder / relative.lstrip("/")))
    if not target.is_relative_to(folder):
        raise OSError(f"{relative!r} would be moved outside {folder}")
    return target


def _uploaded_with(previous: FileRecord | None, key: str, signature: Signature) -> bool:
    """Journaled as uploaded under this key with this size and mtime."""
    return (previous is not None and previous.status == UPLOADED and previous.key == key
            and previous.size == signature.size and previous.mtime_ns == signature.mtime_ns)


def _already_done(previous: FileRecord | None, key: str, signature: Signature) -> bool:
    """Uploaded before under this key, and the same file since."""
    return (previous is not None and _uploaded_with(previous, key, signature)
            and previous.same_identity(signature.inode, signature.ctime_ns))


def _was_interrupted(previous: FileRecord | None, job: FileJob) -> bool:
    return (previous is not None and previous.status == UPLOADING
            and previous.size == job.size and previous.mtime_ns == job.signature.mtime_ns)

