"""WorkerPool.resize (transfer.concurrency on reload): grows at once, shrinks without losing a file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from uploader.pipeline import Outcome
from uploader.workers import WorkerPool


class GatedPipeline:
    """Each file's upload waits until the test lets it finish."""

    def __init__(self) -> None:
        self.running: set[Path] = set()
        self.done: list[Path] = []
        self.gates: dict[Path, asyncio.Event] = {}
        self.changed = asyncio.Event()
        self.peak = 0  # most files running at once since last reset

    async def process(self, path: Path, relative: str, *, signature: object = None) -> Outcome:
        self.running.add(path)
        self.peak = max(self.peak, len(self.running))
        self.changed.set()
        await self.gates.setdefault(path, asyncio.Event()).wait()
        self.running.discard(path)
        self.done.append(path)
        self.changed.set()
        return Outcome.UPLOADED

    def finish(self, count: int) -> None:
        for path in sorted(self.running)[:count]:
            self.gates.setdefault(path, asyncio.Event()).set()

    def finish_all(self, paths: list[Path]) -> None:
        for path in paths:
            self.gates.setdefault(path, asyncio.Event()).set()

    async def until(self, predicate) -> None:  # noqa: ANN001
        while not predicate():
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), timeout=5)


@pytest.mark.timeout(10)
async def test_resize_grows_at_once_and_shrinks_after_the_current_files():
    pipeline = GatedPipeline()
    pool = WorkerPool(pipeline=pipeline, concurrency=4)  # type: ignore[arg-type]
    pool.start()
    files = [Path(f"/f{i:02d}") for i in range(12)]
    for path in files:
        await pool.submit(path, path.name)
    await pipeline.until(lambda: len(pipeline.running) == 4)

    pool.resize(2)  # all four busy: none is interrupted
    await asyncio.sleep(0)
    assert len(pipeline.running) == 4
    pipeline.finish(4)
    await pipeline.until(lambda: len(pipeline.done) == 4 and len(pipeline.running) == 2)
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(pipeline.running) == 2  # two workers retired after their file

    pool.resize(5)
    await pipeline.until(lambda: len(pipeline.running) == 5)

    pool.resize(1)
    pipeline.finish(5)
    await pipeline.until(lambda: len(pipeline.done) == 9 and len(pipeline.running) == 1)
    pipeline.peak = 0
    pipeline.finish_all(files)
    await pool.join()
    assert pipeline.peak == 1
    assert sorted(pipeline.done) == files  # each file once, none lost
    await pool.stop(grace_seconds=1)


@pytest.mark.timeout(10)
async def test_shrinking_an_idle_pool_stops_its_workers_at_once():
    pipeline = GatedPipeline()
    pool = WorkerPool(pipeline=pipeline, concurrency=8)  # type: ignore[arg-type]
    pool.start()
    await asyncio.sleep(0)
    pool.resize(3)
    await pool.submit(Path("/a"), "a")
    await pipeline.until(lambda: len(pipeline.running) == 1)
    pipeline.finish(1)
    await pool.join()
    assert pipeline.done == [Path("/a")]
    await pool.stop(grace_seconds=1)
