"""One process owns a state_dir: an `uploader run` or an `uploader enqueue`, never two.

Two instances on one state_dir would each see every file pending and upload it
(twice, racing on `after_upload`), and two writers of one SQLite journal on a
shared volume (NFS) put the journal itself at risk. The owner holds an exclusive
flock on `state_dir/owner.lock` for its whole life. The kernel drops the lock when
the process ends, however it ends (SIGKILL too), so a crash leaves no stale lock
behind; on NFS, Linux maps flock to the server's byte-range locks. The file
names the holder, for the message the next one gets.

In a rolling update on a shared volume the new instance starts while the old one still
finishes its uploads (up to its `shutdown_grace_seconds`): `when_free` waits for it,
up to `state_dir_lock_wait_seconds`, rather than failing at once and being restarted
with a growing back-off by the orchestrator.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from uploader.errors import ConfigError

LOCK_FILE = "owner.lock"
POLL_SECONDS = 0.5  # how often a waiting instance tries the lock again
log = logging.getLogger(__name__)
T = TypeVar("T")


class StateDirBusy(ConfigError):
    """Another process holds the state_dir; the message names it."""


@dataclass
class StateDirLock:
    path: Path
    fd: int

    @classmethod
    def take(cls, state_dir: Path, *, owner: str) -> "StateDirLock | None":
        """The lock on `state_dir` for `owner` (e.g. "uploader run"). Raises ConfigError
        naming the holder if another process has it; None (with a warning) on a
        filesystem that cannot lock."""
        path = state_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StateDirBusy(f"state_dir: {state_dir} is in use by another uploader "
                              f"({holder}); each instance needs its own state_dir") from None
        except OSError as exc:
            os.close(fd)
            log.warning("state_dir: cannot lock %s (%s); make sure no other uploader uses "
                        "this state_dir", path, exc.strerror or exc)
            return None
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner}, pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{since}\n".encode(), 0)
        return cls(path=path, fd=fd)

    def release(self) -> None:
        os.close(self.fd)  # closing the last descriptor drops the flock


def _holder(fd: int) -> str:
    text = os.pread(fd, 1024, 0).decode("utf-8", errors="replace").strip()
    return text or "it has not said who it is yet"


async def when_free(take: Callable[[], T], *, wait_seconds: float,
                    stop: asyncio.Event) -> T | None:
    """`take()` (which takes the lock) once no other process holds it, trying again every
    POLL_SECONDS for up to `wait_seconds`, then StateDirBusy. None if `stop` is set
    meanwhile (SIGTERM while waiting)."""
    deadline = time.monotonic() + wait_seconds
    announced = False
    while True:
        try:
            return take()
        except StateDirBusy as busy:
            if time.monotonic() >= deadline:
                waited = f" (waited {wait_seconds:g} s for it to stop)" if wait_seconds else ""
                raise StateDirBusy(f"{busy}{waited}") from None
            if not announced:
                log.warning("%s; waiting up to %g s for it to stop", busy, wait_seconds)
                announced = True
        try:
            await asyncio.wait_for(stop.wait(), timeout=POLL_SECONDS)
            return None
        except TimeoutError:
            pass
