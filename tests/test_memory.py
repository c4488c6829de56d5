"""The memory budget: a unit of its own, and a large file that stays within it."""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
from pathlib import Path

import pytest

from uploader.config import validate_config
from uploader.journal import Journal
from uploader.memory import MemoryBudget
from uploader.pipeline import Outcome
from uploader.verify import local_etag
from uploader.wiring import services

MiB = 1024 * 1024


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_budget_blocks_when_exhausted_and_releases_in_order():
    budget = MemoryBudget(capacity=10)
    await budget.acquire(6)
    await budget.acquire(4)  # exactly full
    granted: list[str] = []

    async def take(name: str, nbytes: int) -> None:
        await budget.acquire(nbytes)
        granted.append(name)

    big = asyncio.create_task(take("big", 8))
    await settle()
    small = asyncio.create_task(take("small", 1))  # fits after a release, but queued behind
    await settle()
    assert granted == [] and budget.waiting == 2 and budget.in_use == 10
    budget.release(4)
    await settle()
    assert granted == []  # 4 free: not enough for the head of the line, and no overtaking
    budget.release(6)
    await asyncio.gather(big, small)
    assert granted == ["big", "small"]
    assert budget.in_use == 9 and budget.high_water == 10 and budget.waiting == 0


async def test_a_cancelled_wait_gives_its_place_back():
    budget = MemoryBudget(capacity=10)
    await budget.acquire(10)
    blocked = asyncio.create_task(budget.acquire(8))
    await settle()
    behind = asyncio.create_task(budget.acquire(2))
    await settle()
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    budget.release(8)  # 2 held: the one behind now fits
    await asyncio.wait_for(behind, 5)
    assert budget.in_use == 4


async def test_a_request_larger_than_the_budget_goes_alone():
    budget = MemoryBudget(capacity=10)
    async with budget.hold(3):
        oversized = asyncio.create_task(budget.acquire(25))
        await settle()
        assert not oversized.done()  # waits for everything else to be let go
    await asyncio.wait_for(oversized, 5)
    assert budget.in_use == 25
    budget.release(25)
    assert budget.in_use == 0


def test_part_buffers_are_reused_and_kept_within_the_budget():
    budget = MemoryBudget(capacity=10)
    first = budget.buffer(4)
    budget.recycle(first)
    again = budget.buffer(4)
    assert again is first and budget.buffers_allocated == 1  # reused, not reallocated
    budget.recycle(again)
    odd = budget.buffer(3)  # another size: a new buffer, the kept 4 still fits (3 + 4 <= 10)
    assert odd is not first and budget.pooled == 4
    budget.recycle(odd)
    big = budget.buffer(8)  # kept buffers give way: kept + lent never exceeds the budget
    assert len(big) == 8 and budget.pooled + 8 <= 10
    budget.discard(big)  # a failed request's buffer is not kept
    assert budget.pooled <= 2 and budget.buffers_allocated == 3


def test_part_buffers_start_on_a_page_boundary_and_are_zeroed():
    """The kernel copies file pages into a buffer 8 or 16 bytes past a page boundary
    ~2.5 times slower; a bytearray of a part's size starts exactly there."""
    budget = MemoryBudget(capacity=64 * MiB)
    for size in (5 * MiB, 8 * MiB + 1, 3):
        buffer = budget.buffer(size)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        assert address % mmap.PAGESIZE == 0, hex(address)
        assert len(buffer) == size and memoryview(buffer).nbytes == size
        assert buffer[:16] == buffer[-16:] == bytes(min(16, size))
        budget.discard(buffer)


def sparse_but_real(path: Path, size: int) -> None:
    """A sparse file with random bytes every 7 MiB, so every part differs."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset in range(0, size, 7 * MiB):
            f.seek(offset)
            f.write(os.urandom(4096))
        f.seek(size - 100)
        f.write(os.urandom(100))


@pytest.mark.timeout(120)
async def test_a_large_file_never_holds_more_than_the_budget(tmp_path, s3_server, s3_env,
                                                             bucket, s3):
    """201 MiB in 5 MiB parts, 16 parts allowed in flight, but a 12 MiB budget: at most
    two parts are ever in memory, and the object is byte-identical."""
    path = tmp_path / "large.bin"
    size = 201 * MiB + 12345
    sparse_but_real(path, size)
    config = validate_config({
        "source": {"directory": str(tmp_path)},
        "s3": {"bucket": bucket, "endpoint_url": s3_server.endpoint_url,
               "region": s3_server.region, "addressing_style": "path"},
        "transfer": {"multipart_threshold": "5MiB", "part_size": "5MiB",
                     "max_parts_in_flight": 16, "max_memory": "12MiB"},
        "state_dir": str(tmp_path / "state"),
    })
    journal = Journal(tmp_path / "journal.sqlite3")
    async with services(config, journal=journal) as svc:
        assert await svc.pipeline.process(path, "large.bin") is Outcome.UPLOADED
        budget = svc.pipeline.ctx.memory
        job_etag = await asyncio.to_thread(_etag_of, path)
    journal.close()
    assert 5 * MiB <= budget.high_water <= 12 * MiB
    assert budget.in_use == 0
    # 41 parts of 5 MiB read into at most two buffers (plus the odd-sized last part).
    assert budget.buffers_allocated <= 3 and budget.pooled <= 12 * MiB
    head = s3.head_object(Bucket=bucket, Key="large.bin")
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"') == job_etag  # the MD5 of every 5 MiB part, as sent
    for offset in (0, 7 * MiB, 28 * 7 * MiB, size - 100):  # the random bytes, spot-checked
        got = s3.get_object(Bucket=bucket, Key="large.bin",
                            Range=f"bytes={offset}-{offset + 99}")["Body"].read()
        with path.open("rb") as f:
            f.seek(offset)
            assert got == f.read(100)


def _etag_of(path: Path) -> str:
    from uploader.transfer.job import FileJob, stat_signature

    job = FileJob(path=path, relative=path.name, key=path.name,
                  signature=stat_signature(path))
    return local_etag(job, multipart=True, part_size=5 * MiB)

