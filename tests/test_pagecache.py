"""Small files are read in the loop's thread without waiting for the disk (RWF_NOWAIT):
a file evicted from the page cache is brought back by readahead while the loop
goes on, and only a disk slower than the polls leaves the read to a thread.

Eviction is real: the file is fsynced, then POSIX_FADV_DONTNEED drops its
clean pages, and mincore(2) confirms none is left. (A read with RWF_NOWAIT
cannot be the check: its miss starts the kernel's readahead.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import functools
import mmap
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from test_fastpath import make_config
from uploader.journal import Journal
from uploader.pipeline import Outcome
from uploader.transfer import pagecache
from uploader.transfer.pagecache import (
    CannotTell,
    filesystem_type,
    read_if_cached,
    read_when_cached,
)
from uploader.wiring import services

LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def cached_pages(path: Path) -> int:
    """How many of the file's pages the page cache holds (mincore: asks, reads nothing)."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY) as mm:
        address = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        vector = (ctypes.c_ubyte * pages)()
        if LIBC.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return sum(v & 1 for v in vector)


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert cached_pages(path) == 0


class RecordingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, recording what was handed to a thread."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.calls: list[str] = []

    def submit(self, fn, /, *args, **kwargs):
        # asyncio.to_thread submits partial(context.run, func, ...): name the func.
        target = fn.args[0] if isinstance(fn, functools.partial) and fn.args else fn
        self.calls.append(getattr(target, "__name__", repr(target)))
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def executor():
    """Installed by each test on its own loop (`use`)."""
    pool = RecordingExecutor()
    yield pool
    pool.shutdown()


def use(executor: RecordingExecutor) -> None:
    asyncio.get_running_loop().set_default_executor(executor)


# A patient "fast disk": the shared machine's disk may be slow for a moment, and the
# property tested is that readahead brings the file back, not how quickly.
PATIENT_POLLS = (0.001, 0.002, 0.004) + (0.05,) * 40


def test_a_cached_file_is_read_and_an_evicted_one_is_not_waited_for(tmp_path):
    path, data = tmp_path / "f.bin", os.urandom(16 * 1024)
    write_synced(path, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_if_cached(fd, length=len(data), path=path) == data
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert read_if_cached(fd, length=len(data), path=path) is None
        assert os.pread(fd, len(data), 0) == data  # a waiting read
        assert read_if_cached(fd, length=len(data), path=path) == data
    finally:
        os.close(fd)


async def test_an_evicted_file_comes_back_by_readahead_without_a_thread(tmp_path, executor,
                                                                        monkeypatch):
    use(executor)
    monkeypatch.setattr(pagecache, "CACHE_POLL_DELAYS", PATIENT_POLLS)
    path, data = tmp_path / "f.bin", os.urandom(64 * 1024)
    write_synced(path, data)
    evict(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert await read_when_cached(fd, length=len(data), path=path) == data
    finally:
        os.close(fd)
    assert executor.calls == []


@pytest.fixture
def tmpfs_dir():
    """A folder on tmpfs, which cannot answer RWF_NOWAIT (EOPNOTSUPP) but never waits."""
    folder = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="uploader-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def test_tmpfs_is_read_inline_without_polling(tmpfs_dir, executor,
                                                                      monkeypatch):
    use(executor)
    monkeypatch.setattr(pagecache, "CACHE_POLL_DELAYS", (3600,))  # a poll would hang
    path, data = tmpfs_dir / "f.bin", os.urandom(16 * 1024)
    path.write_bytes(data)
    assert filesystem_type(path.stat().st_dev) == "tmpfs"
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(CannotTell):
            read_if_cached(fd, length=len(data), path=path)
        body = await asyncio.wait_for(read_when_cached(fd, length=len(data), path=path), 10)
    finally:
        os.close(fd)
    assert body == data and executor.calls == []


async def test_another_filesystem_that_cannot_tell_is_left_to_a_thread_at_once(monkeypatch):
    """sysfs cannot answer RWF_NOWAIT, and is not one read inline anyway (as a network
    filesystem would not be): the caller reads in a thread, without polls first."""
    monkeypatch.setattr(pagecache, "CACHE_POLL_DELAYS", (3600,))  # a poll would hang
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    assert filesystem_type(path.stat().st_dev) == "sysfs"
    assert filesystem_type(Path("/proc").stat().st_dev) == "proc"
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(CannotTell):
            read_if_cached(fd, length=16, path=path)
        assert await asyncio.wait_for(read_when_cached(fd, length=16, path=path), 10) is None
    finally:
        os.close(fd)


@pytest.mark.parametrize("disk", ["fast", "slower than the polls"])
async def test_evicted_small_files_upload_byte_identical(disk, tmp_path, executor, monkeypatch,
                                                         s3_server, s3_env, bucket, s3):
    """Through the pipeline to SeaweedFS: read back by readahead in the loop, or (when
    the polls run out first) by a waiting read in a worker thread."""
    use(executor)
    monkeypatch.setattr(pagecache, "CACHE_POLL_DELAYS", PATIENT_POLLS if disk == "fast" else ())
    source = tmp_path / "src"
    source.mkdir()
    files = {f"f{i}.bin": os.urandom(size) for i, size in enumerate([1, 16 * 1024, 200_000])}
    for name, data in files.items():
        write_synced(source / name, data)
        evict(source / name)
    config = make_config(source, s3_server.endpoint_url, bucket)
    journal = Journal(tmp_path / "journal.sqlite3")
    async with services(config, journal=journal) as svc:
        for name in files:
            assert await svc.pipeline.process(source / name, name) is Outcome.UPLOADED
    journal.close()
    for name, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data, name
    read_in_threads = executor.calls.count("_read_checked")
    assert read_in_threads == (0 if disk == "fast" else len(files))
