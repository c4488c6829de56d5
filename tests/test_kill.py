"""The kill test: SIGKILL the daemon at random moments, restart it, and count.

500 small files and 10 files of 20 parts each go up through the fault proxy
(which only records) to SeaweedFS. The daemon is killed with SIGKILL at least
five times, each time after a random number of further write requests, and
restarted. At the end every file must be in the bucket byte-identical, no
object may have been completed twice, and the parts sent beyond the minimum
must be at most the parts that were in flight (sent, not yet journaled) at
the kills.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from daemon_harness import daemon_config, daemon_factory, wait_until  # noqa: F401
from daemon_harness import journal_rows, keys_in, object_bytes  # noqa: F401

MiB = 1024 * 1024
PART = 5 * MiB
SMALL_FILES = 500
BIG_FILES = 10
PARTS_PER_BIG_FILE = 20
KILLS = 5
PARTS_IN_FLIGHT = 8
# A part answered this shortly before a kill may not be journaled yet: the answer
# is read, then journaled in the loop's next iteration, and on a loaded 2-core
# machine (SeaweedFS, the proxy and the daemon share it) an iteration can take
# tens of milliseconds.
JOURNAL_LAG = 0.2


def make_data(outbox: Path, rng: random.Random) -> dict[str, str]:
    """Write the data set; return relative path -> MD5 (comparing digests keeps memory low)."""
    digests = {}
    block = rng.randbytes(PART)
    for i in range(BIG_FILES):
        relative = f"big/file-{i:02d}.bin"
        path = outbox / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        md5 = hashlib.md5()
        with path.open("wb") as handle:
            for part in range(PARTS_PER_BIG_FILE):
                chunk = f"{relative} part {part}\n".encode() + block[64:]
                chunk = chunk + block[: PART - len(chunk)]
                handle.write(chunk)
                md5.update(chunk)
        digests[relative] = md5.hexdigest()
    for i in range(SMALL_FILES):
        relative = f"small/{i % 10}/file-{i:03d}.txt"
        data = rng.randbytes(rng.randrange(1, 8192))
        path = outbox / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digests[relative] = hashlib.md5(data).hexdigest()
    return digests


def is_part(record) -> bool:  # noqa: ANN001
    return record.method == "PUT" and "partNumber" in record.query_params


def in_flight_at(records, kill_time: float) -> int:  # noqa: ANN001
    """Parts sent before the kill whose answer had not been journaled by then."""
    return sum(1 for r in records if is_part(r) and r.t_start < kill_time
               and (r.t_end is None or r.t_end > kill_time - JOURNAL_LAG))


@pytest.mark.timeout(300)
def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
        daemon_config, daemon_factory, s3, bucket, fault_proxy, tmp_path):
    seed = int(time.time())
    rng = random.Random(seed)
    outbox = tmp_path / "outbox"
    outbox.mkdir(exist_ok=True)
    digests = make_data(outbox, rng)
    config = daemon_config(s3={"endpoint_url": fault_proxy.url},
                           transfer={"max_parts_in_flight": PARTS_IN_FLIGHT, "concurrency": 16},
                           source={"settle_seconds": 0.2},
                           # An upload created just before a kill, whose UploadId never
                           # reached the journal, is an orphan: the janitor aborts it.
                           janitor={"interval_seconds": 2, "abort_after_seconds": 1})

    kill_times = []
    for _ in range(KILLS):
        daemon = daemon_factory(config)
        sent = fault_proxy.count(method="PUT")
        fault_proxy.wait_for(sent + rng.randrange(10, 120), timeout=120, method="PUT")
        daemon.process.kill()
        kill_times.append(time.monotonic())
        daemon.process.wait(timeout=30)

    daemon = daemon_factory(config)
    expected_keys = {f"incoming/{relative}" for relative in digests}

    def everything_uploaded() -> bool:
        rows = journal_rows(tmp_path / "state")
        return len(rows) == len(digests) and all(
            status == "uploaded" for status, _, _ in rows.values())

    wait_until(everything_uploaded, timeout=240, interval=0.5, what="every file uploaded")
    assert daemon.terminate() == 0

    # Every file is there, byte-identical (S3's ETag is not an MD5 for multipart, so read).
    for relative, digest in digests.items():
        body = s3.get_object(Bucket=bucket, Key=f"incoming/{relative}")["Body"]
        md5 = hashlib.md5()
        for chunk in iter(lambda: body.read(MiB), b""):
            md5.update(chunk)
        assert md5.hexdigest() == digest, relative

    records = fault_proxy.records()
    completions = {key: fault_proxy.completed_uploads(key) for key in expected_keys}
    twice = {key: n for key, n in completions.items() if n != 1}
    assert not twice, f"objects completed other than once: {twice}"

    parts_ok = sum(1 for r in records if is_part(r) and r.ok)
    minimum = BIG_FILES * PARTS_PER_BIG_FILE
    in_flight = [in_flight_at(records, t) for t in kill_times]
    extra = parts_ok - minimum
    report = (f"kill test (seed {seed}): {KILLS} SIGKILLs, parts sent ok {parts_ok}, "
              f"minimum {minimum}, extra {extra}, in flight at each kill {in_flight} "
              f"(sum {sum(in_flight)}); small PUTs completed "
              f"{sum(1 for r in records if r.is_put_object and r.ok)} for {SMALL_FILES}")
    print(report)
    (tmp_path.parent / "kill-test-report.txt").write_text(report + "\n")
    assert extra <= sum(in_flight), report
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == [], (
        "no abandoned multipart uploads may remain")
