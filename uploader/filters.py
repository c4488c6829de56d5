"""Which files are uploaded: include/exclude globs, hidden and temporary files.

Pure functions on relative paths (`a/b/c.txt`), no I/O.

A glob matches the whole relative path from its start (`*.log` is `x.log`, not
`a/x.log`; `**/*.log` is both). `**` spans folders; `*`, `?` and `[...]` stay
within one name. `[...]` is a character class (`[a-z]`, negated `[!...]` or
`[^...]`; a `]` first in it is a member), `{a,b}` lists alternatives (no
nesting), a leading `/` changes nothing (patterns start at the root anyway) and
a trailing `/` means everything below that folder. Characters mean themselves
otherwise, backslash and commas outside braces included; `[[]`, `[{]`, `[*]`
write a literal `[`, `{`, `*`. A pattern that cannot mean what it seems to say
(an unclosed `[` or `{`, nested braces, a backwards range, nothing at all) is a
`GlobError`, reported at config load.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

from uploader.config import SourceConfig

TEMPORARY_PATTERNS = ("*.tmp", "*.temp", "*.part", "*.partial", "*.crdownload",
                      "*.swp", "*.swx", "*~", "#*#", ".#*")
#: Brace groups multiply (`{a,b}{c,d}` is four patterns); past this, a pattern is refused.
MAX_ALTERNATIVES = 256


class GlobError(ValueError):
    """A pattern that cannot mean what it seems to say; the message names it."""


@lru_cache(maxsize=256)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob (see the module's doc); raises `GlobError` for an invalid one."""
    return _compile(source for _, source in _parsed(pattern))


@lru_cache(maxsize=256)
def _parsed(pattern: str) -> tuple[tuple[str, str], ...]:
    """(alternative, its regex) for each brace-free pattern `pattern` stands for; an
    alternative has its leading `/` dropped and a trailing `/` written out as `/**`."""
    try:
        if pattern in ("", "/"):
            raise GlobError("an empty pattern matches no file (`**` matches every file)")
        return tuple((a, _translate(a)) for a in map(_anchored, _expand_braces(pattern)))
    except GlobError as exc:
        raise GlobError(f"{pattern!r}: {exc}") from None


def _expand_braces(pattern: str) -> list[str]:
    expanded = [""]
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            end = _class_end(pattern, i)
            pieces, i = [pattern[i:end]], end
        elif pattern[i] == "{":
            pieces, i = _brace_group(pattern, i)
        else:
            pieces, i = [pattern[i]], i + 1
        expanded = [head + piece for head in expanded for piece in pieces]
        if len(expanded) > MAX_ALTERNATIVES:
            raise GlobError(f"its braces stand for more than {MAX_ALTERNATIVES} patterns; "
                            "split it")
    return expanded


def _anchored(alternative: str) -> str:
    alternative = alternative.removeprefix("/")
    return alternative + "**" if alternative.endswith("/") else alternative


def _class_end(pattern: str, start: int) -> int:
    """The index just past the `]` closing the class that opens at `start`."""
    i = start + 1
    if pattern.startswith(("!", "^"), i):
        i += 1
    if pattern.startswith("]", i):
        i += 1  # a `]` first in a class is a member, not its end
    end = pattern.find("]", i)
    if end < 0:
        raise GlobError("'[' is not closed; write [[] for a literal '['")
    return end + 1


def _brace_group(pattern: str, start: int) -> tuple[list[str], int]:
    """The comma-separated alternatives of the `{...}` opening at `start`, and the index
    just past its `}`."""
    options: list[str] = []
    current, i = "", start + 1
    while i < len(pattern):
        char = pattern[i]
        if char == "}":
            return options + [current], i + 1
        if char == "{":
            raise GlobError("nested braces are not supported; write [{] for a literal '{'")
        if char == ",":
            options.append(current)
            current, i = "", i + 1
        elif char == "[":
            end = _class_end(pattern, i)
            current, i = current + pattern[i:end], end
        else:
            current, i = current + char, i + 1
    raise GlobError("'{' is not closed; write [{] for a literal '{'")


def _translate(alternative: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(alternative):
        if alternative.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif alternative.startswith("**", i):
            out.append(".*")
            i += 2
        elif alternative[i] == "*":
            out.append("[^/]*")
            i += 1
        elif alternative[i] == "?":
            out.append("[^/]")
            i += 1
        elif alternative[i] == "[":
            end = _class_end(alternative, i)
            out.append(_class_regex(alternative[i + 1:end - 1]))
            i = end
        else:
            out.append(re.escape(alternative[i]))
            i += 1
    return "".join(out)


def _class_regex(body: str) -> str:
    negated = body[:1] in ("!", "^")
    members = body[1:] if negated else body
    out: list[str] = []
    i = 0
    while i < len(members):
        if i + 2 < len(members) and members[i + 1] == "-":
            low, high = members[i], members[i + 2]
            if low > high:
                raise GlobError(f"the range {low}-{high} is backwards; write {high}-{low}")
            out.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
        else:
            out.append(re.escape(members[i]))
            i += 1
    # A class stands for one character of a name: never `/`, even within a range.
    return f"(?!/)[{'^' if negated else ''}{''.join(out)}]"


def _compile(sources: Iterable[str]) -> re.Pattern[str]:
    return re.compile("(?:" + "|".join(sources) + r")\Z", re.DOTALL)


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


def whole_folders(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """A regex that matches `folder/` when the globs match every path below that folder
    (None if no glob can).

    Only alternatives ending in `**` can: if one matches `folder/`, its final `**`
    takes any longer tail too, so everything below is matched."""
    endless = [source for p in patterns for a, source in _parsed(p) if a.endswith("**")]
    return _compile(endless) if endless else None


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
        self._excluded_folders = whole_folders(self.exclude)

    def wants_directory(self, relative_dir: str) -> bool:
        """Whether to descend into a folder: hidden folders are skipped whole, and so are
        folders all of whose contents are excluded (exclude wins over include, so no
        file below one could be wanted)."""
        name = relative_dir.rsplit("/", 1)[-1]
        if self.ignore_hidden and name.startswith("."):
            return False
        return not (self._excluded_folders is not None
                    and self._excluded_folders.match(relative_dir + "/"))

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
