"""`uploader run`: wiring and lifecycle of the long-running daemon.

Start: journal, S3 client, workers, then the directory source. Stop (SIGTERM or
SIGINT): stop taking files, give in-flight uploads `shutdown_grace_seconds`,
cancel what is left (multipart uploads are parked, resumed at the next start),
close in reverse order of creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from uploader.config import Config
from uploader.errors import ConfigError
from uploader.filters import FileFilter
from uploader.journal import Journal
from uploader.sources.directory import DirectorySource
from uploader.sources.walk import TreeWalker
from uploader.janitor import Janitor
from uploader.wiring import Services, services

log = logging.getLogger(__name__)


async def run_daemon(config: Config) -> int:
    root = config.source.directory
    if not root.is_dir():
        raise ConfigError(f"source.directory: {root} is not an existing directory")
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    journal = Journal.in_state_dir(config.state_dir)
    try:
        async with services(config, journal=journal) as svc:
            walker = TreeWalker(root=root, file_filter=FileFilter(config.source),
                                follow_symlinks=config.source.follow_symlinks,
                                ignore_dirs=_dirs_inside(config))
            source = DirectorySource(
                walker=walker, submit=svc.pool.submit,
                settle_seconds=config.source.settle_seconds,
                rescan_interval_seconds=config.source.rescan_interval_seconds)
            svc.pool.on_changed = source.resettle
            svc.pool.start()
            background = [asyncio.create_task(source.run(), name="source")]
            if config.janitor.enabled:
                background.append(asyncio.create_task(_janitor(config, svc).run(
                    interval_seconds=config.janitor.interval_seconds), name="janitor"))
            watching = background[0]
            log.info("watching %s, uploading to s3://%s/%s", root, config.s3.bucket,
                     config.s3.prefix)
            stopped = asyncio.create_task(stop.wait(), name="stop-signal")
            await asyncio.wait({watching, stopped}, return_when=asyncio.FIRST_COMPLETED)
            log.info("stopping: no new files taken")
            stopped.cancel()
            for task in background:
                task.cancel()
            for task in background:
                await _reap(task)
            await svc.pool.stop(grace_seconds=config.shutdown_grace_seconds)
    finally:
        journal.close()
    log.info("stopped")
    return 0


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


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
                   abort_after_seconds=config.janitor.abort_after_seconds)
