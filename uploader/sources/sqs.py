"""An SQS queue as the source: a fleet of uploaders draining one queue of file paths.

Each message names a file on a shared filesystem (EFS, NFS) as JSON:
`{"path": "/mnt/share/a.csv", "key": "optional/name.csv", "metadata": {...}}`.

- Long polling, batches of up to 10 from several receive loops at once, never
  more messages held than `transfer.concurrency` (the rest stay in the queue
  for other instances), besides those waiting aside (next point).
- A throttled S3 partition does not take every slot: a message whose partition
  has no room (`RateLimiter.has_room`: callers already queue for its tokens)
  waits aside, heartbeating, and gives its slot to a newly received message
  until the partition has room. At most 4 x `transfer.concurrency` messages
  wait aside; beyond that, messages are handled as they come.
- While a message's upload runs, its visibility timeout is extended every
  third of the timeout (heartbeat), so a long multipart upload keeps it. The
  messages in hand share the heartbeats: one ChangeMessageVisibilityBatch per
  10 messages, not one call per message (SQS bills by the request). A
  message is released only once no extension of it is on its way (`_Heartbeats`).
- The message is deleted (in batches) only after the object is verified in S3.
- A message whose file failed for good, or that is malformed, is logged with
  the reason and released at once (visibility 0); after the queue's
  `maxReceiveCount` its redrive policy moves it to the dead-letter queue. It
  never blocks the others.
- A transient failure (outage, throttling) hands the message back with a
  visibility of `retry.retry_later_seconds`: the queue does the waiting.
- Exactly once across the fleet and across duplicates: the pipeline runs in
  `shared_work` mode, so it looks in S3 (HEAD: size and MD5-derived ETag)
  before sending, and a file already there is not sent again.
- A killed instance's messages reappear after their visibility timeout and
  are taken by the others; a stopped one hands back those it could not finish
  within `shutdown_grace_seconds` at once.

SQS requests use botocore's standard retries (the S3 retry layer, its
limiter and breaker are for S3 alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import aioboto3
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from uploader.config import Config
from uploader.errors import ConfigError
from uploader.intake import RECHECK_SECONDS
from uploader.open_files import fitting_concurrency
from uploader.pipeline import Outcome, Pipeline
from uploader.s3.metadata import MetadataError, check_metadata
from uploader.s3client import configured_endpoint, tls_verification

log = logging.getLogger(__name__)

MAX_BATCH = 10  # SQS's limit for receive and delete batches
DELETE_FLUSH_SECONDS = 0.2
CHANGED_RETRY_SECONDS = 5  # a file that changed while uploading is retried after this
IDLE_BACKOFF_SECONDS = 5.0  # after a failed receive
HAND_BACK_TIMEOUT_SECONDS = 5.0  # at shutdown: SQS may be what is failing
# Messages that may wait aside for a throttled partition, per transfer.concurrency (as the
# directory source's queue holds 4 files per worker).
MAX_ASIDE_PER_SLOT = 4


class MessageError(ValueError):
    """A message that does not name a file we can upload; the reason says why."""


@dataclass(frozen=True)
class QueueJob:
    path: Path
    relative: str  # the name under s3.prefix
    metadata: dict[str, str] = field(default_factory=dict)


def parse_message(body: str, *, root: Path | None) -> QueueJob:
    """Validate one message body. Raises MessageError naming the problem."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise MessageError(f"not JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(data, dict):
        raise MessageError(f"expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - {"path", "key", "metadata", "size", "mtime_ns"}
    if unknown:
        raise MessageError(f"unknown field(s) {sorted(unknown)} (expected path, key, metadata)")
    path = data.get("path")
    if not isinstance(path, str) or not path:
        raise MessageError('"path" is missing or not a string')
    _check_unicode(path, "path")
    if not Path(path).is_absolute():
        raise MessageError(f'"path" must be absolute, got {path!r}')
    key = data.get("key")
    if key is not None:
        key = _checked_key(key)
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise MessageError('"metadata" must be an object of strings')
    try:
        check_metadata(metadata, what='"metadata"')
    except MetadataError as exc:
        raise MessageError(str(exc)) from None
    return QueueJob(path=Path(path), relative=key or _default_name(Path(path), root),
                    metadata=metadata)


def _checked_key(key: object) -> str:
    """The message's `key`, without leading `/` (the object key never has them)."""
    if not isinstance(key, str) or not key.strip("/"):
        raise MessageError('"key" must be a non-empty string')
    _check_unicode(key, "key")
    key = key.lstrip("/")
    # `after_upload: move` files the file under move_to by this name: `..` would leave it.
    if any(segment in (".", "..") for segment in key.split("/")):
        raise MessageError(f'"key" must not contain "." or ".." segments, got {key!r}')
    return key


def _check_unicode(text: str, name: str) -> None:
    """JSON may carry lone surrogates (\\ud800), which no file name or S3 key can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MessageError(f'"{name}" is not valid Unicode (a lone surrogate), got {text!r}') \
            from None


def _default_name(path: Path, root: Path | None) -> str:
    """The path relative to the shared root; outside it (or with no root), the whole
    path without its leading `/`. Never the file name alone: /a/x.csv and /b/x.csv
    would then be one object, the second overwriting the first."""
    if root is not None:
        with contextlib.suppress(ValueError):
            return path.relative_to(root).as_posix()
    return path.as_posix().lstrip("/")


@contextlib.asynccontextmanager
async def open_sqs_client(config: Config) -> AsyncIterator[Any]:
    source = config.source
    core = AioSession(profile=config.s3.profile)
    endpoint = configured_endpoint(core, "sqs", source.endpoint_url)
    async with aioboto3.Session(botocore_session=core).client(
            "sqs", endpoint_url=source.endpoint_url, region_name=source.region or config.s3.region,
            verify=tls_verification(endpoint),
            config=AioConfig(retries={"mode": "standard", "max_attempts": 5},
                             connect_timeout=config.transfer.connect_timeout_seconds,
                             read_timeout=source.wait_time_seconds + 10)) as client:
        yield client


async def check_queue(client: Any, queue_url: str) -> None:
    """Fail at start, with a reason naming the setting, if the queue cannot be used."""
    try:
        await client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    except Exception as exc:  # noqa: BLE001 - any failure here is a setup problem
        raise ConfigError(f"source.queue_url: cannot use the queue {queue_url}: {exc}") from None


class _Deleter:
    """Deletes handled messages in batches of up to 10 (handlers finishing together share)."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self._client = client
        self._queue_url = queue_url
        self._pending: list[str] = []
        self._flusher: asyncio.Task[None] | None = None
        self.deleted = 0

    def delete(self, receipt: str) -> None:
        self._pending.append(receipt)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(delay=DELETE_FLUSH_SECONDS))

    async def _flush(self, *, delay: float) -> None:
        if len(self._pending) < MAX_BATCH:
            await asyncio.sleep(delay)
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            await self._send(batch)

    async def _send(self, batch: list[str]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(batch)]
        try:
            response = await self._client.delete_message_batch(
                QueueUrl=self._queue_url, Entries=entries)
        except Exception as exc:  # noqa: BLE001 - the messages come back, seen as done
            log.warning("could not delete %d handled message(s); they will come back and "
                        "be recognised as done: %s", len(batch), exc)
            return
        for failure in response.get("Failed", []):
            log.warning("could not delete a handled message: %s", failure.get("Message"))
        self.deleted += len(response.get("Successful", []))

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._flush(delay=0)


async def _change_visibility(client: Any, queue_url: str, receipts: list[str],
                             seconds: int) -> list[str]:
    """Set the visibility timeout of `receipts`, 10 to a request; the reasons of entries
    SQS refused. A failed request raises (the callers decide what it means)."""
    reasons: list[str] = []
    for start in range(0, len(receipts), MAX_BATCH):
        entries = [{"Id": str(i), "ReceiptHandle": receipt, "VisibilityTimeout": seconds}
                   for i, receipt in enumerate(receipts[start:start + MAX_BATCH])]
        response = await client.change_message_visibility_batch(QueueUrl=queue_url,
                                                                Entries=entries)
        reasons += [failure.get("Message", "?") for failure in response.get("Failed", [])]
    return reasons


class _Heartbeats:
    """Keeps the messages in hand hidden while their uploads run: every third of the
    visibility timeout, extended in batches. One message due makes the others due within
    the next sixth go with it, so the batches stay full (an early extension is harmless).

    An extension already sent when its message is let go could reach SQS after the
    release that follows (a deferral, a rejection, the hand-back at shutdown) and hide
    the message again for a whole visibility timeout: `drop` returns only once no
    extension of the message is on its way, so the release is the last word.
    """

    def __init__(self, client: Any, queue_url: str, visibility: int) -> None:
        self._client = client
        self._queue_url = queue_url
        self._visibility = visibility
        self._due: dict[str, float] = {}  # receipt -> when (monotonic) to extend it
        self._task: asyncio.Task[None] | None = None
        # The receipts of the extension on its way, and its end.
        self._sending: tuple[frozenset[str], asyncio.Future[None]] | None = None
        self.extended = 0

    def hold(self, receipt: str) -> None:
        # Each new receipt is due last: the loop's next wake-up stays right.
        self._due[receipt] = time.monotonic() + self._visibility / 3
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="sqs-heartbeats")

    async def drop(self, receipt: str) -> None:
        """No more extensions of `receipt`; returns once none is on its way (at most
        HAND_BACK_TIMEOUT_SECONDS: SQS may be what is failing)."""
        self._due.pop(receipt, None)
        if self._sending is not None and receipt in self._sending[0]:
            # asyncio.wait: a cancelled caller (shutdown) does not cancel the others' wait.
            await asyncio.wait([self._sending[1]], timeout=HAND_BACK_TIMEOUT_SECONDS)

    async def _run(self) -> None:
        while self._due:
            await asyncio.sleep(max(0.0, min(self._due.values()) - time.monotonic()))
            now = time.monotonic()
            due = [r for r, at in self._due.items() if at <= now + self._visibility / 6]
            if due:
                await self._extend(due, now)

    async def _extend(self, receipts: list[str], now: float) -> None:
        sent = asyncio.get_running_loop().create_future()
        self._sending = (frozenset(receipts), sent)
        try:
            refused = await _change_visibility(self._client, self._queue_url, receipts,
                                               self._visibility)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the uploads go on; S3 is checked first
            log.warning("could not extend the visibility of %d message(s): %s",
                        len(receipts), exc)
            refused = []
        finally:
            self._sending = None
            sent.set_result(None)
        for reason in refused:
            log.warning("could not extend a message's visibility: %s", reason)
        for receipt in receipts:  # tried: the next try a third later, as for a success
            if receipt in self._due:
                self._due[receipt] = now + self._visibility / 3
        self.extended += len(receipts) - len(refused)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class _PathLocks:
    """One lock per path while someone holds it (no unbounded growth)."""

    def __init__(self) -> None:
        self._locks: dict[Path, tuple[asyncio.Lock, int]] = {}
        self.waiting = 0  # callers waiting for a path someone else holds

    @contextlib.asynccontextmanager
    async def hold(self, path: Path) -> AsyncIterator[None]:
        lock, users = self._locks.get(path, (asyncio.Lock(), 0))
        self._locks[path] = (lock, users + 1)
        try:
            self.waiting += 1
            try:
                await lock.acquire()
            finally:
                self.waiting -= 1
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[path]
            if users == 1:
                del self._locks[path]
            else:
                self._locks[path] = (lock, users - 1)


class SqsSource:
    """Receives, hands to the pipeline, settles. Seen by the daemon's metrics and reload
    as its `Workforce` (`uploader.workers`): a message in hand is a slot."""

    def __init__(self, *, client: Any, config: Config, pipeline: Pipeline) -> None:
        source = config.source
        assert source.queue_url is not None  # the config validator ensures it
        self._client = client
        self._queue_url = source.queue_url
        self._pipeline = pipeline
        self._root = source.directory
        self._wait_time = source.wait_time_seconds
        self._visibility = source.visibility_timeout_seconds
        self._retry_later = min(int(config.retry.retry_later_seconds), 43200)
        self.concurrency = fitting_concurrency(config)
        self._in_hand = 0
        self._slot_freed = asyncio.Event()
        self._handlers: dict[asyncio.Task[None], str] = {}  # -> the message's receipt
        self._deleter = _Deleter(client, self._queue_url)
        self._heartbeats = _Heartbeats(client, self._queue_url, self._visibility)
        self._path_locks = _PathLocks()
        self._room = asyncio.Event()  # set when an upload ends: a partition may have room
        self._aside = 0  # messages waiting for their throttled partition to have room
        self._uploading = 0
        self._receivers: set[asyncio.Task[None]] = set()
        self._receiver_failed: asyncio.Future[None] | None = None
        self.rejected = 0

    # -------------------------------------------------- as a Workforce
    @property
    def depth(self) -> int:
        """Messages in hand waiting for a duplicate of theirs to finish."""
        return self._path_locks.waiting

    @property
    def set_aside(self) -> int:
        return self._aside

    @property
    def in_flight(self) -> int:
        return self._uploading

    @property
    def deferred(self) -> int:
        """Always 0: a deferred message goes back to the queue, which does the waiting."""
        return 0

    def resize(self, concurrency: int) -> None:
        """A reload: hold up to `concurrency` messages from now on. A raise takes effect
        at once (more receive loops if needed); a cut as messages in hand finish."""
        self.concurrency = concurrency
        self._slot_freed.set()
        if self._receiver_failed is not None:
            self._add_receivers()

    @property
    def _max_aside(self) -> int:
        return MAX_ASIDE_PER_SLOT * self.concurrency

    # ------------------------------------------------------------ receiving
    async def run(self) -> None:
        """Receive and hand out messages until cancelled.

        Several receive loops run at once (one per 10 messages of concurrency;
        more start when a reload raises it): a receive takes a round trip, and
        one loop alone would cap the rate at 10 messages per round trip.
        """
        self._receiver_failed = asyncio.get_running_loop().create_future()
        self._add_receivers()
        try:
            await self._receiver_failed  # receive loops end only by failing (or cancel)
        finally:
            self._receiver_failed = None
            for task in self._receivers:
                task.cancel()
            await asyncio.gather(*self._receivers, return_exceptions=True)

    def _add_receivers(self) -> None:
        """Start receive loops up to one per batch of `concurrency`."""
        for _ in range(max(1, -(-self.concurrency // MAX_BATCH)) - len(self._receivers)):
            task = asyncio.create_task(self._receive_loop(), name="sqs-receive")
            self._receivers.add(task)
            task.add_done_callback(self._receiver_done)

    def _receiver_done(self, task: asyncio.Task[None]) -> None:
        self._receivers.discard(task)
        failed = self._receiver_failed
        if failed is not None and not failed.done() and not task.cancelled():
            failed.set_exception(task.exception() or RuntimeError("a receive loop ended"))

    async def _receive_loop(self) -> None:
        while True:
            wanted = await self._reserve_slots()
            messages: list[dict[str, Any]] = []
            try:
                messages = await self._receive(wanted)
            finally:
                self._free_slots(wanted - len(messages))
            for message in messages:
                task = asyncio.create_task(self._handle(message))
                self._handlers[task] = message["ReceiptHandle"]
                task.add_done_callback(self._handler_done)

    async def _reserve_slots(self) -> int:
        """Wait for room for one more message; reserve room for up to a batch."""
        while self._in_hand >= self.concurrency:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        wanted = min(MAX_BATCH, self.concurrency - self._in_hand)
        self._in_hand += wanted
        return wanted

    def _free_slots(self, count: int) -> None:
        if count:
            self._in_hand -= count
            self._slot_freed.set()

    async def _receive(self, count: int) -> list[dict[str, Any]]:
        try:
            response = await self._client.receive_message(
                QueueUrl=self._queue_url, MaxNumberOfMessages=count,
                WaitTimeSeconds=self._wait_time, VisibilityTimeout=self._visibility,
                MessageSystemAttributeNames=["ApproximateReceiveCount"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep serving; the log says why
            log.error("receiving from %s failed: %s", self._queue_url, exc)
            await asyncio.sleep(IDLE_BACKOFF_SECONDS)
            return []
        return response.get("Messages", [])

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handlers.pop(task, None)
        self._free_slots(1)
        if not task.cancelled() and task.exception() is not None:
            log.error("handling a message failed: %r", task.exception())

    # ------------------------------------------------------------- handling
    async def _handle(self, message: dict[str, Any]) -> None:
        receipt = message["ReceiptHandle"]
        try:
            job = parse_message(message.get("Body", ""), root=self._root)
        except MessageError as exc:
            log.error("rejected message %s: %s; it goes to the dead-letter queue after the "
                      "queue's maxReceiveCount", message.get("MessageId"), exc)
            await self._release(receipt, delay=0)
            self.rejected += 1
            return
        partition = self._pipeline.partition_of(job.relative)
        self._heartbeats.hold(receipt)
        try:
            await self._wait_for_room(partition)
            try:
                # Duplicates received together wait for each other: the second then
                # finds the file done (journal) instead of racing the first to S3.
                async with self._path_locks.hold(job.path):
                    self._uploading += 1
                    try:
                        outcome = await self._pipeline.process(job.path, job.relative,
                                                               job.metadata)
                    finally:
                        self._uploading -= 1
            finally:
                self._room.set()
        finally:
            await self._heartbeats.drop(receipt)
        await self._settle(receipt, outcome, job)

    async def _wait_for_room(self, partition: str) -> None:
        """While `partition` is throttled and has no room, wait aside: the message's
        slot goes to the receivers meanwhile (see the module's docstring)."""
        has_room = self._pipeline.partition_has_room
        if has_room(partition) or self._aside >= self._max_aside:
            return
        self._aside += 1
        self._free_slots(1)
        try:
            while not has_room(partition):
                self._room.clear()
                # Room comes as its callers get tokens (or its rate rises), not only
                # when an upload ends: look again at least every RECHECK_SECONDS.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), RECHECK_SECONDS)
        finally:
            self._aside -= 1
            self._in_hand += 1  # in hand again (may pass concurrency for a moment)

    async def _settle(self, receipt: str, outcome: Outcome, job: QueueJob) -> None:
        if outcome in (Outcome.UPLOADED, Outcome.ALREADY_UPLOADED):
            self._deleter.delete(receipt)
        elif outcome is Outcome.DEFERRED:
            await self._release(receipt, delay=self._retry_later)
        elif outcome is Outcome.CHANGED:
            await self._release(receipt, delay=CHANGED_RETRY_SECONDS)
        else:  # FAILED or SKIPPED: the journal and the log have the reason
            log.error("message for %s not handled (%s); it goes to the dead-letter queue "
                      "after the queue's maxReceiveCount", job.path, outcome.value,
                      extra={"file": str(job.path)})
            await self._release(receipt, delay=0)
            self.rejected += 1

    async def _release(self, receipt: str, *, delay: int) -> None:
        try:
            await self._client.change_message_visibility(
                QueueUrl=self._queue_url, ReceiptHandle=receipt, VisibilityTimeout=delay)
        except Exception as exc:  # noqa: BLE001 - it comes back after its timeout anyway
            log.warning("could not hand a message back to the queue: %s", exc)

    # ------------------------------------------------------------- stopping
    async def stop(self, *, grace_seconds: float) -> None:
        """Wait for messages in hand; after the grace period cancel them and hand them
        back to the queue at once, for the other instances (or the next start)."""
        if self._handlers:
            log.info("waiting up to %.0fs for %d message(s) in hand", grace_seconds,
                     len(self._handlers))
            _, pending = await asyncio.wait(set(self._handlers), timeout=grace_seconds)
            receipts = [self._handlers[task] for task in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self._hand_back(receipts)
        await self._heartbeats.close()
        await self._deleter.close()

    async def _hand_back(self, receipts: list[str]) -> None:
        """Visible again now rather than after their visibility timeout (a best effort:
        if SQS cannot be reached, the timeout brings them back anyway)."""
        if not receipts:
            return
        try:
            refused = await asyncio.wait_for(_change_visibility(
                self._client, self._queue_url, receipts, 0), HAND_BACK_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - they come back after their timeout
            log.warning("could not hand %d message(s) back to the queue: %s",
                        len(receipts), exc)
            return
        for reason in refused:
            log.warning("could not hand a message back to the queue: %s", reason)
        log.info("handed %d unfinished message(s) back to the queue",
                 len(receipts) - len(refused))
