"""`uploader enqueue`: one watcher publishes settled files to SQS; a fleet uploads them.

The watcher is the daemon's directory source (same settle rules, rescans,
filters), but instead of uploading, each settled file becomes a message
`{"path", "key", "size", "mtime_ns"}` sent in batches of up to 10. The
journal records each file as `enqueued` with its size and mtime, so a restart
publishes only new or changed files.

Duplicates are harmless by design: the uploaders look in S3 (size and
MD5-derived ETag) before sending, so a redelivered or duplicated message does
not produce a second upload. On a FIFO queue (`.fifo`), the message
deduplication id is derived from path, size and mtime, so SQS itself drops
duplicates sent within its five-minute window.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from uploader.config import Config
from uploader.errors import ConfigError, SourceError
from uploader.filters import FileFilter
from uploader.journal import ENQUEUED, FileRecord, Journal
from uploader.keys import is_unicode
from uploader.sources.directory import DirectorySource
from uploader.sources.sqs import MAX_BATCH, check_queue, open_sqs_client
from uploader.sources.walk import TreeWalker
from uploader.state_lock import when_free
from uploader.transfer.job import Signature, stat_signature

log = logging.getLogger(__name__)
SEND_FLUSH_SECONDS = 0.2


def message_for(path: Path, relative: str, *, size: int, mtime_ns: int) -> dict[str, Any]:
    return {"path": str(path), "key": relative, "size": size, "mtime_ns": mtime_ns}


class Enqueuer:
    """Turns settled files into queue messages, in batches, journaled once sent."""

    def __init__(self, *, client: Any, queue_url: str, journal: Journal,
                 follow_symlinks: bool = False) -> None:
        self._client = client
        self._queue_url = queue_url
        self._fifo = queue_url.endswith(".fifo")
        self._journal = journal
        self._follow_symlinks = follow_symlinks
        self._batch: list[tuple[Path, str, Signature]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.sent = 0

    async def submit(self, path: Path, relative: str,
                     signature: Signature | None = None) -> None:
        if not is_unicode(str(path), relative):
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            log.error("not enqueued: %s: the file name is not valid UTF-8, so it cannot name "
                      "an S3 object (rename the file)", shown)
            return
        if signature is None:
            try:
                signature = stat_signature(path, follow_symlinks=self._follow_symlinks)
            except SourceError as exc:
                log.warning("not enqueued: %s", exc, extra={"file": str(path)})
                return
        if _published(self._journal.lookup(str(path)), signature):
            return
        self._batch.append((path, relative, signature))
        if len(self._batch) >= MAX_BATCH:
            await self.flush()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(SEND_FLUSH_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        while self._batch:
            batch, self._batch = self._batch[:MAX_BATCH], self._batch[MAX_BATCH:]
            await self._send(batch)

    async def _send(self, batch: list[tuple[Path, str, Signature]]) -> None:
        entries = [self._entry(i, *item) for i, item in enumerate(batch)]
        try:
            response = await self._client.send_message_batch(QueueUrl=self._queue_url,
                                                             Entries=entries)
        except Exception as exc:  # noqa: BLE001 - not journaled, so the next rescan retries
            log.error("could not enqueue %d file(s); the next rescan tries again: %s",
                      len(batch), exc)
            return
        failed = {f["Id"]: f.get("Message") for f in response.get("Failed", [])}
        for i, (path, relative, signature) in enumerate(batch):
            if str(i) in failed:
                log.error("could not enqueue %s: %s", path, failed[str(i)],
                          extra={"file": str(path)})
                continue
            self._journal.set_state(str(path), size=signature.size,
                                    mtime_ns=signature.mtime_ns, key=relative,
                                    status=ENQUEUED, inode=signature.inode,
                                    ctime_ns=signature.ctime_ns)
            self.sent += 1
            log.info("enqueued %s as %s", path, relative, extra={"file": str(path)})

    def _entry(self, index: int, path: Path, relative: str,
               signature: Signature) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "Id": str(index),
            "MessageBody": json.dumps(message_for(path, relative, size=signature.size,
                                                  mtime_ns=signature.mtime_ns)),
        }
        if self._fifo:
            # The ctime too: other bytes under the path with the same size and mtime
            # (cp -p, rsync -t) are a new message, not a duplicate to drop.
            identity = (f"{path}\0{signature.size}\0{signature.mtime_ns}"
                        f"\0{signature.ctime_ns}").encode()
            entry["MessageGroupId"] = hashlib.sha256(relative.encode()).hexdigest()[:64]
            entry["MessageDeduplicationId"] = hashlib.sha256(identity).hexdigest()[:128]
        return entry


async def _forget_gone_files(journal: Journal, config: Config) -> None:
    """As the daemon's janitor does: `enqueued` rows of files gone since (the fleet
    deleted or moved them) are forgotten, so the journal does not grow for ever."""
    janitor = config.janitor
    if not janitor.enabled:
        return
    while True:
        forgotten = await journal.forget_gone(
            finished_before=time.time() - janitor.forget_after_seconds)
        if forgotten:
            log.info("the journal forgot %d enqueued file(s) gone since", forgotten)
        await asyncio.sleep(janitor.interval_seconds)


def _published(previous: FileRecord | None, signature: Signature) -> bool:
    """Enqueued before, and the same file since (size, mtime, and its identity)."""
    if previous is None or previous.status != ENQUEUED:
        return False
    if (previous.size, previous.mtime_ns) != (signature.size, signature.mtime_ns):
        return False
    return previous.same_identity(signature.inode, signature.ctime_ns)


async def run_enqueue(config: Config, stop: asyncio.Event) -> int:
    source = config.source
    if source.directory is None or not source.directory.is_dir():
        raise ConfigError(f"source.directory: {source.directory} is not an existing directory")
    if not source.queue_url:
        raise ConfigError("source.queue_url: required for `uploader enqueue`")
    journal = await when_free(
        lambda: Journal.in_state_dir(config.state_dir, owner="uploader enqueue"),
        wait_seconds=config.state_dir_lock_wait_seconds, stop=stop)
    if journal is None:
        return 0  # stopped while waiting for state_dir
    try:
        async with open_sqs_client(config) as client:
            await check_queue(client, source.queue_url)
            enqueuer = Enqueuer(client=client, queue_url=source.queue_url, journal=journal,
                                follow_symlinks=source.follow_symlinks)
            walker = TreeWalker(root=source.directory, file_filter=FileFilter(source),
                                follow_symlinks=source.follow_symlinks,
                                ignore_dirs=(config.state_dir,))
            watcher = DirectorySource(walker=walker, submit=enqueuer.submit,
                                      settle_seconds=source.settle_seconds,
                                      rescan_interval_seconds=source.rescan_interval_seconds)
            watching = asyncio.create_task(watcher.run(), name="enqueue-watcher")
            upkeep = asyncio.create_task(_forget_gone_files(journal, config), name="upkeep")
            log.info("watching %s, enqueuing to %s", source.directory, source.queue_url)
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({watching, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in (watching, stopped, upkeep):
                task.cancel()
            await asyncio.gather(watching, stopped, upkeep, return_exceptions=True)
            await enqueuer.flush()
            if not watching.cancelled() and watching.exception() is not None:
                raise watching.exception()  # the watcher died: say so and exit non-zero
    finally:
        journal.close()
    log.info("stopped")
    return 0
