"""The watched directory when the kernel's inotify limits are reached.

Both limits are per user (every process of the user counts: on a host where
containers run as root, all of them together), and both are reached here for
real, held for the test and released: `fs.inotify.max_user_instances` (128 by
default: inotify_init answers EMFILE, "Too many open files") and
`fs.inotify.max_user_watches` (inotify_add_watch answers ENOSPC, "No space left
on device", though no disk is full). Files must still be found, by rescans, and
the log must name the limit. (The suite runs one test at a time: in parallel,
these would starve the inotify of every other test while they hold the limit.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import math
import os
import resource
from pathlib import Path
from typing import Iterator

import pytest
from test_directory_source import Recorder, running, stopped

LIMITS = Path("/proc/sys/fs/inotify")
IN_CLOEXEC = os.O_CLOEXEC
IN_ATTRIB = 0x00000004
_libc = ctypes.CDLL(None, use_errno=True)


def _inotify_init() -> int:
    """A new inotify instance's fd, or -errno."""
    fd = _libc.inotify_init1(IN_CLOEXEC)
    return fd if fd >= 0 else -ctypes.get_errno()


@contextlib.contextmanager
def _enough_open_files(count: int) -> Iterator[None]:
    """This process may hold `count` more fds: the limit reached must be inotify's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(soft, len(os.listdir("/proc/self/fd")) + count + 64)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def every_inotify_instance_taken() -> Iterator[None]:
    limit = int((LIMITS / "max_user_instances").read_text())
    fds: list[int] = []
    with _enough_open_files(limit):
        try:
            while (fd := _inotify_init()) >= 0:
                fds.append(fd)
                assert len(fds) <= limit, "inotify_init1 never refused"
            assert fd == -errno.EMFILE, os.strerror(-fd)
            yield
        finally:
            for fd in fds:
                os.close(fd)


@contextlib.contextmanager
def every_inotify_watch_taken(folder: Path) -> Iterator[None]:
    """Watches on `folder`'s files from 64 instances (a watch is per instance and inode)
    until the kernel refuses one."""
    limit = int((LIMITS / "max_user_watches").read_text())
    folder.mkdir()
    names = []
    for number in range(math.ceil(limit / 64) + 1):
        (folder / f"f{number}").touch()
        names.append(os.fsencode(folder / f"f{number}"))
    fds: list[int] = []
    try:
        while True:
            fd = _inotify_init()
            assert fd >= 0, f"inotify_init1: {os.strerror(-fd)}"
            fds.append(fd)
            for name in names:
                if _libc.inotify_add_watch(fd, name, IN_ATTRIB) < 0:
                    assert ctypes.get_errno() == errno.ENOSPC, os.strerror(ctypes.get_errno())
                    yield
                    return
    finally:
        for fd in fds:
            os.close(fd)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "outbox" / "sub").mkdir(parents=True)
    return tmp_path / "outbox"


async def test_without_an_inotify_instance_files_are_found_by_rescans(root, caplog):
    caplog.set_level(logging.INFO, logger="uploader")
    recorder = Recorder()
    with every_inotify_instance_taken():
        _, task = await running(root, recorder, rescan=0.3)
        try:
            (root / "sub" / "late.txt").write_bytes(b"written after the first scan")
            await recorder.wait_for(root / "sub" / "late.txt")
        finally:
            await stopped(task)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("fs.inotify.max_user_instances" in w and "rescans only" in w
               and "every 0.3 s" in w for w in warnings), warnings


async def test_past_the_inotify_watch_limit_files_are_found_by_rescans_with_one_warning(
        root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="uploader")
    recorder = Recorder()
    with every_inotify_watch_taken(tmp_path / "watched-elsewhere"):
        source, task = await running(root, recorder, rescan=0.3)
        try:
            (root / "sub" / "late.txt").write_bytes(b"written after the first scan")
            await recorder.wait_for(root / "sub" / "late.txt")
            scans = source.scans_completed
            while source.scans_completed < scans + 2:  # folders tried again, still refused
                await asyncio.sleep(0.05)
        finally:
            await stopped(task)
    limit_warnings = [r.getMessage() for r in caplog.records
                      if "fs.inotify.max_user_watches" in r.getMessage()]
    assert len(limit_warnings) == 1, limit_warnings
    assert "No space left on device" not in caplog.text

