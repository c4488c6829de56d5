"""Object key naming: pure functions, no I/O."""

from __future__ import annotations


def object_key(*, prefix: str, relative_path: str) -> str:
    """`prefix` + relative path. The prefix is used as written (add the `/` yourself)."""
    return prefix + relative_path.lstrip("/")
