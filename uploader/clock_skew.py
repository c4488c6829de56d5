"""Signing with the server's time when the local clock is off.

S3 refuses a request signed more than 15 minutes away from its own clock
(403 RequestTimeTooSkewed). On a machine whose clock is off (an edge box without NTP,
a VM resumed after days) every request was refused, retried and deferred, forever:
nothing was uploaded. As the AWS SDKs for Java, Go and JavaScript do, the offset is
learned from the refusal's `Date` header, and every later signature uses the local time
plus that offset, so the retry goes through. One offset for the process: there is one
local clock, and both planes sign with botocore's SigV4 signer, which reads the time
through `botocore.auth.get_current_datetime`; `install` wraps that one function (botocore
has no setting for it), so the control plane and the data path are corrected alike.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import time
from typing import Callable

import botocore.auth

log = logging.getLogger(__name__)

# Answers that mean "your signature's time is too far from mine".
SKEW_CODES = frozenset({"RequestTimeTooSkewed", "RequestExpired", "RequestInTheFuture"})
# The Date header counts whole seconds, and the answer took a moment to arrive.
NOISE_SECONDS = 2.0
# A 403 with no code (the answer to a HEAD has no body) whose Date is this far from the
# corrected clock is taken for a skew refusal (SigV4 allows 15 minutes; the AWS SDK for
# Java suspects 4). Wrongly so, it costs one retry, which then gets the real answer.
SUSPECT_SECONDS = 300.0

_offset_seconds = 0.0


def offset_seconds() -> float:
    """Seconds to add to the local clock to get the server's (0 until a skew is seen)."""
    return _offset_seconds


def learn(server_date: str | None, *, beyond: float = NOISE_SECONDS,
          local_now: Callable[[], float] = time.time) -> bool:
    """Take the server's time from a refusal's `Date` header (RFC 9110's format) if it is
    more than `beyond` seconds from the corrected clock; whether it was taken."""
    global _offset_seconds
    try:
        server = email.utils.parsedate_to_datetime(server_date or "").timestamp()
    except (TypeError, ValueError):
        return False  # no usable Date: nothing to learn; the retries say what happened
    offset = server - local_now()
    if abs(offset - _offset_seconds) < beyond:
        return False
    _offset_seconds = offset
    log.warning("the local clock is %.0f s %s the S3 server's (RequestTimeTooSkewed): "
                "requests are signed with the server's time from now on; set the clock "
                "right (NTP)", abs(offset), "behind" if offset > 0 else "ahead of")
    return True


def forget() -> None:
    """Back to the local clock as it is (for tests: a process keeps what it learned)."""
    global _offset_seconds
    _offset_seconds = 0.0


def install() -> None:
    """Make botocore's signer read the corrected time (idempotent)."""
    current = botocore.auth.get_current_datetime
    if getattr(current, "corrects_skew", False):
        return

    def corrected_now(remove_tzinfo: bool = True) -> datetime.datetime:
        return current(remove_tzinfo) + datetime.timedelta(seconds=_offset_seconds)

    corrected_now.corrects_skew = True  # type: ignore[attr-defined]
    botocore.auth.get_current_datetime = corrected_now
