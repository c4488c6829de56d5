"""The adaptive request-rate limiter: one shared object, one bucket per S3 partition.

S3 throttles per *partitioned prefix* (503 SlowDown beyond ~3,500 writes/s,
far earlier while a new prefix scales), so the limiter keeps one
`PrefixBucket` per partition key (`partition_for`). It is built once in the
daemon's wiring and handed to every worker and part upload. A throttled
partition never slows another: partitions share nothing but the optional
global bytes/s ceiling.

The policy, and why (botocore's adaptive mode reached 0.59 R against a proxy
allowing R = 200 PUT/s):

- **Unthrottled until the first throttle.** `acquire` returns without
  waiting, so the common case costs nothing and no first attempt is blocked.
- **Cut to a fraction of what the server actually served.** On a throttle,
  `w_max` becomes the *measured success rate*, not our previous target, and
  the rate drops to `beta * w_max`. While S3 throttles, what it serves *is*
  its limit, so the measurement converges on R even when our target was far
  off; and because w_max is measured, `beta` can be a gentle 0.85 (classic
  CUBIC's 0.7 would leave 30 % of the capacity idle after every probe). The measurement runs over `window_seconds`, shortened to the time since
  the last cut (older successes may have been paid for by the server's burst
  credit), and rests on at least `min_samples` answers.
- **One cut per epoch.** After a cut, the requests already in flight come back
  throttled too; cutting for each (botocore does) drives the rate to the floor.
  Every `Permit` carries its send time; a throttle of a request sent before
  the current epoch began (the cut plus one sending interval) is ignored.
- **Grow back with CUBIC, relative to `w_max`.** After a cut the rate follows
  `w_max * (1 + growth * (t - K)**3)`: concave back up to the last measured
  limit, a plateau just under it (where goodput is), then an accelerating
  probe that finds new capacity (S3 splits hot partitions). The constant is
  relative, so recovery takes the same few seconds at 5 req/s as at 3,500;
  AIMD would need a step tuned to the unknown R, and either crawl at high
  rates or overshoot at low ones.
- **Start-up is different.** Leaving the unthrottled state, all we know is
  how fast we were sending; the successes so far were paid for by the
  server's burst credit. So the first cut halves the send rate (TCP's
  multiplicative decrease), later cuts never go below `max_cut` of the rate
  in force (a thin or lagging measurement must not crash the rate), and this
  start-up episode grows back with the faster `startup_growth`.
- **Floor and release.** The rate never drops below `floor` (0.5 req/s), so a
  partition never stalls; after `release_after_seconds` without a cut the
  partition is unthrottled again, since CUBIC is far above any limit we knew.
- **Paced, not bursty.** The token bucket holds at most `burst_seconds` of the
  rate (at least one request) and is emptied on every cut: after a throttle
  the server's own bucket is empty, so saved-up credit would only buy more
  throttles. Waiters are served first come, first served, and re-read the
  rate at least every `recheck_seconds`, so cuts, growth and ceiling reloads
  reach callers already waiting.

Deterministic simulation (`tests/test_limiter.py`): 32 workers sending back
to back (throttled requests retried at once), a server token bucket of
R = 200 req/s with 1 s of burst (as the fault proxy), 20-60 ms latency, 30 s
on a fake clock. Goodput 1.03 R over the run and 1.005 R after the first 5 s
(so not just the server's initial burst), 0.61 % of requests throttled, most
while discovering R in the first half second. Against a stricter server
(0.1 s of burst): 0.999 R and 0.76 %. Across other seeds: 0.98-1.04 R,
0.45-0.9 %. botocore's adaptive algorithm in the same simulation: 0.44-0.51 R.

`has_room` tells the worker pool whether a partition's queue of waiters is
short (`queue_seconds` of its rate), so workers are not all parked on one
throttled partition while files for others wait (see `uploader.intake`).

Ceilings (`set_ceilings`, reloadable live): `max_requests_per_second` applies
to *each* partition (it caps the adaptive rate and applies even before any
throttle), because S3's limits are per partition; `max_bytes_per_second` is
*global* across all partitions, because it protects the uplink, which all
partitions share.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

from uploader.clock import Clock

#: Slack for float rounding, in tokens and in seconds.
_EPSILON = 1e-9


def partition_for(bucket: str, key: str, *, below: str = "") -> str:
    """The throttling partition of an object: the bucket plus the key's leading segment,
    or, for a key under `below`, `below` plus the segment that follows it.

    S3 partitions by key prefix; the first path segment is the finest prefix
    we can name without knowing how S3 split it. Hashed prefix spreading puts
    the hash after `s3.prefix` (`below`): each hash segment is a prefix S3 can
    split on, so each is a partition of its own. A key without "/" (after
    `below`) maps to "bucket/" (`bucket/below`).
    """
    if below and key.startswith(below):
        head, sep, _ = key[len(below):].partition("/")
        return f"{bucket}/{below}{head if sep else ''}"
    head, sep, _ = key.partition("/")
    return f"{bucket}/{head if sep else ''}"


@dataclass(frozen=True, kw_only=True)
class RatePolicy:
    """The adaptive policy's constants (the module docstring says why each exists)."""

    beta: float = 0.85
    """After a cut the rate is beta x w_max (the measured limit)."""
    growth: float = 0.004
    """Relative CUBIC constant, per s^3: back at w_max after cbrt((1 - beta) / growth) s."""
    startup_growth: float = 0.02
    """`growth` for the start-up episode, whose estimates are least certain."""
    max_cut: float = 0.5
    """One cut never sets w_max below this fraction of the rate in force."""
    floor: float = 0.5
    """Requests/s below which a partition is never slowed."""
    burst_seconds: float = 0.1
    """Client-side bucket capacity, in seconds of the current rate (at least one request)."""
    window_seconds: float = 1.0
    """Success-rate measurement window (shortened to the time since the last cut)."""
    sample_size: int = 64
    """Successes remembered per partition for the measurement (fixed memory)."""
    min_samples: int = 16
    """Fewest answers a measurement may rest on."""
    release_after_seconds: float = 30.0
    """A partition this long without a cut becomes unthrottled again."""
    unknown_send_time_grace: float = 1.0
    """A throttle reported without `sent_at` cuts only if the last cut is this old."""
    recheck_seconds: float = 0.5
    """Longest a waiter sleeps before reading the rate again."""
    queue_seconds: float = 0.1
    """`has_room`: a throttled partition has room while fewer than this many seconds of
    its rate (at least one request) are waiting for tokens."""
    bytes_burst_seconds: float = 1.0
    """Capacity of the global bytes/s bucket, in seconds of the ceiling."""

    def __post_init__(self) -> None:
        for name in ("beta", "max_cut"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("growth", "startup_growth", "floor", "burst_seconds", "window_seconds",
                     "release_after_seconds", "recheck_seconds", "bytes_burst_seconds",
                     "queue_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.min_samples <= self.sample_size:
            raise ValueError("need 1 <= min_samples <= sample_size, got "
                             f"{self.min_samples} and {self.sample_size}")


@dataclass(frozen=True)
class Permit:
    """Leave to send one request; hand `sent_at` back with a throttle."""

    partition: str
    sent_at: float


@dataclass(frozen=True, kw_only=True)
class PartitionStats:
    """A read-only view of one partition, for metrics and `status`."""

    rate: float | None
    w_max: float | None
    success_rate: float | None
    waiting: int
    in_flight: int
    cuts: int
    throttles: int
    ignored_throttles: int
    last_cut_at: float | None


class _Cubic:
    """The CUBIC curve after one cut, in requests/s."""

    def __init__(self, *, w_max: float, cut_at: float, beta: float, growth: float,
                 startup: bool) -> None:
        self.w_max = w_max
        self.cut_at = cut_at
        self.startup = startup
        self._growth = growth
        # K: when the curve, starting at beta * w_max, is back at w_max.
        self._k = ((1 - beta) / growth) ** (1 / 3)

    def rate(self, now: float) -> float:
        return self.w_max * (1 + self._growth * (now - self.cut_at - self._k) ** 3)


class _EventLog:
    """The times of the last `size` events, in a fixed-size ring (bounded memory)."""

    def __init__(self, *, size: int) -> None:
        self._times = array("d", [0.0] * size)
        self._recorded = 0

    def record(self, now: float) -> None:
        self._times[self._recorded % len(self._times)] = now
        self._recorded += 1

    def _newest_first(self) -> Iterator[float]:
        for back in range(min(self._recorded, len(self._times))):
            yield self._times[(self._recorded - 1 - back) % len(self._times)]

    def count_after(self, since: float) -> int:
        return sum(1 for t in self._newest_first() if t > since)

    def rate_since(self, now: float, *, since: float) -> float:
        """Events/s after `since` (over the ring's span if it holds only recent ones)."""
        count = self.count_after(since)
        if count == len(self._times):
            return self.rate_of_last(now, count=count) or 0.0
        return count / (now - since)

    def rate_of_last(self, now: float, *, count: int) -> float | None:
        """Events/s over the span of the last `count` events; None if fewer were seen."""
        times = list(self._newest_first())
        if len(times) < count:
            return None
        span = now - times[count - 1]
        return count / span if span > 0 else None


class _TokenBucket:
    """A first-come first-served token bucket whose rate may change at any time.

    Kept as two cumulative counters: `issued` (tokens promised to callers,
    sent or still waiting) and `minted` (tokens produced by the rate). A caller
    reserves its place in line and may go once `minted` reaches it; every later
    place is behind it, so nobody overtakes and each waiter sleeps once. A cost
    larger than the capacity waits only for a full bucket and then goes into
    debt that later callers pay off: one large part is not delayed, yet the
    long-run rate holds.
    """

    def __init__(self, *, burst_seconds: float) -> None:
        self._burst_seconds = burst_seconds
        self._issued = 0.0
        self._minted = 0.0
        self._rate: float | None = None
        self._at: float | None = None

    def _capacity(self, rate: float) -> float:
        return max(1.0, rate * self._burst_seconds)

    def refill(self, now: float, *, rate: float | None) -> None:
        """Mint tokens for the time since the last refill, at the rate then in force.

        Then adopt `rate` for the time from now on.
        """
        if self._at is not None and self._rate is not None:
            self._minted += self._rate * max(0.0, now - self._at)
        self._at = now
        if rate is None:
            self._minted = max(self._minted, self._issued)  # unlimited: no debt survives
        elif self._rate is None:
            self._minted = self._issued + self._capacity(rate)  # a new limit starts full
        else:
            self._minted = min(self._minted, self._issued + self._capacity(rate))
        self._rate = rate

    def drain(self) -> None:
        """Throw away saved-up credit (debt stays)."""
        self._minted = min(self._minted, self._issued)

    def reserve(self, cost: float) -> float:
        """Join the line; return the `minted` level at which this caller may go."""
        place = self._issued
        self._issued += cost
        if self._rate is None:
            return place
        return place + min(cost, self._capacity(self._rate))

    def refund(self, cost: float) -> None:
        """A caller left without sending: its tokens go to those behind it."""
        self._minted += cost

    def wait_seconds(self, place: float) -> float:
        """How long until `place` is reached at the current rate (0 if it has been)."""
        missing = place - self._minted
        if self._rate is None or missing <= _EPSILON:
            return 0.0
        wait = missing / self._rate
        return wait if wait > _EPSILON else 0.0  # a nanosecond early beats a futile nap


class PrefixBucket:
    """One partition: its token bucket, its measurements and its CUBIC state."""

    def __init__(self, *, policy: RatePolicy, now: float) -> None:
        self._policy = policy
        self.tokens = _TokenBucket(burst_seconds=policy.burst_seconds)
        self.ceiling: float | None = None
        self.waiting = 0
        self.admitted = 0  # callers let in by `RateLimiter.admit`, not yet at `acquire`
        self.in_flight = 0  # permits given and not yet released (requests on the wire)
        self.cuts = 0
        self.throttles = 0
        self.ignored_throttles = 0
        self.last_cut_at: float | None = None
        self._successes = _EventLog(size=policy.sample_size)
        self._throttled = _EventLog(size=policy.min_samples)
        self._sent = _EventLog(size=policy.sample_size)
        self._created_at = now
        self._first_answer_at: float | None = None
        self._cubic: _Cubic | None = None
        self._epoch_starts_at = -math.inf

    # ------------------------------------------------------------ the rate
    def adaptive_rate(self, now: float) -> float | None:
        """The CUBIC rate now, or None if unthrottled (never cut, or released)."""
        if self._cubic is None:
            return None
        if now - self._cubic.cut_at >= self._policy.release_after_seconds:
            self._cubic = None
            return None
        return max(self._policy.floor, self._cubic.rate(now))

    def rate(self, now: float) -> float | None:
        """The rate in force now: the adaptive rate capped by the ceiling."""
        limits = [r for r in (self.adaptive_rate(now), self.ceiling) if r is not None]
        return min(limits) if limits else None

    # ---------------------------------------------------------- the events
    def sent(self, now: float) -> None:
        self._sent.record(now)

    def success(self, now: float) -> None:
        self._answered(now)
        self._successes.record(now)

    def throttle(self, now: float, *, sent_at: float | None) -> bool:
        """Count a throttle and cut, unless its epoch was cut already. True if cut."""
        self._answered(now)
        self._throttled.record(now)
        self.throttles += 1
        if self._in_cut_epoch(now, sent_at):
            self.ignored_throttles += 1
            return False
        self._cut(now)
        return True

    def _answered(self, now: float) -> None:
        # Measure from the first answer, not from creation: the first round
        # trip brings no answers and would bias the estimate low.
        if self._first_answer_at is None:
            self._first_answer_at = now

    def _in_cut_epoch(self, now: float, sent_at: float | None) -> bool:
        if self.last_cut_at is None:
            return False
        if sent_at is None:
            return now - self.last_cut_at < self._policy.unknown_send_time_grace
        return sent_at < self._epoch_starts_at

    # ------------------------------------------------------------- the cut
    def _cut(self, now: float) -> None:
        current = self.rate(now)
        startup = self._in_startup_episode(now)
        self.tokens.refill(now, rate=current)  # the time before the cut counts at the old rate
        self._cubic = _Cubic(w_max=self._new_w_max(now, current), cut_at=now,
                             beta=self._policy.beta, startup=startup,
                             growth=self._policy.startup_growth if startup
                             else self._policy.growth)
        self.tokens.refill(now, rate=self.rate(now))
        self.tokens.drain()
        self.cuts += 1
        self.last_cut_at = now
        # A request sent within one interval of the cut was not yet paced by
        # the new rate (it may meet the server still empty): the new epoch
        # starts one interval later.
        self._epoch_starts_at = now + 1 / (self.rate(now) or self._policy.floor)

    def _new_w_max(self, now: float, current: float | None) -> float:
        if current is None:
            # Leaving unthrottled: halve what we were sending. What was served
            # so far was paid for by the server's burst credit.
            return max(self._policy.floor, self._policy.max_cut * self._send_rate(now))
        served = self.success_rate(now)
        w_max = current if served is None else min(served, current)
        return max(self._policy.floor, self._policy.max_cut * current, w_max)

    def _in_startup_episode(self, now: float) -> bool:
        """Leaving unthrottled, or a cut chained within a window to one that was."""
        if self.adaptive_rate(now) is None or self._cubic is None:
            return True
        chained = self.last_cut_at is not None and (
            now - self.last_cut_at < self._policy.window_seconds)
        return chained and self._cubic.startup

    # ------------------------------------------------------ measurements
    def _send_rate(self, now: float) -> float:
        since = max(now - self._policy.window_seconds, self._created_at - _EPSILON)
        if self._sent.count_after(since):
            return self._sent.rate_since(now, since=since)
        # Nothing sent within the window: only slow, long requests are out.
        return self._sent.rate_of_last(now, count=1) or self._policy.floor

    def success_rate(self, now: float) -> float | None:
        """What the server served lately: over the window, or since the last cut if later.

        Right after a cut the server is known to be saturated, so successes
        since then measure its limit. If fewer than `min_samples` answers came
        since then, the span stretches back over the last `min_samples`
        successes instead of trusting a handful.
        """
        if self._first_answer_at is None:
            return None
        since = max(now - self._policy.window_seconds, self._first_answer_at - _EPSILON)
        if self.last_cut_at is not None:
            since = max(since, self.last_cut_at)
        answers = self._successes.count_after(since) + self._throttled.count_after(since)
        if answers >= self._policy.min_samples:
            return self._successes.rate_since(now, since=since)
        return self._successes.rate_of_last(now, count=self._policy.min_samples)

    def stats(self, now: float) -> PartitionStats:
        return PartitionStats(
            rate=self.rate(now),
            w_max=self._cubic.w_max if self._cubic is not None else None,
            success_rate=self.success_rate(now),
            waiting=self.waiting,
            in_flight=self.in_flight,
            cuts=self.cuts,
            throttles=self.throttles,
            ignored_throttles=self.ignored_throttles,
            last_cut_at=self.last_cut_at,
        )


class _Admission:
    """A caller let in on a partition (`RateLimiter.admit`) until it first acquires there."""

    __slots__ = ("partition", "bucket", "arrived")

    def __init__(self, partition: str, bucket: PrefixBucket) -> None:
        self.partition = partition
        self.bucket = bucket
        self.arrived = False

    def arrive(self) -> None:
        if not self.arrived:
            self.arrived = True
            self.bucket.admitted -= 1


# The admission of the task (and of the tasks it starts, e.g. part uploads) running now.
_ADMISSION: contextvars.ContextVar[_Admission | None] = contextvars.ContextVar(
    "uploader_limiter_admission", default=None)


class RateLimiter:
    """The shared, per-partition adaptive limiter (create once, pass everywhere).

    The retry layer, per attempt::

        permit = await limiter.acquire(partition, nbytes=len(body))
        try:
            ...send...
            limiter.on_success(partition)                            # any non-throttle answer
            limiter.on_throttle(partition, sent_at=permit.sent_at)   # SlowDown, 503, 429, ...
        finally:
            limiter.release(permit)

    At most `max_partitions` partitions are remembered; beyond that the least
    recently used idle ones are forgotten (they start unthrottled again if they
    come back), so memory stays bounded however many prefixes we touch.
    """

    def __init__(self, *, clock: Clock, policy: RatePolicy | None = None,
                 adaptive: bool = True, max_partitions: int = 4096,
                 max_requests_per_second: float | None = None,
                 max_bytes_per_second: float | None = None) -> None:
        if max_partitions < 1:
            raise ValueError(f"max_partitions must be >= 1, got {max_partitions}")
        self._clock = clock
        self._policy = policy or RatePolicy()
        self.adaptive = adaptive  # False: throttles are counted, never cut the rate
        self._max_partitions = max_partitions
        self._buckets: OrderedDict[str, PrefixBucket] = OrderedDict()
        self._bytes = _TokenBucket(burst_seconds=self._policy.bytes_burst_seconds)
        self._max_rps: float | None = None
        self._max_bps: float | None = None
        self.set_ceilings(max_requests_per_second=max_requests_per_second,
                          max_bytes_per_second=max_bytes_per_second)

    # ------------------------------------------------------------ sending
    async def acquire(self, partition: str, *, nbytes: int = 0) -> Permit:
        """Wait until a request carrying `nbytes` may be sent on `partition`."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        bucket = self._bucket(partition)
        admission = _ADMISSION.get()
        if admission is not None and admission.partition == partition:
            admission.arrive()  # counted as waiting from here on
        bucket.waiting += 1
        try:
            await self._take(bucket.tokens, cost=1, rate_at=bucket.rate)
            if nbytes and self._max_bps is not None:
                try:
                    await self._take(self._bytes, cost=nbytes, rate_at=self._bytes_rate)
                except BaseException:
                    bucket.tokens.refund(1)  # not sent after all
                    raise
        finally:
            bucket.waiting -= 1
        now = self._clock.monotonic()
        bucket.sent(now)
        bucket.in_flight += 1
        return Permit(partition, now)

    def release(self, permit: Permit) -> None:
        """The request `permit` let out is over, however it ended (the caller's `finally`)."""
        bucket = self._buckets.get(permit.partition)
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1

    def _bytes_rate(self, now: float) -> float | None:
        return self._max_bps

    async def _take(self, tokens: _TokenBucket, *, cost: float,
                    rate_at: Callable[[float], float | None]) -> None:
        now = self._clock.monotonic()
        tokens.refill(now, rate=rate_at(now))
        place = tokens.reserve(cost)
        try:
            while (wait := tokens.wait_seconds(place)) > 0:
                # Bounded naps: a cut, growth or ceiling reload while we sleep
                # is seen within recheck_seconds.
                await self._clock.sleep(min(wait, self._policy.recheck_seconds))
                now = self._clock.monotonic()
                tokens.refill(now, rate=rate_at(now))
        except BaseException:  # cancelled while queued: give the place back
            tokens.refund(cost)
            raise

    # ----------------------------------------------------------- feedback
    def on_success(self, partition: str) -> None:
        """S3 answered a request on `partition` with anything but a throttle."""
        self._bucket(partition).success(self._clock.monotonic())

    def on_throttle(self, partition: str, *, sent_at: float | None = None) -> bool:
        """S3 throttled a request on `partition` (SlowDown, 503, 429, throttling codes).

        Pass the permit's `sent_at`, so throttles of requests sent before the
        last cut are recognised and ignored. Without it, a throttle cuts only
        if the last cut is older than `RatePolicy.unknown_send_time_grace`.
        Returns True if the rate was cut.
        """
        bucket = self._bucket(partition)
        if not self.adaptive:
            bucket.throttles += 1
            return False
        return bucket.throttle(self._clock.monotonic(), sent_at=sent_at)

    # ------------------------------------------------------------ control
    def set_ceilings(self, *, max_requests_per_second: float | None,
                     max_bytes_per_second: float | None) -> None:
        """Fixed ceilings, changeable live: requests/s per partition, bytes/s in total."""
        for name, value in (("max_requests_per_second", max_requests_per_second),
                            ("max_bytes_per_second", max_bytes_per_second)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        now = self._clock.monotonic()
        for bucket in self._buckets.values():
            bucket.tokens.refill(now, rate=bucket.rate(now))  # the time so far, at the old ceiling
            bucket.ceiling = max_requests_per_second
        self._bytes.refill(now, rate=self._max_bps)
        self._max_rps = max_requests_per_second
        self._max_bps = max_bytes_per_second

    def has_room(self, partition: str) -> bool:
        """Whether one more caller on `partition` would wait little: it is unthrottled,
        or fewer than `queue_seconds` of its rate (at least one) already wait for
        tokens or are on their way here (`admit`).

        The worker pool asks before giving a worker a file of `partition`, so a
        throttled partition keeps a short queue of its own and no more: requests
        in flight do not count (however slow the answers, the partition is kept
        sending), only callers parked here, who would hold workers idle.
        """
        bucket = self._buckets.get(partition)
        if bucket is None:
            return True  # nothing waits on it
        rate = bucket.rate(self._clock.monotonic())
        if rate is None:
            return True
        queued = bucket.waiting + bucket.admitted
        return queued < max(1, math.ceil(rate * self._policy.queue_seconds))

    @contextlib.contextmanager
    def admit(self, partition: str) -> Iterator[None]:
        """Count the caller (this task, and tasks it starts) as queued on `partition`
        from now until its first `acquire` there, or the end of the block.

        A file handed to a worker takes a moment (journal, reading, signing) to
        reach `acquire`; without this, `has_room` would let in every file asked
        about in that moment (several SQS messages arrive at once).
        """
        bucket = self._bucket(partition)
        admission = _Admission(partition, bucket)
        bucket.admitted += 1
        token = _ADMISSION.set(admission)
        try:
            yield
        finally:
            _ADMISSION.reset(token)
            admission.arrive()  # if it never sent (skipped, already there, failed)

    # ------------------------------------------------------------ metrics
    def current_rate(self, partition: str) -> float | None:
        """Requests/s now allowed on `partition`; None if unthrottled."""
        bucket = self._buckets.get(partition)
        if bucket is None:
            return self._max_rps
        return bucket.rate(self._clock.monotonic())

    def snapshot(self) -> dict[str, PartitionStats]:
        """Every remembered partition's state."""
        now = self._clock.monotonic()
        return {name: bucket.stats(now) for name, bucket in self._buckets.items()}

    # ---------------------------------------------------------- partitions
    def _bucket(self, partition: str) -> PrefixBucket:
        bucket = self._buckets.get(partition)
        if bucket is not None:
            self._buckets.move_to_end(partition)
            return bucket
        bucket = PrefixBucket(policy=self._policy, now=self._clock.monotonic())
        bucket.ceiling = self._max_rps
        self._buckets[partition] = bucket
        self._evict(keep=partition)
        return bucket

    def _evict(self, *, keep: str) -> None:
        """Forget the least recently used partitions beyond the bound.

        Never one with callers queued on it (a fresh twin would let newcomers
        bypass the queue), nor one with requests in flight (their answers, a
        throttle above all, belong to its measurements, not to a fresh twin's),
        nor `keep`, the one being created.
        """
        excess = len(self._buckets) - self._max_partitions
        victims: list[str] = []
        for name, bucket in self._buckets.items():
            if len(victims) >= excess:
                break
            if name != keep and not (bucket.waiting or bucket.admitted or bucket.in_flight):
                victims.append(name)
        for name in victims:
            del self._buckets[name]
