"""One file to upload, and the stat signature that proves it did not change."""

from __future__ import annotations

import errno
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from uploader.errors import (
    OutOfDescriptors,
    SourceAway,
    SourceChanged,
    SourceUnreadable,
    SourceVanished,
    UploaderError,
)

# Errors of a network or FUSE filesystem that pass: a soft-mounted NFS server away answers
# EIO (or ETIMEDOUT with `softerr`), a file replaced on the server leaves a stale handle
# (ESTALE: the next open gets a fresh one), a FUSE backend gone answers ENOTCONN. On a local
# disk EIO may be a bad sector that stays; tried again every `retry.retry_later_seconds`, it
# waits `pending` with the reason (`uploader status`), never lost, never failed in silence.
PASSING_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.ENOTCONN,
                            errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENOLINK, errno.ECOMM})


@dataclass(frozen=True)
class Signature:
    """What must stay the same from the start of an upload to its end.

    The ctime too: a file rewritten in place with its size and mtime put back (cp -p,
    rsync -t, tar -x) keeps its inode, but the kernel moves its ctime on every write,
    and nothing can set it back.
    """

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int | None = None  # None: not known (given without a stat)

    @classmethod
    def of(cls, st: os.stat_result) -> "Signature":
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino,
                   ctime_ns=st.st_ctime_ns)


@dataclass(frozen=True)
class FileJob:
    path: Path
    relative: str
    key: str
    signature: Signature
    metadata: dict[str, str] = field(default_factory=dict)
    # Write only if no object exists under the key yet (If-None-Match: *): two
    # instances racing on duplicate queue messages cannot both publish.
    create_only: bool = False

    @property
    def size(self) -> int:
        return self.signature.size


def create_only_condition(job: FileJob) -> dict[str, str]:
    """Request parameters that make a PUT or Complete fail if the key already exists."""
    return {"IfNoneMatch": "*"} if job.create_only else {}


def unreadable(path: Path, doing: str, exc: OSError) -> UploaderError:
    """What an OSError reading the file means for it: a shortage or a filesystem's failure
    that passes (a transient error: tried again later), or a fault that stays until the
    file changes (permissions, a directory...)."""
    code = errno.errorcode.get(exc.errno or 0, "OSError")
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return OutOfDescriptors(f"{path}: {doing}: {exc.strerror} (the open-files limit, "
                                "ulimit -n); tried again later", code=code)
    if exc.errno in PASSING_ERRNOS:
        return SourceAway(f"{path}: {doing}: {exc.strerror}; tried again later", code=code)
    return SourceUnreadable(f"{path}: {doing}: {exc.strerror}")


def stat_signature(path: Path, *, follow_symlinks: bool = True) -> Signature:
    try:
        return Signature.of(os.stat(path, follow_symlinks=follow_symlinks))
    except FileNotFoundError:
        raise SourceVanished(f"{path}: the file vanished before it could be uploaded") from None
    except OSError as exc:
        raise unreadable(path, "cannot stat", exc) from None


def open_for_upload(job: FileJob) -> int:
    """Open read-only; the same inode as at the start, or the file was replaced."""
    try:
        fd = os.open(job.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SourceVanished(f"{job.path}: the file vanished before it could be uploaded") from None
    except OSError as exc:
        raise unreadable(job.path, "cannot open", exc) from None
    if Signature.of(os.fstat(fd)) != job.signature:
        os.close(fd)
        raise SourceChanged(f"{job.path}: the file changed since it settled")
    return fd


def ensure_unchanged(job: FileJob) -> None:
    """Raise SourceChanged if the file at `job.path` is no longer what we read."""
    try:
        now = Signature.of(os.stat(job.path))
    except FileNotFoundError:
        raise SourceVanished(f"{job.path}: the file vanished during its upload") from None
    except OSError as exc:
        raise unreadable(job.path, "cannot stat", exc) from None
    if now != job.signature:
        raise SourceChanged(f"{job.path}: the file changed during its upload "
                            f"(size {job.signature.size} -> {now.size}); it will be "
                            "uploaded again once it settles")


def ensure_read_unchanged(fd: int, job: FileJob) -> None:
    """Raise SourceChanged if the open file changed while we read it.

    fstat on the descriptor we read from, not a stat of the path: the bytes
    sent are that inode's, so it is the one that must be unchanged (a file
    renamed over the path meanwhile is a new file with events of its own), and
    no path lookup is paid for it.
    """
    now = Signature.of(os.fstat(fd))
    if now != job.signature:
        raise SourceChanged(f"{job.path}: the file changed during its upload "
                            f"(size {job.signature.size} -> {now.size}); it will be "
                            "uploaded again once it settles")


def read_range(fd: int, *, offset: int, length: int, path: Path) -> bytes:
    chunks: list[bytes] = []
    remaining = length
    while remaining:
        try:
            chunk = os.pread(fd, remaining, offset + length - remaining)
        except OSError as exc:
            raise unreadable(path, "read failed", exc) from None
        if not chunk:
            raise SourceChanged(f"{path}: the file shrank during its upload")
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # b"" when length is 0


def read_into(fd: int, buffer: bytearray | mmap.mmap, *, offset: int, path: Path) -> None:
    """Fill `buffer` from `offset` (no allocation: the buffer is reused part after part)."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        try:
            count = os.preadv(fd, [view[filled:]], offset + filled)
        except OSError as exc:
            raise unreadable(path, "read failed", exc) from None
        if not count:
            raise SourceChanged(f"{path}: the file shrank during its upload")
        filled += count
