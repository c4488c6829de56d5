"""Which integrity checksum new uploads carry, learned from the server under `auto`.

`transfer.checksum: auto` is `crc32c` on AWS from the start: every region
verifies `x-amz-checksum-crc32c`. Elsewhere it starts as `md5` (Content-MD5,
the one check every S3-compatible server makes), and the first body sent
carries `x-amz-checksum-crc32c` as well; its answer decides:

- a server that knows the flexible checksums echoes `x-amz-checksum-crc32c`
  with the value sent, as AWS does, and verifies it (SeaweedFS answers a wrong
  one with BadDigest, tests/test_fastpath.py): from then on new uploads carry
  crc32c alone, at a fraction of MD5's CPU per byte. The echo is the proof: a
  server that echoed the value unchecked would be trusted wrongly (`md5` then);
- an answer without it settles on md5, and the extra header stops;
- a refusal (400 or 501: R2 answered 501 NotImplemented, Backblaze B2 400
  InvalidArgument) settles on md5 too, and the body is sent again at once with
  Content-MD5 alone: no file fails for a header it did not need.

One body teaches at a time. While it is out, a body of `WAIT_FROM_BYTES` or
more waits for its answer (one round trip, at start; longer for the first
write into a fresh bucket on some servers) rather than hash it twice; a
smaller one goes with Content-MD5, which costs less than the wait. If the
teaching request fails, the next body teaches.

A multipart upload declares its algorithm when it is created and keeps it for
every part, its completion and its resumption (it is journaled with the
upload), whatever the choice for new uploads becomes. One created while the
choice is still being learned declares crc32c, so that a run of large files
alone learns it too: its first part teaches, and until crc32c is proven its
parts carry Content-MD5 beside it (a refusal of the declaration creates it
again without one, on md5).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Awaitable, Callable, Iterator

from uploader.checksums import PARAMETER, is_aws, request_parameters, resolve
from uploader.errors import ChecksumRefused, PermanentError

if TYPE_CHECKING:
    from uploader.s3.datapath import Stored

log = logging.getLogger(__name__)

LEARNED = "crc32c"  # what a server that echoes it gets
LEARNED_PARAMETER = PARAMETER[LEARNED]
FALLBACK = "md5"  # what every other server gets
# MD5 runs at ~700 MB/s: 256 KiB cost ~0.4 ms of CPU, about a round trip to a nearby server.
WAIT_FROM_BYTES = 256 * 1024
# How servers without the flexible checksums refuse their headers: 400 InvalidArgument
# (Backblaze B2), 501 NotImplemented (R2).
REFUSAL_STATUSES = frozenset({400, 501})


Checksums = Callable[[bytes | memoryview], dict[str, str]]  # a body's checksum parameters
Send = Callable[[dict[str, str]], Awaitable["Stored"]]  # sends the body with these checksums


class ChecksumChoice:
    """The checksum for new uploads, shared by every worker of a process."""

    def __init__(self, setting: str, endpoint_url: str | None) -> None:
        self.algorithm = resolve(setting, endpoint_url)  # for new PUTs and multipart uploads
        self.adaptive = setting == "auto" and not is_aws(endpoint_url)
        self.learning = self.adaptive
        # Why `algorithm` is what it is: setting (or AWS), learning, echo, no echo, refusal.
        self.basis = "learning" if self.adaptive else "setting"
        self._lesson: asyncio.Future[None] | None = None  # the teaching request's answer

    def for_new_upload(self) -> str:
        """The algorithm a new multipart upload declares: crc32c while still learning."""
        return LEARNED if self.learning else self.algorithm

    async def for_put(self, size: int) -> tuple[Checksums, bool]:
        """How to checksum the body (of `size` bytes) of the next PutObject, and whether
        it teaches (then it goes through `send`)."""
        return await self.for_body(size, declared=None)

    async def for_body(self, size: int, *, declared: str | None) -> tuple[Checksums, bool]:
        """How to checksum a body of `size` bytes, and whether it teaches. `declared`: the
        algorithm of the multipart upload a part belongs to; None for a PutObject."""
        while self.learning and declared in (None, LEARNED):
            if self._lesson is None:
                self._lesson = asyncio.get_running_loop().create_future()
                return _both, True
            if size < WAIT_FROM_BYTES:
                break
            await asyncio.shield(self._lesson)
        algorithm = declared or self.algorithm
        if algorithm == LEARNED and self.adaptive and self.algorithm != LEARNED:
            # A part of an upload that declared crc32c on a server not shown to check it:
            # Content-MD5 carries the integrity.
            return _both, False
        return partial(request_parameters, algorithm), False

    @contextmanager
    def lesson(self, teaching: bool) -> Iterator[None]:
        """Around a teaching body's read and send: one that fails (a vanished file, an
        outage) leaves the lesson to the next body."""
        try:
            yield
        finally:
            if teaching:
                self._end_lesson()

    async def send(self, sent: dict[str, str], send: Send, *, teaching: bool,
                   resend: bool) -> tuple[Stored, dict[str, str]]:
        """`send` the body with its checksum parameters `sent` (from `for_body`); a
        teaching body's answer teaches. A body that carried both checksums and was
        refused settles the choice on md5, and goes again with Content-MD5 alone if
        `resend` (a PutObject), else raises ChecksumRefused (a part: its upload declared
        crc32c). The answer, and the checksums that went with the body stored."""
        try:
            stored = await send(sent)
        except PermanentError as exc:
            if not (exc.status in REFUSAL_STATUSES and sent.keys() == _BOTH_PARAMETERS):
                raise
            self._settle_refused(exc)
            if not resend:
                raise ChecksumRefused(str(exc), code=exc.code, status=exc.status) from exc
            sent = _without_learned(sent)
            stored = await send(sent)
        if teaching:
            self.learn(sent, stored.checksum_crc32c)
        return stored, sent

    def learn(self, sent: dict[str, str], answered: str | None) -> None:
        """A teaching body was stored: `sent`, its checksum parameters; `answered`, the
        `x-amz-checksum-crc32c` of the server's answer (None without one)."""
        if self.learning:
            self.learning = False
            if answered is not None and answered == sent.get(LEARNED_PARAMETER):
                self.algorithm, self.basis = LEARNED, "echo"
                log.info("the server verifies x-amz-checksum-crc32c: sending it instead of "
                         "Content-MD5 from now on (transfer.checksum: auto)")
            else:
                self.basis = "no echo"
                log.info("the server does not answer x-amz-checksum-crc32c: sending "
                         "Content-MD5 (transfer.checksum: auto)")
        self._end_lesson()

    def declaration_refused(self, exc: BaseException, declared: str) -> bool:
        """Was `exc` the refusal of a multipart upload's creation that declared crc32c
        unasked (`for_new_upload`)? Then the choice settles on md5, and the upload is
        created again without a declaration."""
        if not (self.adaptive and declared == LEARNED and isinstance(exc, PermanentError)
                and exc.status in REFUSAL_STATUSES):
            return False
        self._settle_refused(exc)
        return True

    def _settle_refused(self, exc: PermanentError) -> None:
        if self.basis != "refusal":  # said once
            log.info("the server refuses the flexible checksums (%s): sending Content-MD5 "
                     "(transfer.checksum: auto)", exc)
        self.learning, self.algorithm, self.basis = False, FALLBACK, "refusal"
        self._end_lesson()

    def _end_lesson(self) -> None:
        lesson, self._lesson = self._lesson, None
        if lesson is not None and not lesson.done():
            lesson.set_result(None)

    def can_resume(self, algorithm: str) -> bool:
        """Whether a journaled multipart upload made with `algorithm` may go on: under
        `auto` off AWS, with whichever of the two it was created with."""
        if self.adaptive:
            return algorithm in (FALLBACK, LEARNED)
        return algorithm == self.algorithm


_BOTH_PARAMETERS = {PARAMETER[FALLBACK], LEARNED_PARAMETER}


def _both(body: bytes | memoryview) -> dict[str, str]:
    return {**request_parameters(FALLBACK, body), **request_parameters(LEARNED, body)}


def _without_learned(sent: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in sent.items() if name != LEARNED_PARAMETER}
