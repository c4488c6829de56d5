"""The janitor: abort abandoned multipart uploads under our prefix.

Parts of a multipart upload that is never completed or aborted are stored,
and billed, forever. Our own uploads are tracked in the journal and resumed,
but a journal that was lost, another tool, or a process killed between
CreateMultipartUpload and the journal's commit can leave orphans. At start and
every `janitor.interval_seconds`, the janitor lists the in-progress uploads
under `s3.prefix` (ListMultipartUploads, every page) and aborts those the
journal does not know that are older than `janitor.abort_after_seconds` (the
age keeps it off uploads another instance or tool is still writing). Uploads
the journal knows are ours to resume, unless their file is gone (deleted
while parked, or while the daemon was down): nothing will ever complete
those, so they are aborted too, whatever their age. With the SQS source a
parked upload resumes only if its message comes back to this instance; one
older than `abort_after_seconds` never will (SQS hides a message for 12 hours
at most), so it is aborted like an unknown one.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from uploader.errors import PermanentError, TransferError
from uploader.journal import UploadRecord
from uploader.transfer.context import TransferContext
from uploader.transfer.multipart import abort_upload

log = logging.getLogger(__name__)
LIST_UPLOADS_PAGE = 1000


@dataclass
class SweepReport:
    listed: int = 0
    aborted: list[str] = field(default_factory=list)  # keys whose upload was aborted
    kept_known: int = 0
    kept_young: int = 0


class Janitor:
    def __init__(self, *, ctx: TransferContext, prefix: str, abort_after_seconds: float,
                 parked_resume_here: bool = True, forget_after_seconds: float | None = None,
                 now: Callable[[], float] = time.time) -> None:
        """`parked_resume_here`: False when parked uploads may be finished elsewhere (SQS).
        `forget_after_seconds`: see `forget_gone_files` (None: never)."""
        self.ctx = ctx
        self.parked_resume_here = parked_resume_here
        self.forget_after_seconds = forget_after_seconds
        self.prefix = prefix
        self.abort_after_seconds = abort_after_seconds
        self._now = now

    async def run(self, *, interval_seconds: float) -> None:
        """Sweep now and then every `interval_seconds`, until cancelled. Never raises."""
        while True:
            try:
                await self.sweep()
            except TransferError as exc:
                log.warning("janitor: could not list multipart uploads: %s", exc)
            await self.forget_gone_files()
            await asyncio.sleep(interval_seconds)

    async def forget_gone_files(self) -> int:
        """The journal forgets files finished long ago that are gone (`Journal.forget_gone`)."""
        if self.forget_after_seconds is None:
            return 0
        forgotten = await self.ctx.journal.forget_gone(
            finished_before=self._now() - self.forget_after_seconds)
        if forgotten:
            log.info("janitor: the journal forgot %d file(s) finished over %.0f days ago and "
                     "gone since", forgotten, self.forget_after_seconds / 86400)
        return forgotten

    async def sweep(self) -> SweepReport:
        report = SweepReport()
        parked = {record.upload_id: record for record in self.ctx.journal.uploads()}
        async for upload in self._in_progress():
            report.listed += 1
            # Asked per upload, not once per sweep: uploads started meanwhile count.
            if self.ctx.journal.knows_upload(upload["UploadId"]):
                if await self._abort_abandoned(parked.get(upload["UploadId"]), upload):
                    report.aborted.append(upload["Key"])
                else:
                    report.kept_known += 1
            elif self._age(upload) < self.abort_after_seconds:
                report.kept_young += 1
            elif await self._abort(upload):
                report.aborted.append(upload["Key"])
        if report.aborted:
            log.info("janitor: aborted %d abandoned multipart upload(s) under %r",
                     len(report.aborted), self.prefix)
        return report

    async def _in_progress(self) -> AsyncIterator[dict[str, Any]]:
        markers: dict[str, str] = {}
        while True:
            page = await self.ctx.retry.call(
                lambda: self.ctx.client.list_multipart_uploads(
                    Bucket=self.ctx.bucket, Prefix=self.prefix, MaxUploads=LIST_UPLOADS_PAGE,
                    **markers),
                what=f"ListMultipartUploads s3://{self.ctx.bucket}/{self.prefix}")
            for upload in page.get("Uploads", []):
                yield upload
            following = _next_markers(page)
            if not page.get("IsTruncated") or not following or following == markers:
                return
            markers = following

    async def _abort_abandoned(self, record: UploadRecord | None,
                               upload: dict[str, Any]) -> bool:
        """Abort a journaled upload nothing will complete; True if it was aborted."""
        if record is None:
            return False  # started since the sweep began
        if not os.path.lexists(record.path):
            reason = "its file is gone (janitor)"
        elif not self.parked_resume_here and self._age(upload) >= self.abort_after_seconds:
            reason = "parked longer than janitor.abort_after_seconds (janitor)"
        else:
            return False
        await abort_upload(self.ctx, record, reason=reason)
        return self.ctx.journal.find_upload(record.path) is None

    def _age(self, upload: dict[str, Any]) -> float:
        initiated = upload.get("Initiated")
        if not isinstance(initiated, datetime.datetime):
            return 0.0  # unknown age: never abort on a guess
        return self._now() - initiated.timestamp()

    async def _abort(self, upload: dict[str, Any]) -> bool:
        key, upload_id = upload["Key"], upload["UploadId"]
        try:
            await self.ctx.call(
                lambda: self.ctx.client.abort_multipart_upload(
                    Bucket=self.ctx.bucket, Key=key, UploadId=upload_id),
                key=key, what=f"AbortMultipartUpload s3://{self.ctx.bucket}/{key}")
        except PermanentError as exc:
            if exc.code == "NoSuchUpload":
                return False  # finished or aborted meanwhile
            log.warning("janitor: could not abort the upload of %s: %s", key, exc)
            return False
        log.info("janitor: aborted abandoned multipart upload of s3://%s/%s (%s)",
                 self.ctx.bucket, key, upload_id, extra={"key": key})
        return True


def _next_markers(page: dict[str, Any]) -> dict[str, str]:
    """Where the next page starts. AWS gives both markers; SeaweedFS lists by UploadId
    and gives only NextUploadIdMarker, which it then honours on its own."""
    markers = {}
    if page.get("NextKeyMarker"):
        markers["KeyMarker"] = page["NextKeyMarker"]
    if page.get("NextUploadIdMarker"):
        markers["UploadIdMarker"] = page["NextUploadIdMarker"]
    return markers
