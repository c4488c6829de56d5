"""Pure logic: key naming, filters, part sizing, backoff arithmetic, checksums."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest

from uploader.checksums import checksum_b64
from uploader.clock import FakeClock
from uploader.config import SourceConfig
from uploader.filters import FileFilter, glob_to_regex
from uploader.keys import KeyNamer, object_key, spread_segment
from uploader.limiter import RateLimiter
from uploader.retry import backoff_delay
from uploader.transfer.sizing import MAX_PARTS, MiB, part_count, part_range, part_size_for


def test_key_is_prefix_plus_relative_path():
    assert object_key(prefix="incoming/", relative_path="a/b c/é.txt") == "incoming/a/b c/é.txt"
    assert object_key(prefix="", relative_path="x") == "x"


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("**", "a/b/c.txt", True), ("*.txt", "c.txt", True), ("*.txt", "a/c.txt", False),
    ("**/*.txt", "a/b/c.txt", True), ("**/*.txt", "c.txt", True), ("a/**", "a/b/c", True),
    ("a/*", "a/b/c", False), ("?.bin", "x.bin", True), ("logs/**/*.gz", "logs/x.gz", True),
])
def test_globs(pattern, path, matches):
    assert bool(glob_to_regex(pattern).match(path)) is matches


def test_filter_hidden_temporary_include_exclude():
    wanted = FileFilter(SourceConfig(directory="/d", include=["**/*.csv", "**/*.gz"],
                                     exclude=["tmp/**"]))
    assert wanted.wants_file("a/b.csv")
    assert not wanted.wants_file("a/b.txt")
    assert not wanted.wants_file("tmp/b.csv")
    assert not wanted.wants_file(".secret/b.csv")
    assert not wanted.wants_file("b.csv.part")
    assert not wanted.wants_file("b.csv~")
    assert not wanted.wants_directory("a/.git")
    loose = FileFilter(SourceConfig(directory="/d", ignore_hidden=False, ignore_temporary=False))
    assert loose.wants_file(".hidden") and loose.wants_file("x.tmp")


def test_part_size_is_raised_to_fit_ten_thousand_parts():
    assert part_size_for(80 * MiB, 8 * MiB) == 8 * MiB
    huge = 200 * 1024 * MiB
    size = part_size_for(huge, 8 * MiB)
    assert size % MiB == 0 and part_count(huge, size) <= MAX_PARTS
    assert part_count(huge, size - MiB) > MAX_PARTS  # the smallest whole MiB that fits


def test_part_ranges_cover_the_file_exactly():
    size, part = 17 * MiB + 3, 5 * MiB
    ranges = [part_range(n, file_size=size, part_size=part)
              for n in range(1, part_count(size, part) + 1)]
    assert ranges[-1] == (15 * MiB, 2 * MiB + 3)
    assert sum(length for _, length in ranges) == size
    assert part_count(0, part) == 1


def test_backoff_is_full_jitter_capped():
    assert backoff_delay(attempt=1, base=0.1, cap=20, uniform=1.0) == pytest.approx(0.1)
    assert backoff_delay(attempt=4, base=0.1, cap=20, uniform=0.5) == pytest.approx(0.4)
    assert backoff_delay(attempt=30, base=0.1, cap=20, uniform=1.0) == 20
    assert backoff_delay(attempt=3, base=0.1, cap=20, uniform=0.0) == 0


def test_checksums_match_reference_implementations():
    data = b"hello world" * 1000
    assert checksum_b64("md5", data) == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert checksum_b64("sha256", data) == base64.b64encode(
        hashlib.sha256(data).digest()).decode()
    assert checksum_b64("crc32", data) == base64.b64encode(
        zlib.crc32(data).to_bytes(4, "big")).decode()
    # RFC 3720's test vector for CRC32C: 32 bytes of zeros -> 0x8A9136AA.
    assert checksum_b64("crc32c", bytes(32)) == base64.b64encode(
        bytes.fromhex("8a9136aa")).decode()
    assert checksum_b64("none", data) is None


# ------------------------------------------------------------ key spreading
def test_spread_keys_follow_the_documented_formula():
    namer = KeyNamer(prefix="incoming/", spread="hash", partitions=16)
    digest = hashlib.sha256(b"logs/a.txt").hexdigest()
    assert namer.key("logs/a.txt") == f"incoming/{int(digest[:8], 16) % 16:x}/logs/a.txt"
    assert namer.metadata("dir/é b.txt") == {"source-path": "dir/%C3%A9%20b.txt"}


def test_spread_segments_are_padded_and_cover_every_partition():
    segments = {spread_segment(f"file-{i}", partitions=300) for i in range(20000)}
    assert segments == {f"{n:03x}/" for n in range(300)}
    assert spread_segment("x", partitions=1) == "0/"


def test_without_spreading_the_key_is_prefix_plus_path_and_no_metadata():
    namer = KeyNamer(prefix="p/")
    assert namer.key("a/b.txt") == "p/a/b.txt" and namer.metadata("a/b.txt") == {}


def test_a_non_adaptive_limiter_counts_throttles_but_never_slows_down():
    limiter = RateLimiter(clock=FakeClock(), adaptive=False)
    assert limiter.on_throttle("b/p", sent_at=0.0) is False
    assert limiter.current_rate("b/p") is None
    assert limiter.snapshot()["b/p"].throttles == 1


def test_the_collector_is_back_on_before_any_work_starts():
    """The console command imports with the cyclic GC off (`uploader.entry`); every
    command that does work runs through `_run_async`, which turns it back on."""
    import gc

    from uploader.cli import _run_async

    async def work() -> tuple[bool, int]:
        return gc.isenabled(), gc.get_threshold()[0]

    before = gc.get_threshold()
    gc.disable()
    try:
        assert _run_async(work) == (True, 10_000)
    finally:
        gc.enable()
        gc.set_threshold(*before)
