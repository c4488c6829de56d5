"""Small files: one PutObject."""

from __future__ import annotations

import asyncio
import os

from uploader.checksums import request_parameters
from uploader.transfer.context import TransferContext, UploadResult
from uploader.transfer.job import FileJob, ensure_unchanged, open_for_upload, read_range

# Reading below this size in the loop's thread is cheaper than a thread hop.
INLINE_READ_LIMIT = 256 * 1024


async def put_file(ctx: TransferContext, job: FileJob) -> UploadResult:
    body = await _read_whole(job)
    params = {**ctx.object_params(job), **request_parameters(ctx.checksum, body)}
    response = await ctx.call(
        lambda: ctx.client.put_object(Bucket=ctx.bucket, Key=job.key, Body=body, **params),
        key=job.key, nbytes=len(body), what=ctx.describe(job, "PUT"))
    return UploadResult(etag=response["ETag"].strip('"'), size=len(body))


async def _read_whole(job: FileJob) -> bytes:
    if job.size <= INLINE_READ_LIMIT:
        return _read_checked(job)
    return await asyncio.to_thread(_read_checked, job)


def _read_checked(job: FileJob) -> bytes:
    fd = open_for_upload(job)
    try:
        body = read_range(fd, offset=0, length=job.size, path=job.path)
    finally:
        os.close(fd)
    ensure_unchanged(job)
    return body
