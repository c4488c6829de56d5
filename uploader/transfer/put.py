"""Small files: one PutObject, the body read whole (it is below multipart_threshold)."""

from __future__ import annotations

import asyncio
import os
from typing import Awaitable

from uploader.checksum_choice import Checksums
from uploader.s3.datapath import Stored
from uploader.transfer.context import TransferContext, UploadResult
from uploader.transfer.job import (
    FileJob,
    create_only_condition,
    ensure_read_unchanged,
    open_for_upload,
    read_range,
)
from uploader.transfer.pagecache import read_when_cached

# Reading (and checksumming) below this size in the loop's thread is cheaper than a
# thread hop, once the page cache holds the file.
INLINE_READ_LIMIT = 256 * 1024


async def put_file(ctx: TransferContext, job: FileJob) -> UploadResult:
    checksums, teaching = await ctx.checksums.for_put(job.size)
    with ctx.checksums.lesson(teaching):
        async with ctx.memory.hold(job.size):
            body, checksum = await _read_whole(job, checksums)
            params = {**ctx.object_params(job), **create_only_condition(job)}
            what = ctx.describe(job, "PUT")

            def send(sent: dict[str, str]) -> Awaitable[Stored]:
                request = {**params, **sent}  # once, not at every attempt
                return ctx.call(
                    lambda: ctx.data.put_object(bucket=ctx.bucket, key=job.key, body=body,
                                                params=request, what=what),
                    key=job.key, nbytes=len(body), what=what)

            stored, _ = await ctx.checksums.send(checksum, send, teaching=teaching,
                                                 resend=True)
    return UploadResult(etag=stored.etag, size=len(body))


async def _read_whole(job: FileJob, checksums: Checksums) -> tuple[bytes, dict[str, str]]:
    if job.size <= INLINE_READ_LIMIT:
        body = await _read_inline(job)
        if body is not None:
            return body, checksums(body)
    # Open to close in the thread: a cancelled caller must not close the
    # descriptor under a read still running there.
    return await asyncio.to_thread(_read_checked, job, checksums)


async def _read_inline(job: FileJob) -> bytes | None:
    """In the loop's thread, never waiting for the disk; None if it is slow today."""
    fd = open_for_upload(job)
    try:
        body = await read_when_cached(fd, length=job.size, path=job.path)
        if body is not None:
            ensure_read_unchanged(fd, job)
        return body
    finally:
        os.close(fd)


def _read_checked(job: FileJob, checksums: Checksums) -> tuple[bytes, dict[str, str]]:
    fd = open_for_upload(job)
    try:
        body = read_range(fd, offset=0, length=job.size, path=job.path)
        ensure_read_unchanged(fd, job)
    finally:
        os.close(fd)
    return body, checksums(body)
