"""The watched directory: turning files that land in it into settled upload jobs.

A file is handed on only when it is whole: it was closed after writing
(IN_CLOSE_WRITE) or moved in (IN_MOVED_TO), and then stayed unchanged for
`settle_seconds`. Files still open for writing (seen modified, not yet closed)
are not taken, with two exceptions, because some changes close nothing: a
link made in the tree (a hard link or, with `follow_symlinks`, a symlink:
IN_CREATE alone) settles at once, and a file seen written but silent for a
whole `rescan_interval_seconds` (e.g. truncated by path: IN_MODIFY alone) is
taken by the next rescan, after settling. A full rescan at start and every
`rescan_interval_seconds` catches what events missed (inotify queues
overflow); after an overflow the open-for-writing knowledge is gone, so
rescans rely on the settle period.

Each folder is watched just before the scan lists it (not all folders up
front), so a file that lands after its folder's listing raises an event, and
the first files of a tree with a million of them go on within milliseconds
instead of after a walk of the whole tree.

The root itself is checked every `ROOT_CHECK_SECONDS`: removed, renamed away
or unmounted, it is reported missing (readiness says so) and rescans pause;
once a folder stands at its path again (a new one, or a file system mounted
there), inotify starts afresh (the old watches followed the old folder's
inodes, wherever they went) and a full rescan takes what landed meanwhile.

On systems without inotify, or when the user's inotify limits are reached
(`fs.inotify.max_user_instances`, `max_user_watches`: shared by every process of
the user, all root containers of a host together), rescans alone find files, in
the folders they could not watch; the log names the limit.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from uploader.sources.walk import TreeWalker
from uploader.transfer.job import Signature

try:  # Linux only; elsewhere rescans do the work.
    from asyncinotify import Inotify, Mask, Watch
except (ImportError, OSError):  # pragma: no cover - exercised on non-Linux only
    Inotify = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

# (path, path relative to the root, its stat as just seen)
Submit = Callable[[Path, str, Signature | None], Awaitable[None]]
# Whether a file a rescan finds is known to be uploaded as it is (then not submitted).
KnownUploaded = Callable[[Path, str, Signature], bool]
ROOT_CHECK_SECONDS = 1.0  # one stat a second: how soon a removed or replaced root is seen


@dataclass
class _Settling:
    signature: Signature
    due: float


class DirectorySource:
    def __init__(self, *, walker: TreeWalker, submit: Submit, settle_seconds: float,
                 rescan_interval_seconds: float, known_uploaded: KnownUploaded | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.walker = walker
        self.root = walker.root
        self.submit = submit
        self.known_uploaded = known_uploaded
        self.settle_seconds = settle_seconds
        self.rescan_interval = rescan_interval_seconds
        self.follow_symlinks = walker.follow_symlinks
        self._clock = clock
        self._wall_clock = wall_clock
        self._settling: dict[Path, _Settling] = {}  # in order of due time
        self._settling_added = asyncio.Event()
        # Seen created or modified and not closed yet: when it was last seen written.
        self._writing: dict[Path, float] = {}
        self._wake = asyncio.Event()
        self._full_rescan = False
        self._subtrees: list[Path] = []
        self._ready = asyncio.Event()
        self._inotify: "Inotify | None" = None
        self._watches: dict[int, "Watch"] = {}  # by descriptor, while the kernel keeps them
        self._watch_limit_reached = False  # warned once: fs.inotify.max_user_watches
        self._root_missing_since: float | None = None  # wall clock
        self.scans_completed = 0

    async def run(self) -> None:
        """Watch, scan and settle until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch(), name="watch")
            group.create_task(self._rescan_loop(), name="rescan")
            group.create_task(self._settle_loop(), name="settle")

    def problem(self) -> str | None:
        """What keeps this source from finding files now (for readiness), or None."""
        if self._root_missing_since is None:
            return None
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self._root_missing_since))
        return (f"{self.root} is gone since {since} (removed, moved away or unmounted); "
                "waiting for it to be back")

    def _open_inotify(self) -> "Inotify | None":
        """An inotify instance, or None (with a warning saying why) to rely on rescans."""
        reason = "inotify is not available"
        if Inotify is not None:
            try:
                return Inotify()
            except OSError as exc:
                reason = f"cannot use inotify: {exc.strerror or exc}"
                if exc.errno == errno.EMFILE:
                    reason += (" (the per-user limit on inotify instances, "
                               "fs.inotify.max_user_instances, is reached)")
        log.warning("%s; finding files by rescans only, every %g s "
                    "(source.rescan_interval_seconds)", reason, self.rescan_interval)
        return None

    def resettle(self, path: Path) -> None:
        """A file changed during its upload: wait for it to settle again."""
        self._consider(path)

    async def wait_first_scan(self) -> None:
        await self._ready.wait()

    # -- scanning ---------------------------------------------------------

    async def _rescan_loop(self) -> None:
        await self.scan(self.root)
        self._ready.set()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.rescan_interval)
                timed_out = False
            except TimeoutError:
                timed_out = True
            self._wake.clear()
            if self._root_missing_since is not None:
                continue  # nothing to list: the root's return asks for a full rescan
            if timed_out or self._full_rescan:
                self._full_rescan = False
                self._subtrees.clear()
                await self.scan(self.root)
            while self._subtrees:
                await self.scan(self._subtrees.pop())

    async def scan(self, top: Path) -> None:
        """Walk a tree; old-enough files go straight on, young ones settle first."""
        started = time.monotonic()
        count = 0
        for path, st, relative in self.walker.files(top, entering=self._watch_folder):
            count += 1
            if path in self._settling or self._still_writing(path):
                continue
            if self._wall_clock() - st.st_mtime >= self.settle_seconds:
                signature = Signature.of(st)
                if self.known_uploaded is None or not self.known_uploaded(path, relative,
                                                                          signature):
                    await self.submit(path, relative, signature)
            else:
                self._consider(path, Signature.of(st))
            if count % 512 == 0:
                await asyncio.sleep(0)  # let uploads run during a huge scan
        self.scans_completed += 1
        log.debug("scanned %d files below %s in %.2fs", count, top, time.monotonic() - started)

    def _still_writing(self, path: Path) -> bool:
        """Seen written and not closed, unless silent for a whole rescan interval: some
        writes close nothing (truncate by path), and no event would ever free the file."""
        last_written = self._writing.get(path)
        if last_written is None:
            return False
        if self._clock() - last_written < self.rescan_interval:
            return True
        del self._writing[path]
        return False

    # -- settling ---------------------------------------------------------

    def _consider(self, path: Path, signature: Signature | None = None) -> None:
        if signature is None:
            signature = self._signature(path)
            if signature is None:
                return
        # Removed first, so that it goes to the end: every entry is due `settle_seconds`
        # after it was put in, so the dict stays in order of due time.
        self._settling.pop(path, None)
        self._settling[path] = _Settling(signature, self._clock() + self.settle_seconds)
        self._settling_added.set()

    def _signature(self, path: Path) -> Signature | None:
        try:
            return Signature.of(os.stat(path, follow_symlinks=self.follow_symlinks))
        except OSError:
            return None

    async def _settle_loop(self) -> None:
        """Settle the first file due, else sleep until it is due, or until one comes:
        an idle daemon does not wake, a burst of thousands settling is not scanned
        whole on each wake-up."""
        while True:
            first = next(iter(self._settling.items()), None)
            if first is None:
                self._settling_added.clear()
                await self._settling_added.wait()
                continue
            path, entry = first
            wait = entry.due - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                await self._settle(path)

    async def _settle(self, path: Path) -> None:
        entry = self._settling.pop(path, None)
        if entry is None or self._still_writing(path):
            return
        current = self._signature(path)
        if current is None:
            return  # gone: nothing to upload
        if current != entry.signature:
            self._consider(path, current)  # still changing: start the quiet period again
            return
        await self.submit(path, self.walker.relative(path), current)

    # -- inotify ----------------------------------------------------------

    async def _watch(self) -> None:
        """Follow inotify's events while the root stays the folder watched; when another
        folder stands at its path, start afresh there."""
        identity = _identity(self.root)
        while True:
            self._inotify = self._open_inotify()
            following = None
            if self._inotify is not None:
                following = asyncio.create_task(self._follow(self._inotify), name="inotify")
            try:
                identity = await self._until_root_replaced(identity)
            finally:
                if following is not None:
                    following.cancel()
                    await asyncio.gather(following, return_exceptions=True)
                if self._inotify is not None:
                    self._inotify.close()  # with it every watch on the old tree
                    self._inotify = None
                    self._watches.clear()
            self._writing.clear()  # what was open for writing was in the old tree
            self._full_rescan = True  # with the new instance's watches
            self._wake.set()

    async def _follow(self, inotify: "Inotify") -> None:
        # Folders get their watches from the scan (`_watch_folder`), each before it is listed.
        async for event in inotify:
            self._on_event(inotify, event, _mask())

    async def _until_root_replaced(self, identity: tuple[int, int] | None) -> tuple[int, int]:
        """Checks the root every ROOT_CHECK_SECONDS; returns the identity of the folder
        found at its path once it differs from `identity` (gone in between, or not)."""
        while True:
            await asyncio.sleep(ROOT_CHECK_SECONDS)
            current = _identity(self.root)
            if current == identity:
                continue
            if current is not None:
                if self._root_missing_since is not None:
                    log.warning("%s is back; watching it and rescanning", self.root)
                else:
                    log.warning("%s is another folder now (replaced or mounted over); "
                                "watching it and rescanning", self.root)
                self._root_missing_since = None
                return current
            if self._root_missing_since is None:
                self._root_missing_since = self._wall_clock()
                log.warning("%s is gone (removed, moved away or unmounted); its files are "
                            "taken again once a folder is back at that path", self.root)
            identity = None

    def _watch_folder(self, folder: Path) -> None:
        if self._inotify is not None:
            self._add_watch(self._inotify, folder, _mask())

    def _add_watches(self, inotify: "Inotify", top: Path, mask: "Mask") -> None:
        for directory in self.walker.directories(top):
            self._add_watch(inotify, directory, mask)

    def _add_watch(self, inotify: "Inotify", directory: Path, mask: "Mask") -> None:
        try:
            watch = inotify.add_watch(directory, mask)  # again on a rescan: the same watch
        except OSError as exc:
            self._cannot_watch(directory, exc)
            return
        # A watch follows its folder's inode; after a rename it is found again under
        # the new path, and its events must name files by that path from now on.
        watch.path = directory
        self._watches[watch.wd] = watch

    def _unwatch(self, inotify: "Inotify", top: Path) -> None:
        """Stop watching a folder moved away, and every folder in it.

        A watch follows its folder's inode wherever it goes: a folder moved out of
        the tree (an app archiving what it finished) would keep counting against
        fs.inotify.max_user_watches, and raising events, for as long as we run. A
        folder renamed within the tree is watched again under its new name
        (IN_MOVED_TO), and its scan takes what landed in between.
        """
        for wd, watch in list(self._watches.items()):
            if watch.path == top or top in watch.path.parents:
                inotify.rm_watch(watch)
                del self._watches[wd]

    def _cannot_watch(self, directory: Path, exc: OSError) -> None:
        if exc.errno != errno.ENOSPC:
            log.warning("cannot watch %s (%s); rescans will cover it", directory,
                        exc.strerror or exc)
        elif not self._watch_limit_reached:
            # ENOSPC here is no full disk. Said once: past the limit, every folder of
            # every rescan would say it again.
            self._watch_limit_reached = True
            log.warning("cannot watch %s and folders after it: the per-user limit on "
                        "inotify watches (fs.inotify.max_user_watches) is reached; rescans "
                        "will cover them, every %g s (source.rescan_interval_seconds)",
                        directory, self.rescan_interval)
        else:
            log.debug("cannot watch %s: inotify watch limit", directory)

    def _on_event(self, inotify: "Inotify", event: object, mask: "Mask") -> None:
        kind = event.mask  # type: ignore[attr-defined]
        if Mask.Q_OVERFLOW in kind:
            log.warning("inotify queue overflowed; rescanning %s", self.root)
            self._writing.clear()
            self._full_rescan = True
            self._wake.set()
            return
        if Mask.IGNORED in kind:  # the watch is gone (its folder deleted, or removed by us)
            watch = event.watch  # type: ignore[attr-defined]
            if watch is not None:
                self._watches.pop(watch.wd, None)
            return
        path = event.path  # type: ignore[attr-defined]
        if path is None:
            return
        if Mask.ISDIR in kind:
            if kind & Mask.MOVED_FROM:
                self._unwatch(inotify, path)
            elif kind & (Mask.CREATE | Mask.MOVED_TO) and self.walker.wants_dir(path):
                # Files may have landed before the watch existed: scan the new tree.
                self._add_watches(inotify, path, mask)
                self._subtrees.append(path)
                self._wake.set()
            return
        if not self.walker.wants_file(path):
            return
        if kind & Mask.CREATE and self._is_link(path):
            if not path.is_symlink() or self.follow_symlinks:
                self._consider(path)  # a new name for existing bytes: nothing writes through it
        elif kind & (Mask.CREATE | Mask.MODIFY):
            self._writing[path] = self._clock()
            self._settling.pop(path, None)
        elif kind & (Mask.CLOSE_WRITE | Mask.MOVED_TO):
            self._writing.pop(path, None)
            self._consider(path)
        elif kind & (Mask.DELETE | Mask.MOVED_FROM):
            self._writing.pop(path, None)
            self._settling.pop(path, None)
        elif kind & Mask.ATTRIB and path not in self._writing:
            # chmod, chown: a file refused for its permissions may be readable now (the
            # pipeline passes over a file uploaded already, or failed and unchanged).
            self._consider(path)

    @staticmethod
    def _is_link(path: Path) -> bool:
        """A symlink, or a hard link to an existing file: IN_CREATE and nothing after."""
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1)


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder at this path now (following symlinks), or None."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _mask() -> "Mask":
    return (Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MODIFY | Mask.CREATE | Mask.DELETE
            | Mask.MOVED_FROM | Mask.ATTRIB | Mask.ONLYDIR)
