"""The one retry layer: classification, backoff, rate limit, budget and breaker.

Every S3 request (a PUT, one part, a complete) goes through `RetryPolicy.call`.
Errors are first translated at the boundary (`uploader.s3errors`); only
`TransientError`s (which include throttling and connection failures) are
retried, except those a resend cannot cure (`RESTART_CODES`), which go straight
back to the caller. botocore's own retries are switched off in `uploader.s3client`.

Each attempt, in order:

1. waits while the endpoint's circuit breaker is open (queued, not failed; in a
   run that must end, until the breaker gives up on the endpoint: `EndpointDown`,
   not retried);
2. takes a permit from the shared per-partition rate limiter;
3. sends, and reports the answer: a throttle cuts the partition's rate; any
   other answer counts as a success for the limiter and the breaker; a
   connection failure or a non-throttle 5xx counts against the breaker (a
   transient 4xx, such as a skewed clock, is the endpoint answering).

Before a retry, the shared retry budget must pay for it (as the AWS SDKs'
standard mode); if it cannot, the error is raised instead, and the caller
keeps the file for later (`Outcome.DEFERRED`), so a fleet of tasks cannot
turn an outage into a retry storm. A retry after a clock-skew refusal is not
charged: the fault was our clock's, and the refusal corrected it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from uploader import clock_skew
from uploader.breaker import CircuitBreaker
from uploader.clock import Clock, SystemClock
from uploader.errors import (
    ConnectionFailure,
    EndpointDown,
    ThrottleError,
    TransferError,
    TransientError,
)
from uploader.limiter import Permit, RateLimiter
from uploader.retry_budget import RetryBudget
from uploader.s3errors import RESTART_CODES, translate

T = TypeVar("T")
log = logging.getLogger(__name__)


def backoff_delay(*, attempt: int, base: float, cap: float, uniform: float) -> float:
    """Full jitter: a uniform draw in [0, min(cap, base * 2**(attempt-1))]."""
    return uniform * min(cap, base * 2 ** (attempt - 1))


@dataclass
class _Call:
    """One logical request across its attempts."""

    what: str
    partition: str | None
    nbytes: int
    retry_cost: int | None = None  # what the budget charged for the latest retry


class RetryPolicy:
    """Shared by every request; holds the limiter, the budget and the breaker (all optional)."""

    def __init__(self, *, max_attempts: int, base_seconds: float, cap_seconds: float,
                 clock: Clock | None = None, limiter: RateLimiter | None = None,
                 budget: RetryBudget | None = None, breaker: CircuitBreaker | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.max_attempts = max_attempts
        self.base_seconds = base_seconds
        self.cap_seconds = cap_seconds
        self.clock = clock or SystemClock()
        self.limiter = limiter
        self.budget = budget
        self.breaker = breaker
        self._rng = rng
        self.retries = 0
        self.throttles = 0
        self.retries_by_code: collections.Counter[str] = collections.Counter()

    async def call(self, operation: Callable[[], Awaitable[T]], *, what: str,
                   partition: str | None = None, nbytes: int = 0) -> T:
        """Run `operation`, retrying transient failures; raise a TransferError otherwise.

        `partition` (see `uploader.limiter.partition_for`) selects the rate
        limiter's bucket; None sends unlimited (reads and control requests).
        """
        call = _Call(what=what, partition=partition, nbytes=nbytes)
        # The first attempt runs outside tenacity: most requests need no retry,
        # and building the retry machinery for each one cost ~5% of the CPU of
        # a small-file upload. A failure is handed to tenacity as its attempt 1.
        try:
            return await self._attempt(operation, call)
        except TransientError as exc:
            if not _worth_resending(exc):
                raise
            first_failure: TransientError | None = exc
        retrying = AsyncRetrying(
            stop=lambda state: self._stop(state, call),
            wait=self._wait,
            retry=retry_if_exception(_worth_resending),
            sleep=self.clock.sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if first_failure is not None:
                    failure, first_failure = first_failure, None
                    raise failure
                return await self._attempt(operation, call)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    # ------------------------------------------------------------ one attempt
    async def _attempt(self, operation: Callable[[], Awaitable[T]], call: _Call) -> T:
        try:
            probe = self.breaker is not None and await self.breaker.wait_until_allowed()
        except EndpointDown as exc:  # named like every other failure: by its request
            raise EndpointDown(f"{call.what}: not sent: {exc}", code=exc.code) from None
        try:
            return await self._permitted_attempt(operation, call, probe=probe)
        except asyncio.CancelledError:
            if probe:  # cancelled holding the half-open probe: let another caller probe
                self.breaker.release_probe()  # type: ignore[union-attr]
            raise

    async def _permitted_attempt(self, operation: Callable[[], Awaitable[T]], call: _Call,
                                 *, probe: bool) -> T:
        permit = await self._permit(call)
        try:
            return await self._send(operation, call, permit, probe=probe)
        finally:
            if permit is not None:  # answered, failed or cancelled: no longer in flight
                self.limiter.release(permit)  # type: ignore[union-attr]

    async def _send(self, operation: Callable[[], Awaitable[T]], call: _Call,
                    permit: Permit | None, *, probe: bool) -> T:
        try:
            result = await _translated(operation, what=call.what)
        except ThrottleError:
            self.throttles += 1
            if permit is not None:
                self.limiter.on_throttle(permit.partition, sent_at=permit.sent_at)  # type: ignore[union-attr]
            self._endpoint_answered(probe)  # the server is up, just busy
            raise
        except ConnectionFailure:
            self._endpoint_failed(probe)  # no answer: the limiter learns nothing
            raise
        except TransientError as exc:
            self._answered(permit)
            if exc.status is not None and exc.status < 500:
                self._endpoint_answered(probe)
            else:
                self._endpoint_failed(probe)
            raise
        except TransferError:
            self._answered(permit)  # a permanent error is still an answer
            self._endpoint_answered(probe)
            raise
        self._answered(permit)
        self._endpoint_answered(probe)
        if self.budget is not None:
            self.budget.on_success(retry_cost=call.retry_cost)
        return result

    async def _permit(self, call: _Call) -> Permit | None:
        if self.limiter is None or call.partition is None:
            return None
        return await self.limiter.acquire(call.partition, nbytes=call.nbytes)

    def _answered(self, permit: Permit | None) -> None:
        if permit is not None and self.limiter is not None:
            self.limiter.on_success(permit.partition)

    def _endpoint_answered(self, probe: bool) -> None:
        if self.breaker is not None:
            self.breaker.record_success(probe=probe)

    def _endpoint_failed(self, probe: bool) -> None:
        if self.breaker is not None:
            self.breaker.record_failure(probe=probe)

    # ------------------------------------------------------- between attempts
    def _stop(self, state: RetryCallState, call: _Call) -> bool:
        """Stop when attempts are used up or the retry budget refuses to pay."""
        if state.attempt_number >= self.max_attempts:
            return True
        if self.budget is None:
            return False
        exc = state.outcome.exception() if state.outcome else None
        if getattr(exc, "code", None) in clock_skew.SKEW_CODES:
            # Our clock was off, not the server failing: the refusal's Date set the
            # signing clock right (`uploader.clock_skew`). After a clock jump every request
            # in flight is refused once; charged, their retries would drain the budget and
            # defer files that the very next attempt uploads.
            return False
        cost = self.budget.try_acquire(timeout=isinstance(exc, ConnectionFailure))
        if cost is None:
            log.warning("retry budget exhausted; not retrying %s now", call.what,
                        extra={"error_code": getattr(exc, "code", None)})
            return True
        call.retry_cost = cost
        return False

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
        code = getattr(exc, "code", None) or type(exc).__name__
        self.retries_by_code[code] += 1
        log.info("retrying after %s (attempt %d of %d)", exc, state.attempt_number,
                 self.max_attempts, extra={"attempt": state.attempt_number, "error_code": code})


def _worth_resending(exc: BaseException) -> bool:
    return (isinstance(exc, TransientError) and not isinstance(exc, EndpointDown)
            and exc.code not in RESTART_CODES)


async def _translated(operation: Callable[[], Awaitable[T]], *, what: str) -> T:
    try:
        return await operation()
    except asyncio.CancelledError:
        raise
    except TransferError:
        raise
    except Exception as exc:
        raise translate(exc, what=what) from exc
