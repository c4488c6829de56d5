"""The worker pool's intake: FIFO and bounded, and a throttled partition holds at most its
allowance of workers (the rest of its files wait aside, in order, and go first when it has
room). Deterministic: the "workers" here are the test taking and finishing items."""

from __future__ import annotations

import asyncio

import pytest

from uploader import intake as intake_module
from uploader.intake import FairIntake

pytestmark = pytest.mark.timeout(10)


def partition(item: str) -> str:
    return item.split("/")[0]


def make(rates: dict[str, float | None], maxsize: int = 100) -> FairIntake[str]:
    return FairIntake(maxsize=maxsize, partition_of=partition, rate_of=rates.get)


async def take(queue: FairIntake[str]) -> str:
    item, _ = await asyncio.wait_for(queue.get(), timeout=5)
    return item


async def test_without_partitions_it_is_a_bounded_fifo_that_joins():
    queue: FairIntake[int] = FairIntake(maxsize=2)
    await queue.put(1)
    await queue.put(2)
    blocked = asyncio.create_task(queue.put(3))
    await asyncio.sleep(0.01)
    assert not blocked.done() and len(queue) == 2  # full: the producer waits
    assert (await queue.get()) == (1, "")
    await asyncio.wait_for(blocked, timeout=5)
    assert [(await queue.get())[0], (await queue.get())[0]] == [2, 3]
    joined = asyncio.create_task(queue.join())
    for _ in range(2):
        queue.done("")
    await asyncio.sleep(0.01)
    assert not joined.done()  # one item still not done
    queue.done("")
    await asyncio.wait_for(joined, timeout=5)


async def test_a_throttled_partition_gets_its_allowance_and_the_others_go_past():
    # 2 req/s: allowance max(MIN_ALLOWANCE=2, ceil(2 x 1 s)) = 2 workers.
    queue = make({"slow": 2.0})
    for item in ["slow/1", "slow/2", "slow/3", "fast/1", "slow/4", "fast/2", "fast/3"]:
        await queue.put(item)
    taken = [await take(queue) for _ in range(5)]
    assert taken == ["slow/1", "slow/2", "fast/1", "fast/2", "fast/3"]
    assert queue.set_aside == 2 and len(queue) == 2
    # Nothing else may be taken until a slow file is done...
    waiting = asyncio.create_task(take(queue))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    queue.done("slow")  # ...then the next set-aside one goes, in order
    assert await asyncio.wait_for(waiting, timeout=5) == "slow/3"
    queue.done("slow")
    assert await take(queue) == "slow/4"


async def test_set_aside_files_go_first_once_the_partition_has_room():
    queue = make({"slow": 1.0})
    for item in ["slow/1", "slow/2", "slow/3", "fast/1"]:
        await queue.put(item)
    assert [await take(queue) for _ in range(3)] == ["slow/1", "slow/2", "fast/1"]
    await queue.put("fast/2")
    queue.done("slow")
    assert await take(queue) == "slow/3"  # before fast/2, which came later
    assert await take(queue) == "fast/2"


async def test_a_rate_that_rises_lets_set_aside_files_go_without_a_done(monkeypatch):
    monkeypatch.setattr(intake_module, "RECHECK_SECONDS", 0.01)
    rates: dict[str, float | None] = {"slow": 1.0}
    queue = make(rates)
    for item in ["slow/1", "slow/2", "slow/3"]:
        await queue.put(item)
    assert [await take(queue), await take(queue)] == ["slow/1", "slow/2"]
    waiting = asyncio.create_task(take(queue))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    rates["slow"] = None  # released: unthrottled
    assert await asyncio.wait_for(waiting, timeout=5) == "slow/3"


async def test_at_most_maxsize_files_wait_aside_then_order_wins():
    queue = make({"slow": 1.0}, maxsize=2)
    for item in ["slow/1", "slow/2"]:
        await queue.put(item)
    assert [await take(queue), await take(queue)] == ["slow/1", "slow/2"]
    for item in ["slow/3", "slow/4"]:
        await queue.put(item)
    waiting = asyncio.create_task(take(queue))
    await asyncio.sleep(0.01)
    assert not waiting.done() and queue.set_aside == 2  # the room aside is full
    await queue.put("slow/5")  # so slow/5 is taken although over the allowance
    assert await asyncio.wait_for(waiting, timeout=5) == "slow/5"


async def test_a_cancelled_get_loses_nothing_and_passes_its_wake_up_on():
    queue = make({})
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    await queue.put("a/1")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs: `second` must get the item
    assert (await asyncio.wait_for(second, timeout=5)) == ("a/1", "a")
    with pytest.raises(asyncio.CancelledError):
        await first


def test_maxsize_must_be_positive():
    with pytest.raises(ValueError, match="maxsize"):
        FairIntake(maxsize=0)
