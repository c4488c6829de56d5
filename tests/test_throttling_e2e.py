"""The daemon under faults, end to end: errors, resets, throttling, an outage.

Each test runs `uploader run` as a subprocess against the real SeaweedFS
through the fault proxy, and checks that every file arrives byte-identical,
that the journal agrees, and that the faults really happened (so the test
cannot pass by the proxy doing nothing).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon_harness import daemon_config, daemon_factory, wait_until  # noqa: F401
from daemon_harness import journal_rows, keys_in, object_bytes  # noqa: F401

MiB = 1024 * 1024


def write_files(outbox: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        target = outbox / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def small_files(count: int, *, tag: str) -> dict[str, bytes]:
    return {f"{tag}/file-{i:04d}.bin": os.urandom(1 + i * 97 % 4096) for i in range(count)}


def assert_all_uploaded(s3, bucket: str, state_dir: Path, expected: dict[str, bytes]) -> None:
    for key, data in expected.items():
        assert object_bytes(s3, bucket, key) == data, key
    statuses = {status for status, _, _ in journal_rows(state_dir).values()}
    assert statuses == {"uploaded"}


def spread_key(relative: str, *, prefix: str, partitions: int) -> str:
    """The documented mapping, written out independently of uploader.keys."""
    number = int(hashlib.sha256(relative.encode()).hexdigest()[:8], 16) % partitions
    width = len(f"{partitions - 1:x}")
    return f"{prefix}{number:0{width}x}/{relative}"


@pytest.mark.timeout(180)
def test_every_file_arrives_intact_through_errors_and_resets(
        daemon_config, daemon_factory, s3, bucket, fault_proxy, tmp_path):
    """10% of requests answered 500/503, 5% of connections reset mid-body; keys spread."""
    config = daemon_config(s3={"endpoint_url": fault_proxy.url},
                           keys={"spread": "hash", "partitions": 4},
                           retry={"max_attempts": 6, "retry_later_seconds": 1})
    files = {**small_files(60, tag="small"),
             "big/a.bin": os.urandom(3 * 5 * MiB + 17), "big/b.bin": os.urandom(2 * 5 * MiB)}
    fault_proxy.error_rate = 0.10
    fault_proxy.reset_rate = 0.05
    daemon = daemon_factory(config)
    daemon.wait_for_log("watching")
    write_files(tmp_path / "outbox", files)

    expected = {spread_key(rel, prefix="incoming/", partitions=4): data
                for rel, data in files.items()}
    wait_until(lambda: keys_in(s3, bucket) >= set(expected), timeout=120,
               what="every file despite the faults")
    assert daemon.terminate() == 0

    assert keys_in(s3, bucket) == set(expected)
    assert_all_uploaded(s3, bucket, tmp_path / "state", expected)
    counters = fault_proxy.counters()
    assert counters["errors"] > 0 and counters["resets"] > 0, counters
    assert len({key.split("/")[1] for key in expected}) > 1, "keys should spread"
    relative = "small/file-0001.bin"
    head = s3.head_object(Bucket=bucket, Key=spread_key(relative, prefix="incoming/",
                                                         partitions=4))
    assert urllib.parse.unquote(head["Metadata"]["source-path"]) == relative


def settled(count: Callable[[], int], *, quiet_seconds: float = 0.5) -> int:
    """`count()` once it has not moved for `quiet_seconds` (a breaker's probes come
    at least 1 s apart, so they do not keep it moving)."""
    value, since = count(), time.monotonic()
    while time.monotonic() - since < quiet_seconds:
        time.sleep(0.05)
        if (now := count()) != value:
            value, since = now, time.monotonic()
    return value


@pytest.mark.timeout(180)
def test_an_outage_opens_the_breaker_loses_nothing_and_the_backlog_drains(
        daemon_config, daemon_factory, s3, bucket, fault_proxy, tmp_path):
    config = daemon_config(s3={"endpoint_url": fault_proxy.url},
                           breaker={"failure_threshold": 5, "open_seconds": 1,
                                    "max_open_seconds": 4},
                           retry={"max_attempts": 4, "retry_later_seconds": 2})
    outbox = tmp_path / "outbox"
    before = small_files(20, tag="before")
    during = {**small_files(80, tag="during"), "during/big.bin": os.urandom(2 * 5 * MiB + 5)}
    daemon = daemon_factory(config)
    daemon.wait_for_log("watching")
    write_files(outbox, before)
    wait_until(lambda: len(keys_in(s3, bucket)) == len(before), what="the first files")

    outage_seconds = 20
    fault_proxy.outage_for(outage_seconds)
    write_files(outbox, during)
    daemon.wait_for_log("-> open", timeout=outage_seconds)
    # Requests sent before the breaker opened (up to the concurrency) may still be
    # reaching the proxy: counted from when its count stands still, they are not.
    refused_early = settled(lambda: fault_proxy.counters()["refused"])
    wait_until(lambda: not fault_proxy.outage, timeout=outage_seconds + 5,
               what="the outage to end")
    refused_in_outage = fault_proxy.counters()["refused"]

    expected = {f"incoming/{rel}": data for rel, data in {**before, **during}.items()}
    wait_until(lambda: keys_in(s3, bucket) >= set(expected), timeout=90,
               what="the backlog to drain after the outage")
    assert daemon.terminate() == 0

    assert_all_uploaded(s3, bucket, tmp_path / "state", expected)
    assert "-> closed" in daemon.log()
    # While open, the breaker let through only its probes (one per open period,
    # 1 s doubling to 4 s: at most ~8 in 20 s), not a retry per queued request.
    assert refused_in_outage - refused_early <= 3 * 8, (refused_early, refused_in_outage)
    assert "failed" not in {status for status, _, _ in journal_rows(tmp_path / "state").values()}


@pytest.mark.timeout(180)
def test_a_per_prefix_limit_is_met_with_few_throttles(
        daemon_config, daemon_factory, s3, bucket, fault_proxy, tmp_path):
    """The proxy allows 40 writes/s on the prefix; 200 files arrive with few SlowDowns."""
    fault_proxy.write_rate_per_prefix = 40
    fault_proxy.burst_seconds = 0.25
    config = daemon_config(s3={"endpoint_url": fault_proxy.url},
                           transfer={"concurrency": 32},
                           retry={"max_attempts": 8, "retry_later_seconds": 1})
    daemon = daemon_factory(config)
    daemon.wait_for_log("watching")
    files = small_files(200, tag="burst")
    write_files(tmp_path / "outbox", files)

    expected = {f"incoming/{rel}": data for rel, data in files.items()}
    wait_until(lambda: keys_in(s3, bucket) >= set(expected), timeout=120,
               what="every file under the rate limit")
    assert daemon.terminate() == 0

    assert_all_uploaded(s3, bucket, tmp_path / "state", expected)
    puts = fault_proxy.records(method="PUT")
    assert any(r.fault == "throttle" for r in puts), "the limit must have been reached"
    # Finding the limit costs a burst of throttles in the first second (32
    # requests go out before the first answer; the rate is at most halved per
    # cut). After that the limiter holds the rate just under the limit: 32
    # workers sending blindly would be throttled on most requests.
    settled = [r for r in puts if r.t_start > puts[0].t_start + 1.0]
    throttled = sum(r.fault == "throttle" for r in settled)
    assert throttled / len(settled) < 0.05, (throttled, len(settled))
    assert re.search(r"retrying after .*SlowDown", daemon.log())
