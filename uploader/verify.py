"""Confirming what is in S3: before a source is deleted or moved, and after a crash."""

from __future__ import annotations

import asyncio
import hashlib
import os

from uploader.errors import PermanentError, VerificationError
from uploader.transfer.context import TransferContext, UploadResult
from uploader.transfer.job import FileJob, open_for_upload, read_range
from uploader.transfer.sizing import part_count, part_range, part_size_for


async def head(ctx: TransferContext, job: FileJob) -> dict | None:
    """HeadObject of the job's key, or None if there is no such object."""
    return await head_key(ctx, job.key, what=ctx.describe(job, "HEAD"))


async def head_key(ctx: TransferContext, key: str, *, what: str | None = None) -> dict | None:
    """HeadObject, or None if there is no such object."""
    try:
        return await ctx.retry.call(
            lambda: ctx.client.head_object(Bucket=ctx.bucket, Key=key),
            what=what or f"HEAD s3://{ctx.bucket}/{key}")
    except PermanentError as exc:
        if exc.status == 404:
            return None
        raise


async def confirm_object(ctx: TransferContext, job: FileJob, result: UploadResult) -> None:
    """The object exists with the size and ETag we were given when we wrote it."""
    found = await head(ctx, job)
    if found is None:
        raise VerificationError(f"s3://{ctx.bucket}/{job.key}: not found right after upload; "
                                f"{job.path} is kept")
    size, etag = found["ContentLength"], found["ETag"].strip('"')
    if size != job.size or etag != result.etag:
        raise VerificationError(
            f"s3://{ctx.bucket}/{job.key}: holds {size} bytes with ETag {etag}, expected "
            f"{job.size} bytes with ETag {result.etag}; {job.path} is kept")


async def matching_object_exists(ctx: TransferContext, job: FileJob, *,
                                 part_size: int | None = None) -> UploadResult | None:
    """After a crash mid-upload: is the object already there, whole and identical?

    Compares size, then the ETag S3 derives from MD5s (single PUT: the file's
    MD5; multipart: MD5 of the parts' MD5s, dash, count). Objects whose ETag is
    not an MD5 (SSE-KMS) do not match and are uploaded again, which is safe.
    `part_size`: the part size the interrupted upload used (default: today's).
    """
    _, match = await look_for_object(ctx, job, part_size=part_size)
    return match


async def look_for_object(ctx: TransferContext, job: FileJob, *,
                          part_size: int | None = None) -> tuple[bool, UploadResult | None]:
    """(is there an object under the key at all, the match if it is this file's bytes)."""
    found = await head(ctx, job)
    if found is None:
        return False, None
    if found["ContentLength"] != job.size:
        return True, None
    etag = found["ETag"].strip('"')
    ours = await asyncio.to_thread(local_etag, job, part_size=part_size or ctx.part_size,
                                   multipart=job.size >= ctx.multipart_threshold)
    if etag != ours:
        return True, None
    return True, UploadResult(etag=etag, size=job.size, reused=True)


def local_etag(job: FileJob, *, multipart: bool, part_size: int) -> str:
    fd = open_for_upload(job)
    try:
        if not multipart:
            return hashlib.md5(read_range(fd, offset=0, length=job.size,
                                          path=job.path)).hexdigest()
        size = part_size_for(job.size, part_size)
        digests = []
        for number in range(1, part_count(job.size, size) + 1):
            offset, length = part_range(number, file_size=job.size, part_size=size)
            digests.append(hashlib.md5(read_range(fd, offset=offset, length=length,
                                                  path=job.path)).digest())
        return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
    finally:
        os.close(fd)


def multipart_etag(part_etags: list[str]) -> str:
    """The ETag S3 gives a completed multipart upload: MD5 of the parts' MD5s, dash, count."""
    digests = b"".join(bytes.fromhex(etag.strip('"')) for etag in part_etags)
    return f"{hashlib.md5(digests).hexdigest()}-{len(part_etags)}"


def check_completed_etag(ctx: TransferContext, job: FileJob, *, etag: str,
                         part_etags: list[str]) -> None:
    """The completed object is made of exactly the parts we sent (no extra request needed).

    Only when S3's ETags are MD5s (not with SSE-KMS or SSE-C, whose ETags are opaque).
    """
    if not all(_is_md5(e) for e in part_etags) or "-" not in etag:
        return
    expected = multipart_etag(part_etags)
    if etag != expected:
        raise VerificationError(
            f"s3://{ctx.bucket}/{job.key}: completed with ETag {etag}, but the parts sent "
            f"make {expected}; {job.path} is kept")


def _is_md5(etag: str) -> bool:
    text = etag.strip('"')
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)
