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
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

from uploader.errors import SourceUnreadable
from uploader.transfer.job import read_range

_NOWAIT = getattr(os, "RWF_NOWAIT", None)  # Linux only
CACHE_POLL_DELAYS = (0.001, 0.002, 0.004, 0.008, 0.016)  # seconds: 31 ms in all


def read_if_cached(fd: int, *, length: int, path: Path) -> bytes | None:
    """The first `length` bytes if the page cache holds them all, else None.

    Where RWF_NOWAIT does not exist, reads them, waiting (the plain read).
    """
    if _NOWAIT is None:
        return read_range(fd, offset=0, length=length, path=path)
    buffer = bytearray(length)
    try:
        count = os.preadv(fd, [buffer], 0, _NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it
            return None
        raise SourceUnreadable(f"{path}: read failed: {exc.strerror}") from None
    # Short: partly cached, or the file shrank; a plain read tells which.
    return bytes(buffer) if count == length else None


async def read_when_cached(fd: int, *, length: int, path: Path) -> bytes | None:
    """The first `length` bytes, once the page cache has them; None if the disk took
    longer than CACHE_POLL_DELAYS (then read with a plain, waiting read)."""
    body = read_if_cached(fd, length=length, path=path)
    if body is not None:
        return body
    os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)  # starts the read, returns
    for delay in CACHE_POLL_DELAYS:
        await asyncio.sleep(delay)
        body = read_if_cached(fd, length=length, path=path)
        if body is not None:
            return body
    return None
