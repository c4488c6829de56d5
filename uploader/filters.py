"""Which files are uploaded: include/exclude globs, hidden and temporary files.

Pure functions on relative paths (`a/b/c.txt`), no I/O.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

from uploader.config import SourceConfig

TEMPORARY_PATTERNS = ("*.tmp", "*.temp", "*.part", "*.partial", "*.crdownload",
                      "*.swp", "*.swx", "*~", "#*#", ".#*")


@lru_cache(maxsize=256)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob where `**` spans folders and `*`/`?` stay within one name."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def matches_any(relative_path: str, patterns: Iterable[str]) -> bool:
    return any(glob_to_regex(p).match(relative_path) for p in patterns)


def any_of(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching what any of the globs matches (None for no globs): one
    match per file instead of one per pattern."""
    patterns = tuple(patterns)
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{glob_to_regex(p).pattern})" for p in patterns),
                      re.DOTALL)


_TEMPORARY = any_of(TEMPORARY_PATTERNS)


class FileFilter:
    """Decides from a relative path alone whether a file is ours to upload."""

    def __init__(self, source: SourceConfig) -> None:
        self.include = tuple(source.include)
        self.exclude = tuple(source.exclude)
        self.ignore_hidden = source.ignore_hidden
        self.ignore_temporary = source.ignore_temporary
        self._include = any_of(self.include)
        self._exclude = any_of(self.exclude)

    def wants_directory(self, relative_dir: str) -> bool:
        """Whether to descend into a folder (hidden folders are skipped whole)."""
        name = relative_dir.rsplit("/", 1)[-1]
        return not (self.ignore_hidden and name.startswith("."))

    def wants_file(self, relative_path: str) -> bool:
        name = relative_path.rsplit("/", 1)[-1]
        if self.ignore_hidden and (name.startswith(".") or "/." in relative_path
                                   or relative_path.startswith(".")):
            return False
        if self.ignore_temporary and _TEMPORARY.match(name):  # type: ignore[union-attr]
            return False
        if self._exclude is not None and self._exclude.match(relative_path):
            return False
        return self._include is not None and self._include.match(relative_path) is not None
