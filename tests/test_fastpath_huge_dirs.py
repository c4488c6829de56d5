"""Huge directories: files are handed on as they are listed, never the whole tree at once.

A tree of a million files must not be held in memory, and the first uploads
must not wait for a walk of the whole tree (neither the scan nor the setting
up of inotify watches).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from uploader.config import SourceConfig
from uploader.filters import FileFilter
from uploader.sources.directory import DirectorySource
from uploader.sources.walk import TreeWalker


class CountingScandir:
    """os.scandir, counting the entries read so far over every listing."""

    listed = 0

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._it = _real_scandir(path)

    def __enter__(self) -> "CountingScandir":
        return self

    def __exit__(self, *exc: object) -> None:
        self._it.close()

    def __iter__(self) -> "CountingScandir":
        return self

    def __next__(self) -> os.DirEntry[str]:
        entry = next(self._it)
        CountingScandir.listed += 1
        return entry


_real_scandir = os.scandir


@pytest.fixture
def counting_scandir(monkeypatch: pytest.MonkeyPatch) -> type[CountingScandir]:
    CountingScandir.listed = 0
    monkeypatch.setattr(os, "scandir", CountingScandir)
    return CountingScandir


def make_tree(root: Path, *, folders: int, files: int) -> int:
    for d in range(folders):
        folder = root / f"d{d:02d}"
        folder.mkdir(parents=True)
        for f in range(files):
            (folder / f"f{f:03d}.txt").write_bytes(b"x")
    return folders * (files + 1)  # entries: the files and the folders themselves


def walker_for(root: Path) -> TreeWalker:
    return TreeWalker(root=root, file_filter=FileFilter(SourceConfig(directory=root)))


def test_the_walker_yields_files_as_it_lists_them(tmp_path, counting_scandir):
    entries = make_tree(tmp_path, folders=3, files=1000)
    files = walker_for(tmp_path).files()
    next(files)
    assert counting_scandir.listed < 10  # not the 3,003 entries of the tree
    assert sum(1 for _ in files) == 3000 - 1
    assert counting_scandir.listed == entries


async def test_the_source_hands_on_files_before_the_scan_ends_and_watches_first(
        tmp_path, counting_scandir):
    """The first file goes on before the tree is listed (no up-front walk for inotify
    watches either); and a file that lands in a folder right after its listing still
    arrives, by its inotify event, long before any rescan."""
    entries = make_tree(tmp_path, folders=20, files=50)
    submitted: list[Path] = []
    first_seen: dict[str, int] = {}
    late: list[Path] = []
    late_arrived = asyncio.Event()

    async def submit(path: Path, relative: str, signature: object = None) -> None:
        if not submitted:
            first_seen.update(listed=counting_scandir.listed, scans=source.scans_completed)
        elif not late and path.parent != submitted[0].parent:
            # The walker lists one folder to the end before the next: the first
            # folder's listing is over. A file lands there now.
            late.append(submitted[0].parent / "late.txt")
            late[0].write_bytes(b"landed after its folder was listed")
        submitted.append(path)
        if late and path == late[0]:
            late_arrived.set()
        await asyncio.sleep(0)

    source = DirectorySource(walker=walker_for(tmp_path), submit=submit, settle_seconds=0,
                             rescan_interval_seconds=3600)
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(late_arrived.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert first_seen["scans"] == 0
    assert first_seen["listed"] < entries // 10
    # The late file came by its event, not by a rescan (the first scan may still be
    # running when it arrives: that is the point).
    assert source.scans_completed <= 1
    assert submitted.count(late[0]) == 1
