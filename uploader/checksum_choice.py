"""Which integrity checksum new uploads carry, learned from the server under `auto`.

`transfer.checksum: auto` is `crc32c` on AWS from the start: every region
verifies `x-amz-checksum-crc32c`. Elsewhere it starts as `md5` (Content-MD5,
the one check every S3-compatible server makes), and the first PutObject
carries `x-amz-checksum-crc32c` as well; its answer decides:

- a server that knows the flexible checksums echoes `x-amz-checksum-crc32c`
  with the value sent, as AWS does, and verifies it (SeaweedFS answers a wrong
  one with BadDigest, tests/test_fastpath.py): from then on new uploads carry
  crc32c alone, at a fraction of MD5's CPU per byte. The echo is the proof: a
  server that echoed the value unchecked would be trusted wrongly (`md5` then);
- an answer without it settles on md5, and the extra header stops.

One PUT teaches at a time. While it is out, a PUT of a body of
`WAIT_FROM_BYTES` or more waits for its answer (one round trip, at start;
longer for the first write into a fresh bucket on some servers) rather than
hash it twice; a smaller one goes with Content-MD5, which costs less than the
wait. If the teaching PUT fails, the next PUT teaches.

Only single PUTs teach. A multipart upload declares its algorithm when it is
created and keeps it for every part, its completion and its resumption (it is
journaled with the upload), whatever the choice for new uploads becomes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Mapping

from uploader.checksums import PARAMETER, is_aws, request_parameters, resolve

log = logging.getLogger(__name__)

LEARNED = "crc32c"  # what a server that echoes it gets
LEARNED_PARAMETER = PARAMETER[LEARNED]
# MD5 runs at ~700 MB/s: 256 KiB cost ~0.4 ms of CPU, about a round trip to a nearby server.
WAIT_FROM_BYTES = 256 * 1024


Checksums = Callable[[bytes | memoryview], dict[str, str]]  # a body's checksum parameters


class ChecksumChoice:
    """The checksum for new uploads, shared by every worker of a process."""

    def __init__(self, setting: str, endpoint_url: str | None) -> None:
        self.algorithm = resolve(setting, endpoint_url)  # for new PUTs and multipart uploads
        self.adaptive = setting == "auto" and not is_aws(endpoint_url)
        self.learning = self.adaptive
        self._lesson: asyncio.Future[None] | None = None  # the teaching PUT's answer

    async def for_put(self, size: int) -> tuple[Checksums, bool]:
        """How to checksum the body (of `size` bytes) of the next PutObject, and whether
        this PUT teaches (then `learn` or `no_lesson` must follow)."""
        while self.learning:
            if self._lesson is None:
                self._lesson = asyncio.get_running_loop().create_future()
                return self._both, True
            if size < WAIT_FROM_BYTES:
                break
            await asyncio.shield(self._lesson)
        return self.put_parameters, False

    def put_parameters(self, body: bytes | memoryview) -> dict[str, str]:
        """botocore parameters carrying the chosen checksum of a PutObject's body."""
        return request_parameters(self.algorithm, body)

    def _both(self, body: bytes | memoryview) -> dict[str, str]:
        return {**request_parameters(self.algorithm, body), **request_parameters(LEARNED, body)}

    def learn(self, sent: Mapping[str, str], answered: str | None) -> None:
        """The teaching PUT was stored: `sent`, its checksum parameters; `answered`, the
        `x-amz-checksum-crc32c` of the server's answer (None without one)."""
        if self.learning:
            self.learning = False
            if answered is not None and answered == sent.get(LEARNED_PARAMETER):
                self.algorithm = LEARNED
                log.info("the server verifies x-amz-checksum-crc32c: sending it instead of "
                         "Content-MD5 from now on (transfer.checksum: auto)")
            else:
                log.info("the server does not answer x-amz-checksum-crc32c: sending "
                         "Content-MD5 (transfer.checksum: auto)")
        self._end_lesson()

    def no_lesson(self) -> None:
        """The teaching PUT failed: the next PUT teaches."""
        self._end_lesson()

    def _end_lesson(self) -> None:
        lesson, self._lesson = self._lesson, None
        if lesson is not None and not lesson.done():
            lesson.set_result(None)

    def can_resume(self, algorithm: str) -> bool:
        """Whether a journaled multipart upload made with `algorithm` may go on: under
        `auto` off AWS, with whichever of the two it was created with."""
        if self.adaptive:
            return algorithm in ("md5", LEARNED)
        return algorithm == self.algorithm
