"""Building the shared pieces once and handing them to whoever needs them."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import AsyncIterator

from uploader.bucket_check import BucketCheck
from uploader.config import Config
from uploader.journal import Journal
from uploader.pipeline import AfterUpload, Pipeline
from uploader.retry import RetryPolicy
from uploader.s3client import open_s3_client
from uploader.transfer.context import TransferContext
from uploader.workers import WorkerPool


@dataclass
class Services:
    config: Config
    journal: Journal
    retry: RetryPolicy
    pipeline: Pipeline
    pool: WorkerPool


@contextlib.asynccontextmanager
async def services(config: Config, *, journal: Journal) -> AsyncIterator[Services]:
    """Client, retry policy, transfer context, pipeline and worker pool, closed in reverse."""
    t = config.transfer
    async with open_s3_client(config) as client:
        retry = RetryPolicy(max_attempts=t.max_attempts, base_seconds=t.backoff_base_seconds,
                            cap_seconds=t.backoff_max_seconds)
        ctx = TransferContext.build(config=config, client=client, retry=retry, journal=journal)
        pipeline = Pipeline(ctx=ctx, journal=journal, prefix=config.s3.prefix,
                            after_upload=AfterUpload(config.after_upload, config.move_to),
                            bucket_check=BucketCheck(client=client, bucket=config.s3.bucket,
                                                     retry=retry),
                            follow_symlinks=config.source.follow_symlinks)
        pool = WorkerPool(pipeline=pipeline, concurrency=t.concurrency,
                          queue_size=max(64, 4 * t.concurrency))
        yield Services(config=config, journal=journal, retry=retry, pipeline=pipeline, pool=pool)
