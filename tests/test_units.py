"""Pure logic: key naming, filters, part sizing, backoff arithmetic, checksums."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest

from uploader.checksums import checksum_b64, resolve as resolve_checksum
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


@pytest.mark.parametrize("endpoint_url, expected", [
    (None, "crc32c"),  # AWS, the endpoint botocore resolves
    ("https://s3.eu-west-1.amazonaws.com", "crc32c"),
    ("https://s3.fips.us-east-2.amazonaws.com", "crc32c"),
    ("https://s3.cn-north-1.amazonaws.com.cn:443", "crc32c"),
    ("http://127.0.0.1:8333", "md5"),
    ("https://minio.example.com", "md5"),
    ("https://notamazonaws.com", "md5"),
    ("https://s3.amazonaws.com.example.net", "md5"),
])
def test_auto_checksum_is_crc32c_on_aws_and_md5_elsewhere(endpoint_url, expected):
    assert resolve_checksum("auto", endpoint_url) == expected
    for explicit in ("md5", "crc32", "crc32c", "sha256", "none"):
        assert resolve_checksum(explicit, endpoint_url) == explicit


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


@pytest.mark.parametrize("ignore_hidden, ignore_temporary", [(True, True), (False, False)])
def test_the_combined_filter_decides_as_the_globs_one_by_one(ignore_hidden, ignore_temporary):
    """One regex per list (and one for the temporary names) decides exactly as matching
    each glob in turn, the documented semantics."""
    from uploader.filters import TEMPORARY_PATTERNS, matches_any

    include, exclude = ["**/*.csv", "data/**", "top.txt"], ["**/skip/**", "*.bak"]
    wanted = FileFilter(SourceConfig(directory="/d", include=include, exclude=exclude,
                                     ignore_hidden=ignore_hidden,
                                     ignore_temporary=ignore_temporary))

    def by_the_globs(path: str) -> bool:
        name = path.split("/")[-1]
        if ignore_hidden and any(part.startswith(".") for part in path.split("/")):
            return False
        if ignore_temporary and matches_any(name, TEMPORARY_PATTERNS):
            return False
        return not matches_any(path, exclude) and matches_any(path, include)

    paths = ["a.csv", "x/y/a.csv", "data/anything", "data/deep/er.bin", "top.txt",
             "sub/top.txt", "x/skip/a.csv", "a.bak", "d/a.bak", ".h/a.csv", "a/.h.csv",
             "data/.hidden", "a.csv.part", "data/#x#", "data/.#lock", "data/f~",
             "data/x.swp", "data/x.tmp", "x.csv.crdownload"]
    decisions = {path: wanted.wants_file(path) for path in paths}
    assert decisions == {path: by_the_globs(path) for path in paths}
    assert decisions["x/y/a.csv"] and not decisions["x/skip/a.csv"]
    assert decisions["data/.hidden"] is (not ignore_hidden)
    assert decisions["data/x.tmp"] is (not ignore_temporary)


def test_the_walker_hands_on_relative_paths_and_stats(tmp_path):
    from uploader.sources.walk import TreeWalker

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.csv").write_bytes(b"12345")
    (tmp_path / "top.csv").write_bytes(b"1")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "g.csv").write_bytes(b"1")
    walker = TreeWalker(root=tmp_path, file_filter=FileFilter(SourceConfig(directory=tmp_path)))
    found = {f.relative: (f.path, f.stat.st_size) for f in walker.files()}
    assert found == {"a/b/f.csv": (tmp_path / "a" / "b" / "f.csv", 5),
                     "top.csv": (tmp_path / "top.csv", 1)}
    below = [f.relative for f in walker.files(tmp_path / "a")]
    assert below == ["a/b/f.csv"]  # relative to the root, not to where the walk began


def test_a_file_written_to_while_it_was_read_is_caught_on_the_descriptor(tmp_path):
    import os

    from uploader.errors import SourceChanged
    from uploader.transfer.job import (
        FileJob,
        ensure_read_unchanged,
        open_for_upload,
        stat_signature,
    )

    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    job = FileJob(path=path, relative="f", key="f", signature=stat_signature(path))
    fd = open_for_upload(job)
    try:
        ensure_read_unchanged(fd, job)  # untouched: fine
        with open(path, "ab") as writer:  # appended to in place: same inode, new size
            writer.write(b"more")
        with pytest.raises(SourceChanged, match="changed during its upload"):
            ensure_read_unchanged(fd, job)
    finally:
        os.close(fd)


@pytest.mark.parametrize("service, explicit, env, config_file, expected", [
    ("s3", "https://minio.local", {"AWS_ENDPOINT_URL": "http://env:1"}, "", "https://minio.local"),
    ("s3", None, {"AWS_ENDPOINT_URL": "http://env:1"}, "", "http://env:1"),
    ("s3", None, {"AWS_ENDPOINT_URL": "http://env:1", "AWS_ENDPOINT_URL_S3": "http://s3:2"}, "",
     "http://s3:2"),
    ("sqs", None, {"AWS_ENDPOINT_URL": "http://env:1", "AWS_ENDPOINT_URL_S3": "http://s3:2"}, "",
     "http://env:1"),
    ("s3", None, {"AWS_ENDPOINT_URL": "http://env:1",
                  "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}, "", None),
    ("s3", None, {}, "endpoint_url = http://profile:3\n", "http://profile:3"),
    ("s3", None, {}, "", None),  # AWS
])
def test_the_endpoint_a_client_will_use_is_found_as_botocore_finds_it(
        tmp_path, monkeypatch, service, explicit, env, config_file, expected):
    from aiobotocore.session import AioSession

    from uploader.s3client import configured_endpoint

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    (tmp_path / "config").write_text("[default]\n" + config_file)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert configured_endpoint(AioSession(), service, explicit) == expected


@pytest.mark.parametrize("endpoint, proxy, expected", [
    ("http://127.0.0.1:8333", None, False),  # plain HTTP: no CA bundle to load
    ("HTTP://minio.local:9000", None, False),
    ("http://127.0.0.1:8333", "http://proxy:3128", None),  # a proxy may speak TLS
    ("https://minio.local:9000", None, None),  # botocore's default: verify
    (None, None, None),  # AWS
])
def test_tls_is_verified_unless_the_endpoint_is_plain_http(monkeypatch, endpoint, proxy,
                                                           expected):
    from uploader.s3client import tls_verification

    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    if proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
    assert tls_verification(endpoint) is expected
