"""The watched directory on a real filesystem with real inotify: changes that close nothing,
and folders renamed while watched. Uploads are not involved: `submit` records."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
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


async def test_a_folder_moved_out_of_the_tree_is_no_longer_watched(root, tmp_path):
    """An app that archives finished folders outside the tree: a watch follows its
    folder's inode, so each kept one would count against fs.inotify.max_user_watches
    (and raise events) for as long as the daemon runs."""
    (root / "batch" / "inner").mkdir(parents=True)
    (root / "keep").mkdir()
    recorder = Recorder()
    elsewhere = _kernel_watches()  # any other test's, still open
    source, task = await running(root, recorder, rescan=3600)
    try:
        assert _kernel_watches() - elsewhere == 4  # the root, batch, batch/inner, keep
        (root / "batch").rename(tmp_path / "archive")
        await _until(lambda: _kernel_watches() - elsewhere == 2)
        (tmp_path / "archive" / "inner" / "late.dat").write_bytes(b"outside the tree now")
        # A folder renamed within the tree is watched again under its new name.
        (root / "keep").rename(root / "kept")
        await asyncio.wait_for(_scans(source, 2), 10)
        (root / "kept" / "new.dat").write_bytes(b"after the rename")
        await recorder.wait_for(root / "kept" / "new.dat")
        assert _kernel_watches() - elsewhere == 2
        assert recorder.submitted == [root / "kept" / "new.dat"]
    finally:
        await stopped(task)


def _kernel_watches() -> int:
    """inotify watches this process holds, as the kernel counts them."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                count += sum(line.startswith("inotify wd:") for line in info)
        except OSError:
            continue  # closed meanwhile
    return count


async def _scans(source: DirectorySource, count: int) -> None:
    while source.scans_completed < count:
        await asyncio.sleep(0.02)


async def _until(predicate, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


async def test_a_removed_root_is_reported_and_watched_again_once_back(root):
    """rm -rf outbox && mkdir outbox: the old watch died with the folder, and with a long
    rescan interval nothing but the root check would ever look at the new one."""
    recorder = Recorder()
    source, task = await running(root, recorder, rescan=3600)
    try:
        (root / "before.dat").write_bytes(b"before")
        await recorder.wait_for(root / "before.dat")
        assert source.problem() is None
        shutil.rmtree(root)
        await _until(lambda: source.problem() is not None)
        assert str(root) in source.problem() and "is gone" in source.problem()
        root.mkdir()
        (root / "early.dat").write_bytes(b"landed before the folder was watched again")
        await recorder.wait_for(root / "early.dat")
        (root / "later.dat").write_bytes(b"landed after")
        await recorder.wait_for(root / "later.dat")
        assert source.problem() is None
    finally:
        await stopped(task)


async def test_a_root_renamed_away_gives_way_to_the_new_folder(root, tmp_path):
    """mv outbox outbox.1 && mkdir outbox (a rotation): the watches followed the old folder
    away; the new one at the path is watched from then on."""
    recorder = Recorder()
    source, task = await running(root, recorder, rescan=3600)
    try:
        root.rename(tmp_path / "outbox.1")
        root.mkdir()
        (root / "new.dat").write_bytes(b"in the new folder")
        await recorder.wait_for(root / "new.dat")
        await _until(lambda: source._inotify is not None)
        (tmp_path / "outbox.1" / "old.dat").write_bytes(b"left behind")
        (root / "newer.dat").write_bytes(b"after")
        await recorder.wait_for(root / "newer.dat")
        assert root / "old.dat" not in recorder.submitted
        assert source._inotify is not None and len(source._inotify.watches) == 1
    finally:
        await stopped(task)


async def test_a_symlinked_root_follows_its_new_target(tmp_path):
    """outbox -> releases/a, then retargeted to releases/b (ln -sfn): the new target's files
    are taken, by events from then on."""
    for name in ("a", "b"):
        (tmp_path / "releases" / name).mkdir(parents=True)
    link = tmp_path / "outbox"
    link.symlink_to(tmp_path / "releases" / "a")
    recorder = Recorder()
    source, task = await running(link, recorder, rescan=3600)
    try:
        (tmp_path / "releases" / "b" / "waiting.dat").write_bytes(b"there before the switch")
        swap = tmp_path / "outbox.new"
        swap.symlink_to(tmp_path / "releases" / "b")
        swap.replace(link)
        await recorder.wait_for(link / "waiting.dat")
        await _until(lambda: source.scans_completed >= 2)
        (link / "after.dat").write_bytes(b"written through the new link")
        await recorder.wait_for(link / "after.dat")
        assert source.problem() is None
    finally:
        await stopped(task)


async def test_files_settle_in_order_and_an_idle_source_does_not_wake(root):
    """Files settle `settle_seconds` after their last change, a file written again starting
    its wait afresh; with nothing settling, the settle loop sleeps until a file comes (it
    used to look at the clock ten times a second, and at every file settling each time)."""
    reads: list[float] = []

    def clock() -> float:
        reads.append(time.monotonic())
        return reads[-1]

    recorder = Recorder()
    walker = TreeWalker(root=root, file_filter=FileFilter(SourceConfig()))
    source = DirectorySource(walker=walker, submit=recorder.submit, settle_seconds=0.3,
                             rescan_interval_seconds=3600, clock=clock)
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(source.wait_first_scan(), 10)
        await asyncio.sleep(0.1)
        reads.clear()
        await asyncio.sleep(1.0)
        assert reads == [], f"{len(reads)} clock reads in a second of idleness"

        first, second = root / "first.dat", root / "second.dat"
        first.write_bytes(b"1")
        await asyncio.sleep(0.1)
        second.write_bytes(b"2")
        await asyncio.sleep(0.1)
        first.write_bytes(b"1 again")  # its quiet period starts again, after second's
        written_last = time.monotonic()
        await recorder.wait_for(first)
        assert time.monotonic() - written_last >= 0.3
        assert recorder.submitted == [second, first]
    finally:
        await stopped(task)
