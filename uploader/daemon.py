"""`uploader run`: wiring and lifecycle of the long-running daemon.

Start: journal, S3 client, pipeline, then the source: a watched directory
feeding a worker pool, or an SQS queue feeding the pipeline (`source.type`).
Stop (SIGTERM or SIGINT): stop taking files, give in-flight uploads
`shutdown_grace_seconds`, cancel what is left (multipart uploads are parked,
resumed at the next start; queue messages reappear for other instances),
close in reverse order of creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any, AsyncIterator

from uploader.config import Config
from uploader.errors import ConfigError
from uploader.filters import FileFilter
from uploader.janitor import Janitor
from uploader.journal import Journal
from uploader.operations import operations
from uploader.sources.directory import DirectorySource
from uploader.sources.sqs import SqsSource, check_queue, open_sqs_client
from uploader.sources.walk import TreeWalker
from uploader.state_lock import when_free
from uploader.wiring import Services, services

log = logging.getLogger(__name__)


async def run_daemon(config: Config, *, config_path: Path | None = None) -> int:
    """`config_path`: where SIGHUP re-reads the configuration (None: no reload)."""
    if config.source.type == "directory":
        root = config.source.directory
        if root is None or not root.is_dir():
            raise ConfigError(f"source.directory: {root} is not an existing directory")
    stop = stop_event()
    journal = await when_free(
        lambda: Journal.in_state_dir(config.state_dir, owner="uploader run"),
        wait_seconds=config.state_dir_lock_wait_seconds, stop=stop)
    if journal is None:
        log.info("stopped while waiting for state_dir")
        return 0
    try:
        async with services(config, journal=journal) as svc, _source(config, svc) as source, \
                operations(config, svc=svc, workers=source.workers,
                           watcher=getattr(source, "watcher", None), config_path=config_path):
            background = [asyncio.create_task(source.run(), name="source")]
            if config.janitor.enabled:
                background.append(asyncio.create_task(_janitor(config, svc).run(
                    interval_seconds=config.janitor.interval_seconds), name="janitor"))
            log.info("%s, uploading to s3://%s/%s", source.describe(), config.s3.bucket,
                     config.s3.prefix)
            stopped = asyncio.create_task(stop.wait(), name="stop-signal")
            await asyncio.wait({background[0], stopped}, return_when=asyncio.FIRST_COMPLETED)
            log.info("stopping: no new files taken")
            stopped.cancel()
            for task in background:
                task.cancel()
            try:
                for task in background:
                    await _reap(task)  # re-raises a failure of the source or the janitor
            finally:
                # Even then: in-flight uploads get their grace period, queued deletes go out.
                await source.stop(grace_seconds=config.shutdown_grace_seconds)
    finally:
        journal.close()
    log.info("stopped")
    return 0


class _DirectoryRun:
    """The watched directory feeding the worker pool."""

    def __init__(self, config: Config, svc: Services) -> None:
        root = config.source.directory
        assert root is not None
        walker = TreeWalker(root=root, file_filter=FileFilter(config.source),
                            follow_symlinks=config.source.follow_symlinks,
                            ignore_dirs=_dirs_inside(config))
        self.watcher = DirectorySource(
            walker=walker, submit=svc.pool.submit, settle_seconds=config.source.settle_seconds,
            rescan_interval_seconds=config.source.rescan_interval_seconds,
            known_uploaded=svc.pipeline.known_uploaded)
        self.workers = self.pool = svc.pool
        self.pool.on_changed = self.watcher.resettle
        self.root = root

    def describe(self) -> str:
        return f"watching {self.root}"

    async def run(self) -> None:
        self.pool.start()
        await self.watcher.run()

    async def stop(self, *, grace_seconds: float) -> None:
        await self.pool.stop(grace_seconds=grace_seconds)


class _QueueRun:
    """An SQS queue feeding the pipeline directly (the queue is the backlog)."""

    def __init__(self, config: Config, svc: Services, client: Any) -> None:
        self.queue_url = config.source.queue_url
        self.workers = self.consumer = SqsSource(client=client, config=config,
                                                 pipeline=svc.pipeline)

    def describe(self) -> str:
        return f"draining {self.queue_url}"

    async def run(self) -> None:
        await self.consumer.run()

    async def stop(self, *, grace_seconds: float) -> None:
        await self.consumer.stop(grace_seconds=grace_seconds)


@contextlib.asynccontextmanager
async def _source(config: Config, svc: Services) -> AsyncIterator[_DirectoryRun | _QueueRun]:
    if config.source.type == "directory":
        yield _DirectoryRun(config, svc)
        return
    async with open_sqs_client(config) as client:
        assert config.source.queue_url is not None
        await check_queue(client, config.source.queue_url)
        yield _QueueRun(config, svc, client)


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _reap(task: asyncio.Task[None]) -> None:
    """Await a cancelled task; a real failure in it is logged, not lost."""
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await task
        except Exception:
            log.exception("%s failed", task.get_name())
            raise


def _dirs_inside(config: Config) -> tuple:
    """state_dir and move_to must never be uploaded if they sit inside the watched tree."""
    dirs = [config.state_dir]
    if config.move_to is not None:
        dirs.append(config.move_to)
    return tuple(dirs)


def _janitor(config: Config, svc: Services) -> Janitor:
    return Janitor(ctx=svc.pipeline.ctx, prefix=config.s3.prefix,
                   abort_after_seconds=config.janitor.abort_after_seconds,
                   parked_resume_here=config.source.type == "directory",
                   forget_after_seconds=config.janitor.forget_after_seconds)
