"""A FUSE filesystem that mirrors a directory and fails reads on demand.

    python faulty_fs.py BACKING MOUNTPOINT CONTROL

Every file of BACKING appears at MOUNTPOINT (read-only). While the file CONTROL holds an
errno name (`EIO`, `ESTALE`, ...), every read of a file's bytes fails with that errno, as a
soft-mounted NFS server that is away or a FUSE mount that lost its backend; empty or missing,
reads pass. Stat and listing always work (the attribute cache of a network filesystem).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import mfusepy


class FaultyMirror(mfusepy.Operations):
    use_ns = True

    def __init__(self, backing: Path, control: Path) -> None:
        self.backing = backing
        self.control = control

    def _real(self, path: str) -> Path:
        return self.backing / path.lstrip("/")

    def getattr(self, path: str, fh: int | None = None) -> dict:
        try:
            st = os.lstat(self._real(path))
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno) from None
        attributes = {key: getattr(st, key) for key in (
            "st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_ino")}
        for time in ("st_atime", "st_mtime", "st_ctime"):  # nanoseconds: use_ns
            attributes[time] = getattr(st, f"{time}_ns")
        return attributes

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict, int]]:
        # With use_ino each entry carries its inode: one of 0 is hidden by readdir(3).
        folder = self._real(path)
        entries = []
        for name in (".", "..", *os.listdir(folder)):
            st = os.lstat(folder / name)
            entries.append((name, {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0))
        return entries

    def open(self, path: str, flags: int) -> int:
        return os.open(self._real(path), os.O_RDONLY)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        fault = self._fault()
        if fault:
            raise mfusepy.FuseOSError(getattr(errno, fault))
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def _fault(self) -> str:
        try:
            return self.control.read_text().strip()
        except FileNotFoundError:
            return ""


def main() -> None:
    backing, mountpoint, control = (Path(arg).resolve() for arg in sys.argv[1:4])
    # direct_io: every read reaches `read`, none is served from the page cache;
    # use_ino: the backing files' inode numbers, as a network filesystem reports its own.
    mfusepy.FUSE(FaultyMirror(backing, control), str(mountpoint), foreground=True,
                 ro=True, direct_io=True, use_ino=True)


if __name__ == "__main__":
    main()
