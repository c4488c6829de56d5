"""The one retry layer: classification, exponential backoff with full jitter.

Every S3 request (a PUT, one part, a complete) goes through `RetryPolicy.call`.
Errors are first translated at the boundary (`uploader.s3errors`); only
`TransientError`s (which include throttling and connection failures) are
retried. botocore's own retries are switched off in `uploader.s3client`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Awaitable, Callable, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from uploader.errors import TransferError, TransientError
from uploader.s3errors import translate

T = TypeVar("T")
log = logging.getLogger(__name__)


def backoff_delay(*, attempt: int, base: float, cap: float, uniform: float) -> float:
    """Full jitter: a uniform draw in [0, min(cap, base * 2**(attempt-1))]."""
    return uniform * min(cap, base * 2 ** (attempt - 1))


class RetryPolicy:
    def __init__(self, *, max_attempts: int, base_seconds: float, cap_seconds: float,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: Callable[[], float] = random.random) -> None:
        self.max_attempts = max_attempts
        self.base_seconds = base_seconds
        self.cap_seconds = cap_seconds
        self._sleep = sleep
        self._rng = rng
        self.retries = 0

    def _wait(self, state: RetryCallState) -> float:
        delay = backoff_delay(attempt=state.attempt_number, base=self.base_seconds,
                              cap=self.cap_seconds, uniform=self._rng())
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            # The server said when to come back; never sooner, still capped.
            delay = max(delay, min(retry_after, self.cap_seconds))
        return delay

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.info("retrying after %s (attempt %d of %d)", exc, state.attempt_number,
                 self.max_attempts, extra={"attempt": state.attempt_number,
                                           "error_code": getattr(exc, "code", None)})

    async def call(self, operation: Callable[[], Awaitable[T]], *, what: str) -> T:
        """Run `operation`, retrying transient failures; raise a TransferError otherwise."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(TransientError),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await _translated(operation, what=what)
        raise AssertionError("unreachable: tenacity re-raises the last error")


async def _translated(operation: Callable[[], Awaitable[T]], *, what: str) -> T:
    try:
        return await operation()
    except asyncio.CancelledError:
        raise
    except TransferError:
        raise
    except Exception as exc:
        raise translate(exc, what=what) from exc
