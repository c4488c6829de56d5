"""Building the shared pieces once and handing them to whoever needs them."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import AsyncIterator

from uploader.breaker import BreakerState, CircuitBreaker
from uploader.bucket_check import BucketCheck
from uploader.clock import SystemClock
from uploader.config import Config
from uploader.journal import Journal
from uploader.keys import KeyNamer
from uploader.limiter import RateLimiter
from uploader.open_files import fitting_concurrency
from uploader.pipeline import AfterUpload, Pipeline
from uploader.retry import RetryPolicy
from uploader.retry_budget import RetryBudget
from uploader.s3client import open_s3
from uploader.transfer.context import TransferContext
from uploader.workers import WorkerPool

log = logging.getLogger(__name__)


@dataclass
class Services:
    config: Config
    journal: Journal
    retry: RetryPolicy
    pipeline: Pipeline
    pool: WorkerPool


@contextlib.asynccontextmanager
async def services(config: Config, *, journal: Journal,
                   retry_later: bool = True) -> AsyncIterator[Services]:
    """Client, retry policy, transfer context, pipeline and worker pool, closed in reverse.

    `retry_later`: files whose upload failed transiently go back in line after
    `retry.retry_later_seconds` (a daemon); False: they stay failed (a one-shot run,
    which ends when its files are done, and must count each file once)."""
    t = config.transfer
    async with open_s3(config) as s3:
        client = s3.client
        retry = build_retry_policy(config, wait_out_outages=retry_later)
        ctx = TransferContext.build(config=config, client=client, data=s3.data, retry=retry,
                                    journal=journal)
        pipeline = Pipeline(ctx=ctx, journal=journal, keys=key_namer(config),
                            after_upload=AfterUpload(config.after_upload, config.move_to),
                            # Missing, asked again as often as the files waiting come back.
                            bucket_check=BucketCheck(
                                client=client, bucket=config.s3.bucket, retry=retry,
                                missing_recheck_seconds=config.retry.retry_later_seconds),
                            follow_symlinks=config.source.follow_symlinks,
                            shared_work=config.source.type == "sqs",
                            # A one-shot's deferred file is a failure: each is named.
                            repeats_summary_seconds=(config.logging.repeats_summary_seconds
                                                     if retry_later else 0.0),
                            retried_later=retry_later)
        pool = WorkerPool(pipeline=pipeline, concurrency=fitting_concurrency(config),
                          queue_size=max(64, 4 * t.concurrency),
                          retry_later_seconds=(config.retry.retry_later_seconds
                                               if retry_later else None),
                          partition_of=pipeline.partition_of,
                          has_room=pipeline.partition_has_room)
        try:
            yield Services(config=config, journal=journal, retry=retry, pipeline=pipeline,
                           pool=pool)
        finally:
            pipeline.repeats.close()  # what is still counted


def key_namer(config: Config) -> KeyNamer:
    return KeyNamer(prefix=config.s3.prefix, spread=config.keys.spread,
                    partitions=config.keys.partitions)


def build_retry_policy(config: Config, *, wait_out_outages: bool = True) -> RetryPolicy:
    """The one retry layer with its shared limiter, budget and breaker.

    `wait_out_outages`: requests wait behind an open breaker for as long as the outage
    lasts (a daemon); False: once `retry.max_attempts` probes in a row have failed (about
    5 minutes with the defaults), the breaker gives up and the requests left fail (a
    one-shot run, which must end)."""
    r, b, rl = config.retry, config.breaker, config.rate_limit
    clock = SystemClock()
    limiter = RateLimiter(clock=clock, adaptive=rl.adaptive,
                          max_requests_per_second=rl.max_requests_per_second,
                          max_bytes_per_second=rl.max_bytes_per_second)
    budget = RetryBudget(capacity=r.budget_capacity, retry_cost=r.budget_retry_cost,
                         timeout_retry_cost=r.budget_timeout_cost)
    breaker = CircuitBreaker(endpoint=config.s3.endpoint_url or f"s3.{config.s3.region}",
                             clock=clock, failure_threshold=b.failure_threshold,
                             open_seconds=b.open_seconds,
                             max_open_seconds=max(b.open_seconds, b.max_open_seconds),
                             give_up_after_failed_probes=(None if wait_out_outages
                                                          else r.max_attempts),
                             on_change=_log_breaker_change)
    return RetryPolicy(max_attempts=r.max_attempts, base_seconds=r.backoff_base_seconds,
                       cap_seconds=r.backoff_max_seconds, clock=clock,
                       limiter=limiter, budget=budget, breaker=breaker)


def _log_breaker_change(endpoint: str, old: BreakerState, new: BreakerState) -> None:
    level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
    log.log(level, "circuit breaker for %s: %s -> %s", endpoint, old.value, new.value)
