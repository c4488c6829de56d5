"""The adaptive limiter: a deterministic simulation against a throttling server, then
each rule exactly, on a fake clock (no real waiting anywhere)."""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field

import pytest

from uploader.clock import FakeClock, SleepForbidden
from uploader.limiter import RateLimiter, RatePolicy, partition_for

pytestmark = pytest.mark.timeout(10)

POLICY = RatePolicy()
K = ((1 - POLICY.beta) / POLICY.growth) ** (1 / 3)  # CUBIC: seconds back to w_max


# ----------------------------------------------------------------- simulation
class SimServer:
    """S3 as the fault proxy models it: a token bucket per partition."""

    def __init__(self, *, rates: dict[str, float], burst_seconds: float) -> None:
        self._rates = rates
        self._capacity = {p: max(1.0, r * burst_seconds) for p, r in rates.items()}
        self._tokens = dict(self._capacity)
        self._at = {p: 0.0 for p in rates}

    def admit(self, partition: str, now: float) -> bool:
        rate = self._rates[partition]
        tokens = self._tokens[partition] + (now - self._at[partition]) * rate
        self._tokens[partition] = min(self._capacity[partition], tokens)
        self._at[partition] = now
        if self._tokens[partition] >= 1:
            self._tokens[partition] -= 1
            return True
        return False


@dataclass
class Tally:
    ok_times: list[float] = field(default_factory=list)
    throttled: int = 0

    def goodput(self, *, start: float, end: float) -> float:
        return sum(1 for t in self.ok_times if start <= t < end) / (end - start)

    @property
    def throttled_fraction(self) -> float:
        return self.throttled / (len(self.ok_times) + self.throttled)


async def client(*, limiter: RateLimiter, server: SimServer, clock: FakeClock,
                 partition: str, rng: random.Random, tally: Tally, until: float,
                 latency: tuple[float, float]) -> None:
    """A worker that sends back to back, retrying throttles at once (the harshest case)."""
    while clock.monotonic() < until:
        permit = await limiter.acquire(partition)
        admitted = server.admit(partition, clock.monotonic())
        await clock.sleep(rng.uniform(*latency))
        if admitted:
            limiter.on_success(partition)
            tally.ok_times.append(clock.monotonic())
        else:
            limiter.on_throttle(partition, sent_at=permit.sent_at)
            tally.throttled += 1


async def simulate(*, server: SimServer, clients: dict[str, int], seconds: float,
                   latency: tuple[float, float] = (0.02, 0.06),
                   limiter: RateLimiter | None = None,
                   clock: FakeClock | None = None) -> dict[str, Tally]:
    clock = FakeClock() if clock is None else clock
    limiter = RateLimiter(clock=clock) if limiter is None else limiter
    tallies = {partition: Tally() for partition in clients}
    async with asyncio.TaskGroup() as group:
        for partition, count in clients.items():
            for index in range(count):
                group.create_task(client(
                    limiter=limiter, server=server, clock=clock, partition=partition,
                    rng=random.Random(f"{partition}/{index}"), tally=tallies[partition],
                    until=seconds, latency=latency))
        while await clock.advance_to_next():
            pass
    return tallies


@pytest.mark.parametrize("burst_seconds", [1.0, 0.1])
async def test_simulation_reaches_the_servers_limit_with_few_throttles(burst_seconds):
    """32 workers against R = 200 req/s for 30 s: >= 0.95 R goodput, <= 1 % throttled.

    Measured (this exact run): 1 s of server burst: goodput 1.028 R over the
    run, 1.005 R after the first 5 s, 0.61 % throttled (38 of 6,237); 0.1 s of
    burst: 0.999 R, 0.999 R, 0.76 %. botocore's adaptive algorithm in this
    simulation: 0.44 R and 0.51 R.
    """
    rate = 200.0
    server = SimServer(rates={"b/p": rate}, burst_seconds=burst_seconds)
    tally = (await simulate(server=server, clients={"b/p": 32}, seconds=30.0))["b/p"]

    assert tally.goodput(start=0, end=30) >= 0.95 * rate
    # Not just the server's initial burst: the limiter holds near R once settled.
    assert tally.goodput(start=5, end=30) >= 0.95 * rate
    assert tally.throttled_fraction <= 0.01


async def test_a_throttled_prefix_does_not_slow_another():
    rates = {"b/hot": 200.0, "b/cold": 1e9}
    alone = await simulate(server=SimServer(rates=rates, burst_seconds=1.0),
                           clients={"b/cold": 16}, seconds=10.0)
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    together = await simulate(server=SimServer(rates=rates, burst_seconds=1.0),
                              clients={"b/hot": 32, "b/cold": 16}, seconds=10.0,
                              limiter=limiter, clock=clock)

    assert together["b/hot"].throttled > 0
    assert limiter.current_rate("b/hot") is not None
    assert limiter.current_rate("b/cold") is None
    # Every request on the cold prefix went exactly when it would have alone.
    assert together["b/cold"].ok_times == alone["b/cold"].ok_times


# ------------------------------------------------------------- exact rules
def throttle_now(limiter: RateLimiter, clock: FakeClock, partition: str) -> bool:
    """Report a throttle for a request sent just now (so it belongs to a new epoch)."""
    return limiter.on_throttle(partition, sent_at=clock.now)


async def first_cut(limiter: RateLimiter, clock: FakeClock, *, sends: int,
                    partition: str = "b/p") -> None:
    """`sends` requests at once, then a throttle half a second later."""
    for _ in range(sends):
        await limiter.acquire(partition)
    clock.now += 0.5
    assert throttle_now(limiter, clock, partition)


def test_partition_is_the_bucket_and_the_keys_leading_segment():
    assert partition_for("bkt", "3f/2024/a.txt") == "bkt/3f"
    assert partition_for("bkt", "a.txt") == "bkt/"
    assert partition_for("bkt", "/odd") == "bkt/"
    # Hashed spreading under s3.prefix: the hash segment after the prefix is the partition.
    assert partition_for("bkt", "in/3f/a/b.txt", below="in/") == "bkt/in/3f"
    assert partition_for("bkt", "in/a.txt", below="in/") == "bkt/in/"
    assert partition_for("bkt", "other/a.txt", below="in/") == "bkt/other"


async def test_unthrottled_start_never_waits():
    clock = FakeClock(forbid_sleep=True)
    limiter = RateLimiter(clock=clock)
    for _ in range(10_000):
        await limiter.acquire("b/p", nbytes=1 << 20)
        limiter.on_success("b/p")
    assert limiter.current_rate("b/p") is None
    assert clock.sleeps == []


async def test_first_throttle_halves_the_send_rate_then_applies_beta():
    clock = FakeClock(forbid_sleep=True)
    limiter = RateLimiter(clock=clock)
    await first_cut(limiter, clock, sends=40)  # sent at 80/s

    stats = limiter.snapshot()["b/p"]
    assert stats.w_max == pytest.approx(40.0)  # half of 80/s
    assert limiter.current_rate("b/p") == pytest.approx(POLICY.beta * 40.0)
    assert stats.cuts == 1


async def test_later_cut_uses_the_measured_success_rate():
    clock = FakeClock(forbid_sleep=True)
    limiter = RateLimiter(clock=clock)
    await first_cut(limiter, clock, sends=40)
    clock.now += 2.0  # a new episode, more than a window after the first cut
    for _ in range(30):  # the server serves 30/s over the last second
        clock.now += 1 / 30
        limiter.on_success("b/p")
    before = limiter.current_rate("b/p")
    assert before is not None and before > 30.0

    assert throttle_now(limiter, clock, "b/p")
    assert limiter.snapshot()["b/p"].w_max == pytest.approx(30.0)
    assert limiter.current_rate("b/p") == pytest.approx(POLICY.beta * 30.0)


async def test_a_thin_measurement_cannot_more_than_halve_the_rate():
    clock = FakeClock(forbid_sleep=True)
    limiter = RateLimiter(clock=clock)
    await first_cut(limiter, clock, sends=40)
    clock.now += 2.0
    for _ in range(20):  # 20 answers in the window, all throttles, nothing served
        clock.now += 0.01
        limiter.on_throttle("b/p", sent_at=0.0)  # old requests: no cut
    before = limiter.current_rate("b/p")

    assert throttle_now(limiter, clock, "b/p")
    assert limiter.snapshot()["b/p"].w_max == pytest.approx(POLICY.max_cut * before)


async def test_rate_recovers_along_the_cubic_curve():
    clock = FakeClock(forbid_sleep=True)
    limiter = RateLimiter(clock=clock, policy=RatePolicy(startup_growth=POLICY.growth))
    await first_cut(limiter, clock, sends=40)  # w_max = 40
    cut_at = clock.now

    for after, expected in [(0.0, POLICY.beta * 40), (K / 2, None), (K, 40.0),
                            (K + 2, 40.0 * (1 + POLICY.growth * 8))]:
        clock.now = cut_at + after
        rate = limiter.current_rate("b/p")
        if expected is None:
            assert POLICY.beta * 40 < rate < 40.0  # concave climb back
        else:
            assert rate == pytest.approx(expected)


async def test_startup_episode_recovers_faster():
    clock = FakeClock(forbid_sleep=True)
    limiter = RateLimiter(clock=clock)
    await first_cut(limiter, clock, sends=40)
    startup_k = ((1 - POLICY.beta) / POLICY.startup_growth) ** (1 / 3)
    clock.now += startup_k
    assert startup_k < K
    assert limiter.current_rate("b/p") == pytest.approx(40.0)


async def test_rate_never_falls_below_the_floor_and_requests_still_go():
    clock = FakeClock(autoadvance=True)
    limiter = RateLimiter(clock=clock)
    await first_cut(limiter, clock, sends=40)
    for _ in range(20):  # every epoch ends in throttles, nothing is ever served
        clock.now += 1 / limiter.current_rate("b/p") + 0.01
        for _ in range(POLICY.min_samples):
            limiter.on_throttle("b/p", sent_at=0.0)
        assert throttle_now(limiter, clock, "b/p")
    assert limiter.current_rate("b/p") == POLICY.floor

    await limiter.acquire("b/p")
    start = clock.now
    await limiter.acquire("b/p")
    assert 1.5 < clock.now - start <= 1 / POLICY.floor + 1e-9


async def test_throttles_from_before_the_cut_do_not_cut_again():
    clock = FakeClock(forbid_sleep=True)
    limiter = RateLimiter(clock=clock)
    in_flight = [await limiter.acquire("b/p") for _ in range(40)]
    clock.now += 0.5
    assert limiter.on_throttle("b/p", sent_at=in_flight[0].sent_at)
    rate = limiter.current_rate("b/p")

    for permit in in_flight[1:]:
        assert not limiter.on_throttle("b/p", sent_at=permit.sent_at)
    # Sent right at the cut: not yet paced by the new rate, still the old epoch.
    assert not limiter.on_throttle("b/p", sent_at=clock.now)
    assert limiter.current_rate("b/p") == rate
    stats = limiter.snapshot()["b/p"]
    assert (stats.cuts, stats.throttles, stats.ignored_throttles) == (1, 41, 40)

    clock.now += 0.5  # a request paced by the new rate is throttled: a new epoch
    assert throttle_now(limiter, clock, "b/p")
    assert limiter.current_rate("b/p") < rate


async def test_throttles_without_a_send_time_cut_at_most_once_per_grace_period():
    clock = FakeClock(forbid_sleep=True)
    limiter = RateLimiter(clock=clock)
    await first_cut(limiter, clock, sends=40)
    clock.now += POLICY.unknown_send_time_grace / 2
    assert not limiter.on_throttle("b/p")
    clock.now += POLICY.unknown_send_time_grace
    assert limiter.on_throttle("b/p")


async def test_a_throttle_slows_only_its_own_partition():
    clock = FakeClock(forbid_sleep=True)
    limiter = RateLimiter(clock=clock)
    await first_cut(limiter, clock, sends=40, partition="b/hot")
    assert limiter.current_rate("b/hot") is not None
    assert limiter.current_rate("b/cold") is None
    for _ in range(1_000):
        await limiter.acquire("b/cold")  # would raise SleepForbidden if it waited
    with pytest.raises(SleepForbidden):
        for _ in range(1_000):
            await limiter.acquire("b/hot")


async def test_a_limited_partition_paces_its_callers_first_come_first_served():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, max_requests_per_second=10.0)
    order: list[int] = []

    async def send(index: int) -> None:
        await limiter.acquire("b/p")
        order.append(index)

    async with asyncio.TaskGroup() as group:
        for index in range(5):
            group.create_task(send(index))
        await clock.settle()
        assert order == [0]  # a new limit starts with one request's worth of burst
        for expected in range(1, 5):
            await clock.advance(0.1)
            assert order == list(range(expected + 1))


async def test_a_throttled_partition_has_room_while_its_queue_of_callers_is_short():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, policy=RatePolicy(queue_seconds=0.1),
                          max_requests_per_second=30.0)

    def waiting() -> int:
        return limiter.snapshot()["b/p"].waiting

    assert limiter.has_room("b/p") and limiter.has_room("b/other")  # nobody waits yet
    # 30/s: room while fewer than ceil(30 x 0.1) = 3 callers wait for tokens.
    waiters = [asyncio.create_task(limiter.acquire("b/p")) for _ in range(10)]
    await clock.settle()
    assert waiting() >= 3 and not limiter.has_room("b/p")
    assert limiter.has_room("b/other")  # another partition: its own queue
    while waiting() >= 3:
        assert not limiter.has_room("b/p")
        await clock.advance(1 / 30)
    assert limiter.has_room("b/p")
    await clock.advance(1.0)
    assert all(w.done() for w in waiters)
    limiter.set_ceilings(max_requests_per_second=None, max_bytes_per_second=None)
    assert limiter.has_room("b/p")  # unthrottled: always


async def test_admitted_callers_count_as_queued_until_they_acquire():
    """Files handed out a moment ago are on their way to `acquire`: they count."""
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, policy=RatePolicy(queue_seconds=0.1),
                          max_requests_per_second=30.0)  # room while < 3 queued
    on_the_way = [limiter.admit("b/p") for _ in range(3)]
    for admission in on_the_way:
        admission.__enter__()
    assert not limiter.has_room("b/p")
    assert limiter.has_room("b/q")
    on_the_way[0].__exit__(None, None, None)  # ended without a request (e.g. skipped)
    assert limiter.has_room("b/p")

    async def send() -> None:
        with limiter.admit("b/p"):
            assert not limiter.has_room("b/p")  # 3 on their way
            await limiter.acquire("b/p")  # arrived (and sent: one request of burst)
            assert limiter.has_room("b/p")
            await limiter.acquire("b/p")  # a second request is not admitted twice

    await asyncio.create_task(send())  # a task of its own, as a worker's
    for admission in on_the_way[1:]:
        admission.__exit__(None, None, None)
    assert limiter.snapshot()["b/p"].waiting == 0 and limiter.has_room("b/p")


async def test_request_ceiling_applies_per_partition_and_reloads_live():
    clock = FakeClock(autoadvance=True)
    limiter = RateLimiter(clock=clock, max_requests_per_second=10.0)
    for _ in range(11):
        await limiter.acquire("b/a")
    assert clock.now == pytest.approx(1.0)  # 11 requests at 10/s: 10 intervals
    for _ in range(11):
        await limiter.acquire("b/b")  # its own ceiling, not a share of a's
    assert clock.now == pytest.approx(2.0)
    assert limiter.current_rate("b/c") == 10.0

    limiter.set_ceilings(max_requests_per_second=None, max_bytes_per_second=None)
    assert limiter.current_rate("b/a") is None
    start = clock.now
    for _ in range(100):
        await limiter.acquire("b/a")
    assert clock.now == start


async def test_request_ceiling_caps_the_adaptive_rate():
    clock = FakeClock(forbid_sleep=True)
    limiter = RateLimiter(clock=clock)
    await first_cut(limiter, clock, sends=40)
    assert limiter.current_rate("b/p") > 5.0
    limiter.set_ceilings(max_requests_per_second=5.0, max_bytes_per_second=None)
    assert limiter.current_rate("b/p") == 5.0


async def test_bytes_ceiling_is_shared_by_all_partitions():
    clock = FakeClock(autoadvance=True)
    limiter = RateLimiter(clock=clock, max_bytes_per_second=1000.0)
    await limiter.acquire("b/a", nbytes=1000)  # a full second of burst
    assert clock.now == 0.0
    await limiter.acquire("b/b", nbytes=500)  # another partition, same budget
    assert clock.now == pytest.approx(0.5)
    await limiter.acquire("b/c", nbytes=3000)  # bigger than the bucket: waits for it full
    assert clock.now == pytest.approx(1.5)
    await limiter.acquire("b/a", nbytes=1)  # then pays the debt
    assert clock.now == pytest.approx(3.501)
    await limiter.acquire("b/a")  # a request without a body is never held by bytes
    assert clock.now == pytest.approx(3.501)


async def test_a_cancelled_waiter_gives_its_place_to_the_next():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, max_requests_per_second=1.0)
    await limiter.acquire("b/p")  # uses the one token
    second = asyncio.create_task(limiter.acquire("b/p"))
    third = asyncio.create_task(limiter.acquire("b/p"))
    await clock.settle()
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    await clock.advance(1.0)
    assert third.done()  # at t=1, where the second would have gone, not t=2
    await third


async def test_a_waiter_sees_a_raised_ceiling_within_the_recheck_interval():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, max_requests_per_second=0.01)
    await limiter.acquire("b/p")
    waiter = asyncio.create_task(limiter.acquire("b/p"))  # 100 s away at 0.01/s
    await clock.advance(0.1)
    limiter.set_ceilings(max_requests_per_second=None, max_bytes_per_second=None)
    await clock.advance(POLICY.recheck_seconds)
    assert waiter.done()
    await waiter


async def test_a_quiet_partition_is_released_to_unthrottled():
    clock = FakeClock(forbid_sleep=True)
    limiter = RateLimiter(clock=clock)
    await first_cut(limiter, clock, sends=40)
    clock.now += POLICY.release_after_seconds - 0.001
    assert limiter.current_rate("b/p") is not None
    clock.now += 0.001
    assert limiter.current_rate("b/p") is None


async def test_partitions_are_bounded_and_busy_ones_kept():
    """Beyond max_partitions the least recently used idle partitions are forgotten. One
    with callers waiting is kept, and so is one with a request in flight: its answer (a
    throttle above all) belongs to its measurements, not to a fresh twin's."""
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, max_partitions=4, max_requests_per_second=1.0)
    await limiter.acquire("b/busy")
    waiter = asyncio.create_task(limiter.acquire("b/busy"))
    await clock.settle()
    sending = await limiter.acquire("b/sending")
    for index in range(100):
        limiter.release(await limiter.acquire(f"b/{index}"))  # as the retry layer does

    assert list(limiter.snapshot()) == ["b/busy", "b/sending", "b/98", "b/99"]
    assert limiter.snapshot()["b/sending"].in_flight == 1
    limiter.release(sending)  # answered: now idle, and the least recently used
    limiter.release(await limiter.acquire("b/100"))
    assert list(limiter.snapshot()) == ["b/busy", "b/98", "b/99", "b/100"]
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


@pytest.mark.parametrize("bad", [{"beta": 1.0}, {"max_cut": 0.0}, {"floor": 0.0},
                                 {"min_samples": 100, "sample_size": 10}])
def test_policy_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        RatePolicy(**bad)


def test_ceilings_must_be_positive():
    limiter = RateLimiter(clock=FakeClock())
    with pytest.raises(ValueError, match="max_bytes_per_second"):
        limiter.set_ceilings(max_requests_per_second=None, max_bytes_per_second=0)
    with pytest.raises(ValueError, match="nbytes"):
        asyncio.run(limiter.acquire("b/p", nbytes=-1))


# ------------------------------------------------------------ the fake clock
async def test_fake_clock_wakes_sleepers_in_deadline_order_at_their_deadline():
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    async with asyncio.TaskGroup() as group:
        for name, seconds in [("c", 3.0), ("a", 1.0), ("b", 2.0), ("a2", 1.0)]:
            group.create_task(nap(name, seconds))
        await clock.settle()
        assert clock.pending == 4
        await clock.advance(2.5)
        assert woke == [("a", 1.0), ("a2", 1.0), ("b", 2.0)]
        assert clock.now == 2.5
        assert await clock.advance_to_next()
    assert woke[-1] == ("c", 3.0)
    assert not await clock.advance_to_next()
    assert clock.sleeps == [3.0, 1.0, 2.0, 1.0]


async def test_fake_clock_can_forbid_sleeping():
    with pytest.raises(SleepForbidden):
        await FakeClock(forbid_sleep=True).sleep(0)
    assert math.isclose(FakeClock(start=5.0).monotonic(), 5.0)
