"""Part sizing: pure arithmetic."""

from __future__ import annotations

MAX_PARTS = 10_000
MiB = 1024 * 1024
MAX_OBJECT_BYTES = 5 * 1024**4  # S3's largest object: 5 TiB


def part_size_for(file_size: int, configured: int) -> int:
    """The configured part size, raised (to a whole MiB) so the file fits in 10,000 parts."""
    if file_size <= configured * MAX_PARTS:
        return configured
    needed = -(-file_size // MAX_PARTS)
    return -(-needed // MiB) * MiB


def part_count(file_size: int, part_size: int) -> int:
    """Parts needed; an empty file still takes one (empty) part."""
    return max(1, -(-file_size // part_size))


def part_range(part_number: int, *, file_size: int, part_size: int) -> tuple[int, int]:
    """(offset, length) of a 1-based part."""
    offset = (part_number - 1) * part_size
    return offset, min(part_size, file_size - offset)
