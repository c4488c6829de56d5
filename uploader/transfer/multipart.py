"""Large files: a multipart upload, resumable part by part.

The UploadId is journaled the moment it exists, and each part's ETag and
checksum are journaled as the part completes, before it counts as done. So a
killed process resumes where it stopped (ListParts reconciles the journal with
the server); a cancelled one (shutdown), or one whose retries ran out on
transient errors, parks its upload for the next attempt. An upload that fails
for good, or whose file changed, is aborted; so is a parked one whose file was
replaced since, even with its size and mtime kept (the inode and ctime are
journaled with the UploadId).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
import os
import time
from typing import Any, Awaitable, Iterator

from uploader.checksum_choice import Checksums
from uploader.checksums import ALGORITHM, PARAMETER
from uploader.errors import (
    ChecksumRefused,
    PermanentError,
    SourceChanged,
    SourceVanished,
    TransferError,
    TransientError,
    UploaderError,
)
from uploader.journal import PartRecord, UploadRecord
from uploader.s3.datapath import Stored
from uploader.transfer.context import TransferContext, UploadResult
from uploader.transfer.job import (
    FileJob,
    Signature,
    create_only_condition,
    ensure_unchanged,
    open_for_upload,
    read_into,
    read_range,
    unreadable,
)
from uploader.transfer.sizing import part_count, part_range, part_size_for
from uploader.verify import check_completed_etag, matching_object_exists

log = logging.getLogger(__name__)
LIST_PARTS_PAGE = 1000
VERIFY_CHUNK = 1024 * 1024  # reading a part again to check it: bounded memory


async def upload_multipart(ctx: TransferContext, job: FileJob) -> UploadResult:
    part_size = part_size_for(job.size, ctx.part_size)
    total = part_count(job.size, part_size)
    upload, resumed = await _resume_or_create(ctx, job, part_size=part_size, total=total)
    try:
        # A resumed upload is always asked about (one ListParts per resume), even
        # with no part journaled: after a crash right after CreateMultipartUpload
        # the server may have dropped it (expired, aborted), and UploadPart's
        # NoSuchUpload would fail the file for good. One just created exists
        # and has no parts: nothing to ask.
        done = await _parts_already_stored(ctx, job, upload) if resumed else {}
        if done is None:
            # The server no longer knows this upload: it was completed just
            # before a crash (then the object is there), or aborted / expired.
            ctx.journal.drop_upload(str(job.path))
            finished = await matching_object_exists(ctx, job, part_size=upload.part_size)
            if finished is not None:
                return finished
            upload = await _create(ctx, job, part_size=part_size, total=total)
            done = {}
        missing = [n for n in range(1, total + 1) if n not in done]
        try:
            await _send_parts(ctx, job, upload, missing)
        except ChecksumRefused as refusal:
            # It declared crc32c, unasked, to a server that refuses the header: an upload
            # declared without it takes every part (`uploader.checksum_choice`).
            await abort_upload(ctx, upload, reason=refusal)
            upload = await _create(ctx, job, part_size=part_size, total=total)
            missing = list(range(1, total + 1))
            await _send_parts(ctx, job, upload, missing)
        ensure_unchanged(job)
        etag = await _complete(ctx, job, upload)
    except asyncio.CancelledError:
        log.info("parked multipart upload of %s for the next start", job.path,
                 extra={"file": str(job.path), "key": job.key})
        raise
    except TransientError:
        # Throttling or an outage outlasted the retries: the parts stored so
        # far stay, and the next attempt at this file resumes from them.
        log.info("parked multipart upload of %s until the file is retried", job.path,
                 extra={"file": str(job.path), "key": job.key})
        raise
    except (UploaderError, OSError) as exc:
        await abort_upload(ctx, upload, reason=exc)
        raise
    ctx.journal.drop_upload(str(job.path))
    return UploadResult(etag=etag, size=job.size, parts=total, parts_sent=len(missing))


async def _resume_or_create(ctx: TransferContext, job: FileJob, *, part_size: int,
                            total: int) -> tuple[UploadRecord, bool]:
    """The journaled upload of this file if it can go on, else a new one; True if resumed."""
    previous = ctx.journal.find_upload(str(job.path))
    if previous is not None:
        same_settings = ((previous.key, previous.size, previous.mtime_ns, previous.part_size)
                         == (job.key, job.size, job.signature.mtime_ns, part_size)
                         and ctx.checksums.can_resume(previous.checksum))
        if same_settings and await _same_file(ctx, job, previous):
            log.info("resuming multipart upload of %s", job.path,
                     extra={"file": str(job.path), "key": job.key})
            return previous, True
        await abort_upload(ctx, previous, reason="the file or settings changed since")
    return await _create(ctx, job, part_size=part_size, total=total), False


async def _same_file(ctx: TransferContext, job: FileJob, upload: UploadRecord) -> bool:
    """Were the parts sent so far read from the bytes the file holds now?

    Equal size and mtime prove nothing: cp -p, rsync -t and tar -x put other
    bytes under the path with both kept, and a resume would publish old parts
    and new ones as one object (its ETag check passes). The inode changes when
    another file takes the path; the ctime changes on every write, rename or
    link, even into the same inode, and cannot be set back.
    """
    if upload.ctime_ns is None:
        # Journaled by a version that did not record the file: unknown, so
        # not trusted as such. The journaled parts are read again instead
        # (once per upload parked over an upgrade): if each one's MD5 is its
        # ETag, the file still holds the bytes they were sent from.
        parts = ctx.journal.parts(upload.upload_id)
        return await asyncio.to_thread(_parts_hold_file_bytes, job, upload, parts)
    st = _stat(job)
    return (upload.inode, upload.ctime_ns) == (st.st_ino, st.st_ctime_ns)


def _parts_hold_file_bytes(job: FileJob, upload: UploadRecord,
                           parts: dict[int, PartRecord]) -> bool:
    """In a worker thread: does each part's ETag match the MD5 of its range of the file?

    An ETag that is not an MD5 (SSE-KMS) never matches: the upload starts anew.
    """
    fd = open_for_upload(job)
    try:
        for number, part in parts.items():
            offset, length = part_range(number, file_size=upload.size,
                                        part_size=upload.part_size)
            if length != part.size:
                return False
            if _md5(fd, job, offset=offset, length=length) != part.etag.lower():
                return False
        return True
    finally:
        os.close(fd)


def _md5(fd: int, job: FileJob, *, offset: int, length: int) -> str:
    digest = hashlib.md5()
    end = offset + length
    for start in range(offset, end, VERIFY_CHUNK):
        size = min(VERIFY_CHUNK, end - start)
        digest.update(read_range(fd, offset=start, length=size, path=job.path))
    return digest.hexdigest()


def _stat(job: FileJob) -> os.stat_result:
    """The file's stat, which must still match the signature the job settled with."""
    try:
        st = os.stat(job.path)
    except FileNotFoundError:
        raise SourceVanished(f"{job.path}: the file vanished before it could be uploaded") from None
    except OSError as exc:
        raise unreadable(job.path, "cannot stat", exc) from None
    if Signature.of(st) != job.signature:
        raise SourceChanged(f"{job.path}: the file changed since it settled")
    return st


async def _create(ctx: TransferContext, job: FileJob, *, part_size: int,
                  total: int) -> UploadRecord:
    st = _stat(job)  # before any part is read: a later change moves its ctime
    algorithm = ctx.checksums.for_new_upload()  # this upload's, for all its parts
    try:
        upload_id = await _create_upload(ctx, job, algorithm)
    except PermanentError as exc:
        if not ctx.checksums.declaration_refused(exc, algorithm):
            raise
        algorithm = ctx.checksums.algorithm  # a server without the flexible checksums
        upload_id = await _create_upload(ctx, job, algorithm)
    record = UploadRecord(path=str(job.path), key=job.key, upload_id=upload_id,
                          size=job.size, mtime_ns=job.signature.mtime_ns, part_size=part_size,
                          parts=total, checksum=algorithm, created_at=time.time(),
                          inode=st.st_ino, ctime_ns=st.st_ctime_ns)
    ctx.journal.start_upload(record)
    await ctx.journal.durable()  # resumable from here on
    return record


async def _create_upload(ctx: TransferContext, job: FileJob, algorithm: str) -> str:
    """A new upload's ID, declaring `algorithm` if it is a flexible checksum."""
    params = ctx.object_params(job)
    if algorithm in ALGORITHM:
        params["ChecksumAlgorithm"] = ALGORITHM[algorithm]
    response = await ctx.call(
        lambda: ctx.client.create_multipart_upload(Bucket=ctx.bucket, Key=job.key, **params),
        key=job.key, what=ctx.describe(job, "CreateMultipartUpload"))
    return str(response["UploadId"])


async def _parts_already_stored(ctx: TransferContext, job: FileJob,
                                upload: UploadRecord) -> dict[int, PartRecord] | None:
    """Parts both journaled and on the server; None if the server has no such upload."""
    journaled = ctx.journal.parts(upload.upload_id)
    try:
        listed = await list_all_parts(ctx, key=upload.key, upload_id=upload.upload_id,
                                      what=ctx.describe(job, "ListParts"))
    except PermanentError as exc:
        if exc.code == "NoSuchUpload":
            return None
        raise
    return {n: part for n, part in journaled.items()
            if n in listed and listed[n]["ETag"].strip('"') == part.etag
            and listed[n]["Size"] == part.size}


async def list_all_parts(ctx: TransferContext, *, key: str, upload_id: str,
                         what: str) -> dict[int, dict[str, Any]]:
    """Every part of an upload, following ListParts' pages (1,000 parts each)."""
    parts: dict[int, dict[str, Any]] = {}
    marker = 0
    while True:
        page = await ctx.retry.call(
            lambda: ctx.client.list_parts(Bucket=ctx.bucket, Key=key, UploadId=upload_id,
                                          MaxParts=LIST_PARTS_PAGE, PartNumberMarker=marker),
            what=what)
        for part in page.get("Parts", []):
            parts[part["PartNumber"]] = part
        if not page.get("IsTruncated"):
            return parts
        marker = int(page["NextPartNumberMarker"])


async def _send_parts(ctx: TransferContext, job: FileJob, upload: UploadRecord,
                      missing: list[int]) -> None:
    fd = open_for_upload(job)
    try:
        queue = iter(missing)
        width = min(ctx.parts_per_file, len(missing))
        async with asyncio.TaskGroup() as group:
            for _ in range(width):
                group.create_task(_part_sender(ctx, job, upload, fd, queue))
    except BaseExceptionGroup as group_error:
        raise _first_cause(group_error) from None
    finally:
        os.close(fd)


def _first_cause(group_error: BaseExceptionGroup) -> BaseException:
    """The error a person needs: a cancellation if any, else the first failure."""
    leaves = list(_leaves(group_error))
    for exc in leaves:
        if isinstance(exc, asyncio.CancelledError):
            return exc
    return leaves[0]


def _leaves(group_error: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group_error.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _part_sender(ctx: TransferContext, job: FileJob, upload: UploadRecord, fd: int,
                       queue: Iterator[int]) -> None:
    for number in queue:
        async with ctx.part_slots:
            part = await _send_part(ctx, job, upload, fd, number)
        ctx.journal.record_part(upload.upload_id, part)
        await ctx.journal.durable()  # only a committed part counts as done


async def _send_part(ctx: TransferContext, job: FileJob, upload: UploadRecord, fd: int,
                     number: int) -> PartRecord:
    """Read one part into a buffer (within the memory budget), send it, reuse the buffer."""
    offset, length = part_range(number, file_size=upload.size, part_size=upload.part_size)
    what = ctx.describe(job, f"UploadPart {number}/{upload.parts}")
    checksums, teaching = await ctx.checksums.for_body(length, declared=upload.checksum)
    with ctx.checksums.lesson(teaching):
        async with ctx.memory.hold(length):
            buffer = ctx.memory.buffer(length)
            try:
                checksum = await asyncio.to_thread(_read_part, fd, buffer, offset=offset,
                                                   job=job, checksums=checksums)
                body = memoryview(buffer)

                def send(sent: dict[str, str]) -> Awaitable[Stored]:
                    return ctx.call(
                        lambda: ctx.data.upload_part(
                            bucket=ctx.bucket, key=upload.key, upload_id=upload.upload_id,
                            part_number=number, body=body, params=sent, what=what),
                        key=upload.key, nbytes=length, what=what)

                stored, sent = await ctx.checksums.send(checksum, send, teaching=teaching,
                                                        resend=False)
            except BaseException:
                ctx.memory.discard(buffer)  # a failed request may still hold it
                raise
            ctx.memory.recycle(buffer)  # answered: every byte was sent
    declared = PARAMETER.get(upload.checksum)  # the one its completion lists
    return PartRecord(part_number=number, size=length, etag=stored.etag,
                      checksum=sent.get(declared) if declared else None)


def _read_part(fd: int, buffer: mmap.mmap, *, offset: int, job: FileJob,
               checksums: Checksums) -> dict[str, str]:
    """In a worker thread: the read and the checksums (hashlib releases the GIL)."""
    read_into(fd, buffer, offset=offset, path=job.path)
    return checksums(buffer)


async def _complete(ctx: TransferContext, job: FileJob, upload: UploadRecord) -> str:
    parts = ctx.journal.parts(upload.upload_id)
    listing = [_completed_part(upload.checksum, parts[n]) for n in sorted(parts)]
    try:
        response = await ctx.call(
            lambda: ctx.client.complete_multipart_upload(
                Bucket=ctx.bucket, Key=upload.key, UploadId=upload.upload_id,
                MultipartUpload={"Parts": listing}, **create_only_condition(job)),
            key=upload.key, what=ctx.describe(job, "CompleteMultipartUpload"))
    except PermanentError as exc:
        if exc.code != "NoSuchUpload":
            raise
        # A retry after an answer that was lost (a timeout, a reset): the first
        # attempt completed the upload, so the server no longer knows it. The object
        # tells whether that is so.
        finished = await matching_object_exists(ctx, job, part_size=upload.part_size)
        if finished is None:
            raise
        return finished.etag
    etag = str(response["ETag"]).strip('"')
    check_completed_etag(ctx, job, etag=etag, part_etags=[parts[n].etag for n in sorted(parts)])
    return etag


def _completed_part(algorithm: str, part: PartRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {"PartNumber": part.part_number, "ETag": f'"{part.etag}"'}
    if algorithm in ALGORITHM and part.checksum:
        entry[PARAMETER[algorithm]] = part.checksum
    return entry


async def abort_upload(ctx: TransferContext, upload: UploadRecord, *, reason: object) -> None:
    """Abort under shield: a cancelled caller must not leave orphaned parts behind."""
    log.warning("aborting multipart upload of %s: %s", upload.path, reason,
                extra={"file": upload.path, "key": upload.key})

    async def abort() -> None:
        try:
            await ctx.call(
                lambda: ctx.client.abort_multipart_upload(
                    Bucket=ctx.bucket, Key=upload.key, UploadId=upload.upload_id),
                key=upload.key,
                what=f"AbortMultipartUpload s3://{ctx.bucket}/{upload.key} ({upload.path})")
        except PermanentError as exc:
            if exc.code != "NoSuchUpload":
                log.warning("abort failed: %s", exc)
        except TransferError as exc:
            log.warning("abort failed (the janitor will retry): %s", exc)
            return
        ctx.journal.drop_upload(upload.path)

    await asyncio.shield(abort())

