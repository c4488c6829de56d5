"""Reading a small file in the event loop's thread without ever waiting for the disk.

A small file is cheaper to read inline than through a worker thread (the hop
costs ~0.2 ms of CPU per file, measured with bench/throughput.py --cold),
and it is almost always in the page cache: it was just written. But a file
read back from disk (a backlog after a restart, pages the kernel reclaimed)
would stall every transfer for the length of the read. So the read asks
Linux not to wait (RWF_NOWAIT); on a miss it starts the kernel's readahead
(POSIX_FADV_WILLNEED, ~8 us) and looks again after short sleeps, while the
loop serves other files. Only a disk slower than CACHE_POLL_DELAYS in all
leaves the read to a thread.

Some filesystems cannot answer without waiting (RWF_NOWAIT unsupported:
tmpfs, overlay, several network filesystems). A file on tmpfs or ramfs is
read inline (it never waits), as is one on overlay (a container's own
filesystem, on a local disk: read inline as before); on any other (NFS, SMB,
FUSE...: a read may wait for the network) it is read in a thread, at once.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
from pathlib import Path

from uploader.transfer.job import read_range, unreadable

_NOWAIT = getattr(os, "RWF_NOWAIT", None)  # Linux only
CACHE_POLL_DELAYS = (0.001, 0.002, 0.004, 0.008, 0.016)  # seconds: 31 ms in all
# Without RWF_NOWAIT, but read inline anyway: in memory, or on a local disk.
INLINE_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "overlay"})


class CannotTell(Exception):
    """The file's filesystem does not support RWF_NOWAIT."""


def read_if_cached(fd: int, *, length: int, path: Path) -> bytes | None:
    """The first `length` bytes if the page cache holds them all, else None.

    Where RWF_NOWAIT does not exist, reads them, waiting (the plain read).
    Raises CannotTell where the filesystem does not support it.
    """
    if _NOWAIT is None:
        return read_range(fd, offset=0, length=length, path=path)
    buffer = bytearray(length)
    try:
        count = os.preadv(fd, [buffer], 0, _NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            raise CannotTell(path) from None
        raise unreadable(path, "read failed", exc) from None
    # Short: partly cached, or the file shrank; a plain read tells which.
    return bytes(buffer) if count == length else None


async def read_when_cached(fd: int, *, length: int, path: Path) -> bytes | None:
    """The first `length` bytes, once the page cache has them; None if the disk took
    longer than CACHE_POLL_DELAYS, or if it cannot tell (then read with a plain, waiting
    read in a thread)."""
    try:
        body = read_if_cached(fd, length=length, path=path)
    except CannotTell:
        if filesystem_type(os.fstat(fd).st_dev) not in INLINE_FILESYSTEMS:
            return None
        return read_range(fd, offset=0, length=length, path=path)
    if body is not None:
        return body
    os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)  # starts the read, returns
    for delay in CACHE_POLL_DELAYS:
        await asyncio.sleep(delay)
        body = read_if_cached(fd, length=length, path=path)
        if body is not None:
            return body
    return None


@functools.lru_cache(maxsize=64)
def filesystem_type(device: int) -> str | None:
    """The type of the filesystem mounted as `device` (a stat's st_dev), e.g. "ext4".

    From /proc/self/mountinfo (the last mount of a device wins; "major:minor" is
    field 3, the type follows " - "). None if unknown.
    """
    wanted = f"{os.major(device)}:{os.minor(device)}"
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields, _, rest = line.partition(" - ")
                parts = fields.split()
                if len(parts) > 2 and parts[2] == wanted and rest:
                    found = rest.split()[0]
    except OSError:
        return None
    return found
