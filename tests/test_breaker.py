"""The circuit breaker: every transition, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from uploader.breaker import BreakerState, CircuitBreaker
from uploader.clock import FakeClock
from uploader.errors import EndpointDown

pytestmark = pytest.mark.timeout(10)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def transitions() -> list[tuple[BreakerState, BreakerState]]:
    return []


@pytest.fixture
def make_breaker(clock, transitions):
    def make(**overrides) -> CircuitBreaker:
        settings = {"clock": clock, "failure_threshold": 3, "open_seconds": 10.0, "backoff": 2.0,
                    "max_open_seconds": 30.0, "probe_timeout_seconds": 5.0}
        settings.update(overrides)
        return CircuitBreaker(endpoint="s3.test",
                              on_change=lambda _, old, new: transitions.append((old, new)),
                              **settings)
    return make


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.record_failure()


def test_stays_closed_below_the_threshold_and_successes_reset_the_count(make_breaker):
    breaker = make_breaker()
    fail(breaker, 2)
    breaker.record_success()
    fail(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.allow()


def test_opens_after_consecutive_failures(make_breaker, transitions):
    breaker = make_breaker()
    fail(breaker, 3)
    assert breaker.state is OPEN
    assert not breaker.allow()
    assert transitions == [(CLOSED, OPEN)]
    assert breaker.opened == 1


def test_results_of_requests_sent_before_it_opened_are_ignored(make_breaker):
    breaker = make_breaker()
    fail(breaker, 3)
    breaker.record_success()
    fail(breaker, 10)
    assert breaker.state is OPEN
    assert breaker.opened == 1


def test_goes_half_open_after_the_open_period(make_breaker, clock, transitions):
    breaker = make_breaker()
    fail(breaker, 3)
    clock.now = 9.999
    assert breaker.state is OPEN
    clock.now = 10.0
    assert breaker.state is HALF_OPEN
    assert transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_half_open_lets_exactly_one_probe_through(make_breaker, clock):
    breaker = make_breaker()
    fail(breaker, 3)
    clock.now += 10.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()
    assert not breaker.allow()


def test_a_probe_that_never_reports_is_replaced_after_its_timeout(make_breaker, clock):
    breaker = make_breaker()
    fail(breaker, 3)
    clock.now = 10.0
    assert breaker.allow()
    clock.now = 14.999
    assert not breaker.allow()
    clock.now = 15.0
    assert breaker.allow()  # a new probe


def test_probe_success_closes(make_breaker, clock, transitions):
    breaker = make_breaker()
    fail(breaker, 3)
    clock.now += 10.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED
    assert breaker.allow() and breaker.allow()
    assert transitions[-1] == (HALF_OPEN, CLOSED)


def test_probe_failure_reopens_for_longer_up_to_the_cap(make_breaker, clock):
    breaker = make_breaker()
    fail(breaker, 3)
    opened_at = 0.0
    for open_seconds in (10.0, 20.0, 30.0, 30.0):  # doubling, capped at 30
        clock.now = opened_at + open_seconds - 0.001
        assert breaker.state is OPEN
        clock.now = opened_at = opened_at + open_seconds
        assert breaker.allow()
        breaker.record_failure()
        assert breaker.state is OPEN
    assert breaker.opened == 5


def test_closing_resets_the_open_period(make_breaker, clock):
    breaker = make_breaker()
    fail(breaker, 3)
    clock.now += 10.0
    breaker.allow()
    breaker.record_failure()  # reopened for 20 s
    clock.now += 20.0
    breaker.allow()
    breaker.record_success()
    fail(breaker, 3)
    clock.now += 10.0
    assert breaker.state is HALF_OPEN  # back to 10 s


async def test_waiters_queue_while_open_and_go_when_the_probe_succeeds(make_breaker, clock):
    breaker = make_breaker()
    fail(breaker, 3)
    released: list[int] = []

    async def caller(index: int) -> None:
        await breaker.wait_until_allowed()
        released.append(index)

    async with asyncio.TaskGroup() as group:
        for index in range(3):
            group.create_task(caller(index))
        await clock.advance(9.0)
        assert released == []  # waiting, not failed
        await clock.advance(1.0)
        assert released == [0]  # the probe, and only it
        await clock.advance(1.0)
        assert released == [0]
        breaker.record_success()
        await clock.settle()
        assert released == [0, 1, 2]  # at once, not at the next timer


async def test_waiters_sleep_again_when_the_probe_fails(make_breaker, clock):
    breaker = make_breaker()
    fail(breaker, 3)
    await clock.advance(10.0)
    assert breaker.allow()  # someone else's probe is out
    waiter = asyncio.create_task(breaker.wait_until_allowed())
    await clock.settle()
    breaker.record_failure()  # reopens for 20 s
    await clock.advance(19.5)
    assert not waiter.done()
    await clock.advance(0.5)
    assert waiter.done()  # it is the next probe
    await waiter


async def test_a_run_that_must_end_gives_up_after_its_failed_probes(make_breaker, clock):
    """give_up_after_failed_probes=2: the waiters wait through the first failed probe and
    fail at the second, and so does every caller after; with None they wait on."""
    ending, daemon = make_breaker(give_up_after_failed_probes=2), make_breaker()
    for breaker in (ending, daemon):
        fail(breaker, 3)
    waiters = {breaker: asyncio.create_task(breaker.wait_until_allowed())
               for breaker in (ending, daemon)}
    for elapsed in (10.0, 20.0):  # each open period, then its probe fails
        await clock.advance(elapsed)
        for breaker, waiter in waiters.items():
            if waiter.done():  # it held the probe; the next caller waits
                assert await waiter is True
                waiters[breaker] = asyncio.create_task(breaker.wait_until_allowed())
            breaker.record_failure()
        await clock.settle()
    with pytest.raises(EndpointDown, match="2 probes in a row failed over 30s"):
        await waiters[ending]
    with pytest.raises(EndpointDown):
        await ending.wait_until_allowed()  # a new caller: at once, no waiting
    assert not waiters[daemon].done()  # the daemon's breaker waits for the next probe
    await clock.advance(30.0)
    assert await waiters[daemon] is True


async def test_a_probe_that_succeeds_resets_the_count_of_failed_ones(make_breaker, clock):
    breaker = make_breaker(give_up_after_failed_probes=2)
    for outage in range(2):  # two outages of one failed probe each: no give-up
        fail(breaker, 3)
        await clock.advance(10.0 * (1 + outage))
        assert await breaker.wait_until_allowed() is True
        breaker.record_failure()
        await clock.advance(20.0)
        assert await breaker.wait_until_allowed() is True
        breaker.record_success()
    assert breaker.state is CLOSED and breaker.down is None


async def test_wait_until_allowed_returns_at_once_when_closed(make_breaker):
    breaker = make_breaker(clock=FakeClock(forbid_sleep=True))
    await breaker.wait_until_allowed()


async def test_a_cancelled_waiter_leaves_nothing_behind(make_breaker, clock):
    breaker = make_breaker()
    fail(breaker, 3)
    waiter = asyncio.create_task(breaker.wait_until_allowed())
    await clock.settle()
    assert clock.pending == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert clock.pending == 0


async def test_changed_event_fires_on_each_transition(make_breaker, clock):
    breaker = make_breaker()
    first = breaker.changed
    fail(breaker, 3)
    assert first.is_set()
    second = breaker.changed
    assert not second.is_set()
    clock.now += 10.0
    assert breaker.state is HALF_OPEN
    assert second.is_set()


@pytest.mark.parametrize("bad", [{"failure_threshold": 0}, {"open_seconds": 0},
                                 {"open_seconds": 60.0, "max_open_seconds": 30.0},
                                 {"backoff": 0.5}, {"probe_timeout_seconds": 0}])
def test_rejects_nonsense_settings(make_breaker, bad):
    with pytest.raises(ValueError):
        make_breaker(**bad)


def test_half_open_only_the_probes_result_counts(make_breaker, clock, transitions):
    """A part upload sent before the breaker opened may answer while it is half-open: its
    success must not close it (no probe has shown the endpoint is back), nor its failure
    reopen it for longer; the probe's own result decides."""
    breaker = make_breaker()
    fail(breaker, 3)
    clock.now += 10.0
    assert breaker.state is HALF_OPEN and breaker.allow()  # the probe is out
    breaker.record_success(probe=False)  # an old request's answer
    assert breaker.state is HALF_OPEN
    breaker.record_failure(probe=False)
    assert breaker.state is HALF_OPEN
    breaker.record_success(probe=True)
    assert breaker.state is CLOSED
    assert transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
