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


class FileFilter:
    """Decides from a relative path alone whether a file is ours to upload."""

    def __init__(self, source: SourceConfig) -> None:
        self.include = tuple(source.include)
        self.exclude = tuple(source.exclude)
        self.ignore_hidden = source.ignore_hidden
        self.ignore_temporary = source.ignore_temporary

    def wants_directory(self, relative_dir: str) -> bool:
        """Whether to descend into a folder (hidden folders are skipped whole)."""
        name = relative_dir.rsplit("/", 1)[-1]
        return not (self.ignore_hidden and name.startswith("."))

    def wants_file(self, relative_path: str) -> bool:
        parts = relative_path.split("/")
        name = parts[-1]
        if self.ignore_hidden and any(part.startswith(".") for part in parts):
            return False
        if self.ignore_temporary and any(glob_to_regex(p).match(name) for p in TEMPORARY_PATTERNS):
            return False
        if matches_any(relative_path, self.exclude):
            return False
        return matches_any(relative_path, self.include)
