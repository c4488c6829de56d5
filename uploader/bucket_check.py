"""Does the target bucket exist? Asked once, then again every `recheck_seconds`; while
it is missing, every `missing_recheck_seconds` (the daemon's `retry.retry_later_seconds`:
as often as the files waiting for it are put back in line).

AWS answers a PUT into a missing bucket with NoSuchBucket, but several
S3-compatible servers silently create the bucket instead. Asking HeadBucket
first makes both behave the same: no bucket, no upload, a clear reason. A 403
(credentials allowed to PutObject but not to ListBucket) does not block
uploads: the PUT itself then gives the real answer.

A missing bucket is a state of the deployment, not of any file (it may be made
by a later step, or re-made): files wait for it (`BucketMissing` is transient)
and go up once a recheck finds it, without a restart.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from uploader.errors import BucketMissing, PermanentError
from uploader.retry import RetryPolicy


class BucketCheck:
    def __init__(self, *, client: Any, bucket: str, retry: RetryPolicy,
                 recheck_seconds: float = 30.0, missing_recheck_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.bucket = bucket
        self.retry = retry
        self.recheck_seconds = recheck_seconds
        self.missing_recheck_seconds = (recheck_seconds if missing_recheck_seconds is None
                                        else missing_recheck_seconds)
        self._clock = clock
        self._checked_at: float | None = None
        self._missing: BucketMissing | None = None
        self._asking: asyncio.Future[BucketMissing | None] | None = None

    async def ensure_exists(self) -> None:
        """Raise BucketMissing (code NoSuchBucket) if the bucket is known not to exist."""
        now = self._clock()
        interval = self.missing_recheck_seconds if self._missing else self.recheck_seconds
        if self._checked_at is None or now - self._checked_at >= interval:
            if self._asking is None:  # one HeadBucket for every caller waiting on it
                self._asking = asyncio.ensure_future(self._ask())
                self._asking.add_done_callback(self._answered)
            await asyncio.shield(self._asking)
        if self._missing is not None:
            raise self._missing

    def _answered(self, asking: asyncio.Future[BucketMissing | None]) -> None:
        self._asking = None
        if not asking.cancelled() and asking.exception() is None:
            self._missing = asking.result()
            self._checked_at = self._clock()

    async def _ask(self) -> BucketMissing | None:
        try:
            await self.retry.call(lambda: self.client.head_bucket(Bucket=self.bucket),
                                  what=f"HeadBucket s3://{self.bucket}")
        except PermanentError as exc:
            if exc.status == 404:
                return BucketMissing(
                    f"s3://{self.bucket}: NoSuchBucket: the bucket does not exist; create it "
                    "or fix s3.bucket (and s3.region)",
                    code="NoSuchBucket", status=404)
        return None
