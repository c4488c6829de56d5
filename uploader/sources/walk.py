"""Walking a directory tree lazily: a huge tree is never held in memory whole."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from uploader.filters import FileFilter

log = logging.getLogger(__name__)


class FoundFile(NamedTuple):
    path: Path
    stat: os.stat_result
    relative: str  # below the walker's root, with `/` separators


#: Told about a folder that could not be listed: (folder, the error).
ListingError = Callable[[Path, OSError], None]


def warn_unlisted(folder: Path, exc: OSError) -> None:
    """The default: a watching daemon lists the folder again at its next rescan."""
    log.warning("cannot list %s: %s", folder, exc.strerror or exc)


class TreeWalker:
    def __init__(self, *, root: Path, file_filter: FileFilter, follow_symlinks: bool = False,
                 ignore_dirs: tuple[Path, ...] = (),
                 on_error: ListingError = warn_unlisted) -> None:
        self.root = root
        self.filter = file_filter
        self.follow_symlinks = follow_symlinks
        self.ignore_dirs = tuple(p.resolve() for p in ignore_dirs)
        self.on_error = on_error

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def wants_dir(self, path: Path) -> bool:
        return self._wants_dir(path, self.relative(path))

    def _wants_dir(self, path: Path, relative: str) -> bool:
        if self.ignore_dirs and path.resolve() in self.ignore_dirs:
            return False
        return self.filter.wants_directory(relative)

    def wants_file(self, path: Path) -> bool:
        try:
            return self.filter.wants_file(self.relative(path))
        except ValueError:  # not below the root
            return False

    def files(self, top: Path | None = None, *,
              entering: Callable[[Path], None] | None = None) -> Iterator[FoundFile]:
        """(path, stat, relative path) of every wanted regular file below `top`
        (default: the root).

        Lazy: one folder listing is open at a time and files are yielded as they are
        listed; only folders still to visit are held. `entering(folder)` runs just
        before each folder is listed (the directory source watches it there); a
        folder that cannot be listed goes to `on_error`.
        Relative paths are built as strings on the way down: pathlib's
        `relative_to` per file cost more than the listing itself.
        """
        top = top or self.root
        top_relative = "" if top == self.root else self.relative(top) + "/"
        stack = [(top, top_relative)]
        while stack:
            current, prefix = stack.pop()
            if entering is not None:
                entering(current)
            try:
                entries = os.scandir(current)
            except OSError as exc:
                self.on_error(current, exc)
                continue
            with entries:
                for entry in entries:
                    found = self._visit(entry, prefix + entry.name, stack)
                    if found is not None:
                        yield found

    def directories(self, top: Path) -> Iterator[Path]:
        """`top` and every wanted folder below it."""
        stack = [top]
        while stack:
            current = stack.pop()
            yield current
            try:
                with os.scandir(current) as entries:
                    stack.extend(Path(e.path) for e in entries
                                 if e.is_dir(follow_symlinks=self.follow_symlinks)
                                 and self.wants_dir(Path(e.path)))
            except OSError:
                continue

    def _visit(self, entry: os.DirEntry[str], relative: str,
               stack: list[tuple[Path, str]]) -> FoundFile | None:
        follow = self.follow_symlinks
        try:
            if entry.is_dir(follow_symlinks=follow):
                path = Path(entry.path)
                if self._wants_dir(path, relative):
                    stack.append((path, relative + "/"))
            elif entry.is_file(follow_symlinks=follow) and self.filter.wants_file(relative):
                return FoundFile(Path(entry.path), entry.stat(follow_symlinks=follow), relative)
        except OSError:
            pass  # vanished while we looked
        return None
