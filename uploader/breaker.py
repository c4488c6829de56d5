"""A circuit breaker per endpoint: stop hammering an endpoint that is down.

When an endpoint fails over and over (connection refused, resets, a run of
5xx), every further attempt only burns retry budget and time. The breaker
*opens*: callers then wait in `wait_until_allowed` (they queue; nothing is
failed or lost) until `open_seconds` have passed. It then goes *half-open* and
lets exactly one probe request through; success closes it and releases every
waiter at once, failure reopens it for longer (`backoff`, up to
`max_open_seconds`), so a long outage costs a probe every minute rather than
a storm of retries.

A run that must end (`uploader upload`) does not wait out an outage forever:
with `give_up_after_failed_probes`, once that many probes in a row have failed,
every caller, waiting or new, gets `EndpointDown` at once, and the run ends
with the files left failed. The daemon waits as long as it takes.

Throttling (503 SlowDown, 429) is not an endpoint failure: the rate limiter
handles it. The retry layer records it as a success here, because a throttle
proves the endpoint is up and answering.
Results that arrive while the breaker is open came from requests sent before
it opened and are ignored.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Callable

from uploader.clock import Clock
from uploader.errors import EndpointDown

log = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: Called as on_change(endpoint, old_state, new_state) on every transition.
StateListener = Callable[[str, BreakerState, BreakerState], None]


class CircuitBreaker:
    """One endpoint's breaker. Single event loop; not thread-safe."""

    def __init__(self, *, endpoint: str, clock: Clock, failure_threshold: int = 5,
                 open_seconds: float = 5.0, backoff: float = 2.0,
                 max_open_seconds: float = 60.0, probe_timeout_seconds: float = 60.0,
                 give_up_after_failed_probes: int | None = None,
                 on_change: StateListener | None = None) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if not 0 < open_seconds <= max_open_seconds:
            raise ValueError("need 0 < open_seconds <= max_open_seconds, got "
                             f"{open_seconds} and {max_open_seconds}")
        if backoff < 1:
            raise ValueError(f"backoff must be >= 1, got {backoff}")
        if probe_timeout_seconds <= 0:
            raise ValueError(f"probe_timeout_seconds must be > 0, got {probe_timeout_seconds}")
        if give_up_after_failed_probes is not None and give_up_after_failed_probes < 1:
            raise ValueError("give_up_after_failed_probes must be >= 1 or None, got "
                             f"{give_up_after_failed_probes}")
        self.endpoint = endpoint
        self._clock = clock
        self._failure_threshold = failure_threshold
        self._base_open_seconds = open_seconds
        self._backoff = backoff
        self._max_open_seconds = max_open_seconds
        self._probe_timeout = probe_timeout_seconds
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0  # consecutive, while closed
        self._open_seconds = open_seconds  # the current (growing) open period
        self._open_until = 0.0
        self._probe_deadline: float | None = None  # a probe is out until then
        self._give_up_after = give_up_after_failed_probes
        self._failed_probes = 0  # in a row
        self._first_opened = 0.0  # when the current outage began
        self.down: str | None = None  # given up on the endpoint: why
        self._changed = asyncio.Event()
        self.opened = 0  # how many times it opened, for metrics

    # ------------------------------------------------------------- state
    @property
    def state(self) -> BreakerState:
        """The current state (an expired open period reads as half-open)."""
        if self._state is BreakerState.OPEN and self._clock.monotonic() >= self._open_until:
            self._set_state(BreakerState.HALF_OPEN)
        return self._state

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next state change (a fresh event after each one)."""
        return self._changed

    def _set_state(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        if new is not BreakerState.HALF_OPEN:
            self._probe_deadline = None
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change(self.endpoint, old, new)

    # ---------------------------------------------------------- gatekeeping
    def allow(self) -> bool:
        """May a request be sent now? Never waits.

        In half-open, True hands out *the* probe: the caller must send it and
        report the result, or no other request passes until the probe times out.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        now = self._clock.monotonic()
        if self._probe_deadline is not None and now < self._probe_deadline:
            return False  # the probe is still out
        self._probe_deadline = now + self._probe_timeout
        return True

    async def wait_until_allowed(self) -> bool:
        """Wait (queued, not failed) until `allow()` says yes. True: the caller holds the
        half-open probe, and must report its result or `release_probe`. Raises
        EndpointDown once the breaker has given up on the endpoint (see the module)."""
        while True:
            if self.down is not None:  # a new error each time: a shared one's traceback grows
                raise EndpointDown(self.down, code="EndpointDown")
            if self.allow():
                return self.state is BreakerState.HALF_OPEN
            await self._wait_for_change(self._seconds_until_retry())

    def release_probe(self) -> None:
        """The probe was never sent (its caller was cancelled): the next caller may send
        one now, rather than every caller waiting out the probe's timeout."""
        if self.state is BreakerState.HALF_OPEN and self._probe_deadline is not None:
            self._probe_deadline = None
            self._changed.set()
            self._changed = asyncio.Event()

    def _seconds_until_retry(self) -> float:
        now = self._clock.monotonic()
        if self._state is BreakerState.OPEN:
            return max(0.0, self._open_until - now)
        assert self._probe_deadline is not None  # half-open with the probe out
        return max(0.0, self._probe_deadline - now)

    async def _wait_for_change(self, timeout: float) -> None:
        """Until the state changes or `timeout` passes on the clock, whichever is first."""
        changed = asyncio.ensure_future(self._changed.wait())
        timer = asyncio.ensure_future(self._clock.sleep(timeout))
        try:
            await asyncio.wait({changed, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (changed, timer):
                task.cancel()
            # Collect both, so neither is left pending nor its exception unread.
            await asyncio.gather(changed, timer, return_exceptions=True)

    # -------------------------------------------------------------- results
    def record_success(self, *, probe: bool = True) -> None:
        """A request to the endpoint got an answer (even an error answer like 404).

        `probe`: whether the request was the half-open probe (`wait_until_allowed`
        says). Half-open, only the probe's result counts: an answer to a request
        sent before the breaker opened (a long part upload) says nothing about now.
        """
        self._failures = 0
        if self.state is BreakerState.HALF_OPEN and probe:
            self._open_seconds = self._base_open_seconds
            self._failed_probes = 0
            self._set_state(BreakerState.CLOSED)
        # While open, a success came from a request sent before it opened: it
        # says nothing about now, and the breaker stays open.

    def record_failure(self, *, probe: bool = True) -> None:
        """A connection failure, timeout or 5xx (not a throttle) from the endpoint.
        `probe`: as for `record_success`."""
        state = self.state
        if state is BreakerState.OPEN:
            return  # sent before it opened; already counted
        if state is BreakerState.HALF_OPEN:
            if probe:
                self._failed_probes += 1
                self._open_seconds = min(self._max_open_seconds,
                                         self._open_seconds * self._backoff)
                self._give_up_if_due()
                self._open()
            return
        self._failures += 1
        if self._failures >= self._failure_threshold:
            self._open()

    def _give_up_if_due(self) -> None:
        if self._give_up_after is None or self._failed_probes < self._give_up_after:
            return
        seconds = self._clock.monotonic() - self._first_opened
        self.down = (f"{self.endpoint}: {self._failed_probes} probes in a row failed over "
                     f"{seconds:.0f}s (circuit breaker); giving up on the requests left")
        log.error("%s", self.down)

    def _open(self) -> None:
        if self._failed_probes == 0:
            self._first_opened = self._clock.monotonic()
        self._failures = 0
        self._open_until = self._clock.monotonic() + self._open_seconds
        self.opened += 1
        self._set_state(BreakerState.OPEN)
