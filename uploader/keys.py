"""Object key naming: pure functions, no I/O.

Prefix spreading (`keys.spread: hash`) puts a leading segment derived from the
relative path between the prefix and the path, so a burst of writes lands on
`partitions` different S3 prefixes at once instead of one hot prefix that S3
has to split first. The segment is reproducible from the path alone:

    n       = int(sha256(relative_path as UTF-8).hexdigest()[:8], 16) % partitions
    segment = format(n, "x").zfill(len(format(partitions - 1, "x"))) + "/"

e.g. with 16 partitions `logs/a.txt` -> `incoming/` + `5/` + `logs/a.txt`.
The original relative path is stored, percent-encoded (metadata travels in
HTTP headers, which must be ASCII), in the object's metadata
(`x-amz-meta-source-path`), so nothing depends on reversing the hash.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from dataclasses import dataclass

#: User metadata key (x-amz-meta-source-path) holding the relative path of spread keys.
SOURCE_PATH_METADATA = "source-path"


def is_unicode(*names: str) -> bool:
    """Whether every name is valid Unicode: S3 keys (and the journal) hold UTF-8 only.
    A file name of undecodable bytes reaches Python with lone surrogates in it."""
    try:
        for name in names:
            name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def object_key(*, prefix: str, relative_path: str) -> str:
    """`prefix` + relative path. The prefix is used as written (add the `/` yourself)."""
    return prefix + relative_path.lstrip("/")


def spread_segment(relative_path: str, *, partitions: int) -> str:
    """The leading segment (with its `/`) for `relative_path` among `partitions`."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    digest = hashlib.sha256(relative_path.lstrip("/").encode("utf-8")).hexdigest()
    number = int(digest[:8], 16) % partitions
    width = len(format(partitions - 1, "x"))
    return format(number, "x").zfill(width) + "/"


@dataclass(frozen=True)
class KeyNamer:
    """Turns a relative path into an object key (and the metadata that goes with it)."""

    prefix: str
    spread: str = "none"  # none | hash
    partitions: int = 1

    def key(self, relative_path: str) -> str:
        if self.spread == "hash":
            segment = spread_segment(relative_path, partitions=self.partitions)
            return object_key(prefix=self.prefix + segment, relative_path=relative_path)
        return object_key(prefix=self.prefix, relative_path=relative_path)

    def metadata(self, relative_path: str) -> dict[str, str]:
        """Metadata every object gets: the source path when the key does not show it as is."""
        if self.spread == "hash":
            return {SOURCE_PATH_METADATA: urllib.parse.quote(relative_path.lstrip("/"))}
        return {}
