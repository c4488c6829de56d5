"""The worker pool's intake: FIFO and bounded; a file whose partition has no room (the
limiter says callers already queue for its tokens) is set aside, in order, while files
for other partitions go past, and the set-aside ones go first once it has room.
Deterministic: `room` stands for the limiter, the test for the workers."""

from __future__ import annotations

import asyncio

import pytest

from uploader import intake as intake_module
from uploader.intake import FairIntake

pytestmark = pytest.mark.timeout(10)


def partition(item: str) -> str:
    return item.split("/")[0]


def make(room: dict[str, bool], max_set_aside: int = 100) -> FairIntake[str]:
    return FairIntake(maxsize=100, max_set_aside=max_set_aside, partition_of=partition,
                      has_room=lambda p: room.get(p, True))


async def take(queue: FairIntake[str]) -> str:
    return await asyncio.wait_for(queue.get(), timeout=5)


async def test_without_partitions_it_is_a_bounded_fifo_that_joins():
    queue: FairIntake[int] = FairIntake(maxsize=2)
    await queue.put(1)
    await queue.put(2)
    blocked = asyncio.create_task(queue.put(3))
    await asyncio.sleep(0.01)
    assert not blocked.done() and len(queue) == 2  # full: the producer waits
    assert await queue.get() == 1
    await asyncio.wait_for(blocked, timeout=5)
    assert [await queue.get(), await queue.get()] == [2, 3]
    joined = asyncio.create_task(queue.join())
    queue.done()
    queue.done()
    await asyncio.sleep(0.01)
    assert not joined.done()  # one item still not done
    queue.done()
    await asyncio.wait_for(joined, timeout=5)


async def test_files_of_a_partition_without_room_wait_aside_while_others_go_past():
    room = {"slow": True}
    queue = make(room)
    for item in ["slow/1", "slow/2", "fast/1", "slow/3", "fast/2", "fast/3"]:
        await queue.put(item)
    assert await take(queue) == "slow/1"
    room["slow"] = False  # its queue of callers is full
    assert [await take(queue) for _ in range(3)] == ["fast/1", "fast/2", "fast/3"]
    assert queue.set_aside == 2 and len(queue) == 2
    waiting = asyncio.create_task(take(queue))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # nothing may be taken
    room["slow"] = True
    queue.done()  # a finished file makes the intake look again: in order
    assert await asyncio.wait_for(waiting, timeout=5) == "slow/2"
    assert await take(queue) == "slow/3"


async def test_set_aside_files_go_before_later_ones():
    room = {"slow": False}
    queue = make(room)
    for item in ["slow/1", "fast/1"]:
        await queue.put(item)
    assert await take(queue) == "fast/1"
    await queue.put("slow/2")
    await queue.put("fast/2")
    room["slow"] = True
    assert [await take(queue) for _ in range(3)] == ["slow/1", "slow/2", "fast/2"]


async def test_room_that_comes_without_a_done_is_seen_by_the_recheck(monkeypatch):
    monkeypatch.setattr(intake_module, "RECHECK_SECONDS", 0.01)
    room = {"slow": False}
    queue = make(room)
    await queue.put("slow/1")
    waiting = asyncio.create_task(take(queue))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    room["slow"] = True  # e.g. its waiters got their tokens, or it was released
    assert await asyncio.wait_for(waiting, timeout=5) == "slow/1"


async def test_at_most_max_set_aside_files_wait_aside_then_order_wins():
    queue = make({"slow": False}, max_set_aside=2)
    for item in ["slow/1", "slow/2"]:
        await queue.put(item)
    waiting = asyncio.create_task(take(queue))
    await asyncio.sleep(0.01)
    assert not waiting.done() and queue.set_aside == 2  # the room aside is full
    await queue.put("slow/3")  # so slow/3 is taken, although its partition has no room
    assert await asyncio.wait_for(waiting, timeout=5) == "slow/3"


async def test_a_cancelled_get_loses_nothing_and_passes_its_wake_up_on():
    queue = make({})
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    await queue.put("a/1")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs: `second` must get the item
    assert await asyncio.wait_for(second, timeout=5) == "a/1"
    with pytest.raises(asyncio.CancelledError):
        await first


def test_maxsize_must_be_positive():
    with pytest.raises(ValueError, match="maxsize"):
        FairIntake(maxsize=0)
