"""The retry layer's rules, exactly: what is retried, how long it waits, when it stops."""

from __future__ import annotations

import asyncio

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from uploader.errors import ConnectionFailure, PermanentError, ThrottleError, TransientError
from uploader.breaker import BreakerState, CircuitBreaker
from uploader.clock import FakeClock
from uploader.limiter import RateLimiter
from uploader.retry import RetryPolicy
from uploader.retry_budget import RetryBudget
from uploader.s3errors import translate


def client_error(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "msg"},
                        "ResponseMetadata": {"HTTPStatusCode": status,
                                             "HTTPHeaders": headers or {}}}, "PutObject")


@pytest.mark.parametrize(("exc", "kind"), [
    (client_error("SlowDown", 503), ThrottleError),
    (client_error("ServiceUnavailable", 503), ThrottleError),
    (client_error("503", 503), ThrottleError),  # a HEAD's 503 has no body
    (client_error("TooManyRequests", 429), ThrottleError),
    (client_error("InternalError", 500), TransientError),
    (client_error("502", 502), TransientError),
    (client_error("504", 504), TransientError),
    (client_error("RequestTimeout", 400), TransientError),
    (client_error("AccessDenied", 403), PermanentError),
    (client_error("NoSuchBucket", 404), PermanentError),
    (client_error("InvalidArgument", 400), PermanentError),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), ConnectionFailure),
    (ConnectionResetError(104, "Connection reset by peer"), ConnectionFailure),
])
def test_classification(exc, kind):
    translated = translate(exc, what="PUT s3://b/k")
    assert type(translated) is kind
    assert "PUT s3://b/k" in str(translated)


def test_retry_after_header_is_read():
    assert translate(client_error("SlowDown", 503, {"Retry-After": "3"}),
                     what="x").retry_after == 3.0
    assert translate(client_error("SlowDown", 503, {"x-amz-retry-after": "1500"}),
                     what="x").retry_after == 1.5


class Script:
    """An operation that fails with the given errors, then succeeds."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def policy(sleeps: list[float], **kwargs) -> RetryPolicy:
    """A policy on a fake clock whose sleeps land in `sleeps` (and take no real time)."""
    clock = kwargs.pop("clock", None) or FakeClock(autoadvance=True)
    clock.sleeps = sleeps
    defaults = {"max_attempts": 5, "base_seconds": 0.1, "cap_seconds": 1.0}
    return RetryPolicy(**{**defaults, **kwargs}, clock=clock, rng=lambda: 1.0)


async def test_transient_errors_are_retried_with_growing_capped_backoff():
    sleeps: list[float] = []
    operation = Script(client_error("SlowDown", 503), client_error("InternalError", 500),
                       ConnectionResetError(), client_error("502", 502))
    assert await policy(sleeps).call(operation, what="PUT") == "done"
    assert operation.calls == 5
    assert sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8])


async def test_permanent_errors_are_not_retried():
    sleeps: list[float] = []
    operation = Script(client_error("AccessDenied", 403))
    with pytest.raises(PermanentError, match="AccessDenied"):
        await policy(sleeps).call(operation, what="PUT")
    assert operation.calls == 1 and sleeps == []


async def test_attempts_are_bounded():
    sleeps: list[float] = []
    operation = Script(*[client_error("SlowDown", 503)] * 10)
    with pytest.raises(ThrottleError):
        await policy(sleeps, max_attempts=3).call(operation, what="PUT")
    assert operation.calls == 3 and len(sleeps) == 2


async def test_retry_after_is_honoured_but_capped():
    sleeps: list[float] = []
    operation = Script(client_error("SlowDown", 503, {"Retry-After": "0.7"}),
                       client_error("SlowDown", 503, {"Retry-After": "60"}))
    await policy(sleeps).call(operation, what="PUT")
    assert sleeps == pytest.approx([0.7, 1.0])


# ------------------------------------------------- the policy's collaborators
async def test_throttles_cut_the_partition_rate_and_successes_do_not():
    clock = FakeClock(autoadvance=True)
    limiter = RateLimiter(clock=clock)
    retry = policy([], clock=clock, limiter=limiter)
    await retry.call(Script(client_error("SlowDown", 503)), what="PUT", partition="b/hot")
    await retry.call(Script(client_error("InternalError", 500)), what="PUT", partition="b/cool")
    assert limiter.current_rate("b/hot") is not None  # throttled: now paced
    assert limiter.current_rate("b/cool") is None  # a 500 is not throttling
    assert limiter.snapshot()["b/hot"].throttles == 1
    assert retry.throttles == 1 and retry.retries == 2
    assert retry.retries_by_code == {"SlowDown": 1, "InternalError": 1}


async def test_every_attempt_leaves_the_limiter_however_it_ends():
    """A permit is in flight until its attempt ends: answered, throttled, refused, not
    answered at all, or cancelled. One left behind would keep its partition forever."""
    clock = FakeClock(autoadvance=True)
    limiter = RateLimiter(clock=clock)
    retry = policy([], clock=clock, limiter=limiter, max_attempts=2)
    await retry.call(Script(client_error("SlowDown", 503)), what="PUT", partition="b/p")
    with pytest.raises(PermanentError):
        await retry.call(Script(client_error("AccessDenied", 403)), what="PUT", partition="b/p")
    with pytest.raises(ConnectionFailure):
        await retry.call(Script(ConnectionResetError(), ConnectionResetError()), what="PUT",
                         partition="b/p")

    async def never_answers() -> str:
        await asyncio.Event().wait()
        return "unreachable"

    hanging = asyncio.create_task(retry.call(never_answers, what="PUT", partition="b/p"))
    await asyncio.sleep(0)
    assert limiter.snapshot()["b/p"].in_flight == 1
    hanging.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hanging
    assert limiter.snapshot()["b/p"].in_flight == 0


async def test_an_empty_retry_budget_stops_retries_and_successes_refill_it():
    budget = RetryBudget(capacity=10, retry_cost=5, success_reward=1)
    retry = policy([], budget=budget, max_attempts=10)
    operation = Script(*[client_error("InternalError", 500)] * 5)
    with pytest.raises(TransientError):
        await retry.call(operation, what="PUT")
    assert operation.calls == 3  # two retries paid for, the third refused
    assert budget.available == 0 and budget.refused == 1
    await retry.call(Script(), what="PUT")
    assert budget.available == 1


@pytest.mark.parametrize("code, status, retried", [
    ("RequestTimeTooSkewed", 403, True), ("InternalError", 500, False)])
async def test_a_retry_after_a_clock_skew_refusal_is_not_the_budgets_to_pay(code, status,
                                                                            retried):
    """After a clock jump every request in flight is refused once, and the refusal sets the
    signing clock right: those retries cost no tokens, where a server's failure's do."""
    budget = RetryBudget(capacity=4, retry_cost=5)  # not enough for one paid retry
    retry = policy([], budget=budget)
    operation = Script(client_error(code, status))
    if retried:
        assert await retry.call(operation, what="PUT") == "done"
    else:
        with pytest.raises(TransientError):
            await retry.call(operation, what="PUT")
    assert operation.calls == (2 if retried else 1)
    assert budget.refused == (0 if retried else 1)


async def test_a_successful_retry_gives_its_cost_back():
    budget = RetryBudget(capacity=100, retry_cost=5, timeout_retry_cost=10)
    retry = policy([], budget=budget)
    await retry.call(Script(ConnectionResetError()), what="PUT")
    assert budget.available == 100


async def test_connection_failures_open_the_breaker_and_callers_wait_queued():
    clock = FakeClock()
    breaker = CircuitBreaker(endpoint="s3", clock=clock, failure_threshold=2, open_seconds=5)
    retry = RetryPolicy(max_attempts=10, base_seconds=0.01, cap_seconds=0.01, clock=clock,
                        breaker=breaker, rng=lambda: 0.0)
    down = Script(*[ConnectionResetError()] * 3)
    first = asyncio.ensure_future(retry.call(down, what="PUT"))
    await clock.settle()
    await clock.advance(0.0)
    assert breaker.state is BreakerState.OPEN
    calls_when_opened = down.calls
    assert calls_when_opened == 2
    later = Script()
    second = asyncio.ensure_future(retry.call(later, what="PUT"))
    await clock.advance(4.9)
    assert later.calls == 0 and down.calls == calls_when_opened  # nothing sent while open
    await clock.advance(0.2)  # half-open: one probe (fails: reopens for 10 s)
    assert down.calls + later.calls == calls_when_opened + 1
    assert breaker.state is BreakerState.OPEN
    await clock.advance(10.1)  # the next probe succeeds; everyone else goes
    assert await first == "done" and await second == "done"
    assert breaker.state is BreakerState.CLOSED


async def test_a_probe_cancelled_before_it_answers_lets_the_next_caller_probe():
    """Half-open, the probe's caller is cancelled (a sibling part failed, shutdown): the
    probe is released, so the next caller probes now instead of every caller waiting
    out the probe's timeout (60 s)."""
    clock = FakeClock()
    breaker = CircuitBreaker(endpoint="s3", clock=clock, failure_threshold=1, open_seconds=5,
                             probe_timeout_seconds=60)
    retry = RetryPolicy(max_attempts=1, base_seconds=0.01, cap_seconds=0.01, clock=clock,
                        breaker=breaker, rng=lambda: 0.0)
    breaker.record_failure()  # open for 5 s
    hanging = asyncio.Event()

    async def never_answers() -> str:
        hanging.set()
        await asyncio.Event().wait()
        return "unreachable"

    probe = asyncio.ensure_future(retry.call(never_answers, what="PUT probe"))
    await clock.advance(5.1)  # half-open: the probe goes out and hangs
    await asyncio.wait_for(hanging.wait(), 1)
    next_call = Script()
    second = asyncio.ensure_future(retry.call(next_call, what="PUT"))
    await clock.advance(1.0)
    assert next_call.calls == 0  # the probe is still out
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    await clock.advance(0.0)
    assert await asyncio.wait_for(second, 1) == "done"
    assert breaker.state is BreakerState.CLOSED
