"""The watched directory on a real filesystem with real inotify: changes that close nothing,
and folders renamed while watched. Uploads are not involved: `submit` records."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from uploader.config import SourceConfig
from uploader.filters import FileFilter
from uploader.sources.directory import DirectorySource
from uploader.sources.walk import TreeWalker


class Recorder:
    def __init__(self) -> None:
        self.submitted: list[Path] = []
        self.changed = asyncio.Event()

    async def submit(self, path: Path, relative: str, signature: object = None) -> None:
        self.submitted.append(path)
        self.changed.set()

    async def wait_for(self, path: Path, *, count: int = 1, timeout: float = 10.0) -> None:
        async def until() -> None:
            while self.submitted.count(path) < count:
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(until(), timeout)


async def running(root: Path, recorder: Recorder, *, rescan: float) -> tuple[DirectorySource,
                                                                               asyncio.Task]:
    walker = TreeWalker(root=root, file_filter=FileFilter(SourceConfig()))
    source = DirectorySource(walker=walker, submit=recorder.submit, settle_seconds=0.2,
                             rescan_interval_seconds=rescan)
    task = asyncio.create_task(source.run())
    await asyncio.wait_for(source.wait_first_scan(), 10)
    return source, task


async def stopped(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "outbox").mkdir()
    return tmp_path / "outbox"


async def test_a_file_hard_linked_into_the_tree_is_taken_without_a_rescan(root, tmp_path):
    """A hard link raises IN_CREATE and nothing else: no close ever says it is whole."""
    outside = tmp_path / "elsewhere.dat"
    outside.write_bytes(b"made elsewhere")
    recorder = Recorder()
    _, task = await running(root, recorder, rescan=3600)
    try:
        os.link(outside, root / "linked.dat")
        await recorder.wait_for(root / "linked.dat")
    finally:
        await stopped(task)


async def test_a_file_truncated_by_path_is_taken_again_at_a_rescan(root):
    """truncate(2) by path raises IN_MODIFY and no close: the file looks open for writing
    forever unless silence for a whole rescan interval frees it."""
    recorder = Recorder()
    _, task = await running(root, recorder, rescan=1.0)
    try:
        path = root / "log.dat"
        path.write_bytes(b"x" * 1000)
        await recorder.wait_for(path)
        os.truncate(path, 10)
        await recorder.wait_for(path, count=2)
    finally:
        await stopped(task)


async def test_files_written_in_a_renamed_folder_are_taken_by_their_events(root):
    """inotify watches follow the folder's inode: after a rename the events must name
    files by the new path (a long rescan interval: nothing else would find them)."""
    (root / "staging").mkdir()
    recorder = Recorder()
    source, task = await running(root, recorder, rescan=3600)
    try:
        (root / "staging").rename(root / "final")
        await asyncio.wait_for(_scans(source, 2), 10)  # the renamed folder's own scan
        (root / "final" / "new.dat").write_bytes(b"after the rename")
        await recorder.wait_for(root / "final" / "new.dat")
        assert source.scans_completed == 2  # found by its event, not by a rescan
    finally:
        await stopped(task)


async def _scans(source: DirectorySource, count: int) -> None:
    while source.scans_completed < count:
        await asyncio.sleep(0.02)
