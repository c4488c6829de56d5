"""`uploader run` end to end, as a user runs it: a subprocess, a YAML file, a real S3."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from daemon_harness import (  # noqa: F401
    daemon_config,
    daemon_factory,
    journal_rows,
    keys_in,
    object_bytes,
    wait_until,
)

MiB = 1024 * 1024
THRESHOLD = 5 * MiB


def write_slowly(path: Path, chunks: list[bytes], pause: float) -> threading.Thread:
    """Write over several seconds with the file open the whole time, like a slow download."""
    def run() -> None:
        with path.open("wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                handle.flush()
                time.sleep(pause)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.timeout(180)
def test_watched_directory_lands_in_s3(daemon_config, daemon_factory, s3, bucket, fault_proxy,
                                       tmp_path):
    config = daemon_config(s3={"endpoint_url": fault_proxy.url},
                           source={"exclude": ["**/*.skip"]})
    outbox = tmp_path / "outbox"
    before = {"already-there.txt": b"present before the daemon started"}
    for name, data in before.items():
        (outbox / name).write_bytes(data)
    daemon = daemon_factory(config)

    files = {
        "empty.bin": b"",
        "one.bin": b"x",
        "small-16k.bin": os.urandom(16 * 1024),
        "exactly-threshold.bin": os.urandom(THRESHOLD),
        "threshold-plus-one.bin": os.urandom(THRESHOLD + 1),
        "three-and-a-half-parts.bin": os.urandom(int(3.5 * THRESHOLD)),
        "nested/deeper/still/file.txt": b"nested content",
        "with space/name with spaces.txt": b"spaces",
        "unicodé/データ ñ.txt": "non-ascii ✓".encode(),
    }
    wait_until(lambda: "watching" in daemon.log(), what="the daemon to start watching")
    for relative, data in files.items():
        target = outbox / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (outbox / "ignored.skip").write_bytes(b"excluded by a glob")
    (outbox / ".hidden").write_bytes(b"hidden files are ignored by default")
    (outbox / "download.part").write_bytes(b"temporary files are ignored by default")
    slow_chunks = [os.urandom(64 * 1024) for _ in range(6)]
    writer = write_slowly(outbox / "slow.bin", slow_chunks, pause=0.7)

    expected = {**before, **files, "slow.bin": b"".join(slow_chunks)}
    writer.join()
    wait_until(lambda: len(keys_in(s3, bucket)) >= len(expected), timeout=60,
               what="every file to arrive")
    assert daemon.terminate() == 0

    for relative, data in expected.items():
        assert object_bytes(s3, bucket, f"incoming/{relative}") == data, relative
    assert keys_in(s3, bucket) == {f"incoming/{name}" for name in expected}
    # The slow file went up once, whole: a single PUT reached the server for it.
    assert fault_proxy.count(method="PUT", path_prefix=f"/{bucket}/incoming/slow.bin",
                             forwarded=True) == 1
    rows = journal_rows(tmp_path / "state")
    assert rows[str(outbox / "slow.bin")][:2] == ("uploaded", 1)
    assert all(status == "uploaded" for status, _, _ in rows.values())


@pytest.mark.timeout(120)
def test_restart_uploads_only_new_files(daemon_config, daemon_factory, s3, bucket, fault_proxy,
                                        tmp_path):
    config = daemon_config(s3={"endpoint_url": fault_proxy.url})
    outbox = tmp_path / "outbox"
    for i in range(5):
        (outbox / f"first-{i}.txt").write_bytes(f"first {i}".encode())
    (outbox / "big.bin").write_bytes(os.urandom(THRESHOLD + 123))
    daemon = daemon_factory(config)
    wait_until(lambda: len(keys_in(s3, bucket)) == 6, what="the first files")
    assert daemon.terminate() == 0

    for i in range(3):
        (outbox / f"second-{i}.txt").write_bytes(f"second {i}".encode())
    fault_proxy.reset_log()
    daemon = daemon_factory(config)
    wait_until(lambda: len(keys_in(s3, bucket)) == 9, what="the new files")
    daemon.wait_for_log("second-2.txt")
    assert daemon.terminate() == 0

    writes = fault_proxy.count(method="PUT", forwarded=True) + fault_proxy.count(
        method="POST", forwarded=True)
    assert writes == 3, "only the three new files may be written after the restart"
    assert {key for key in keys_in(s3, bucket) if key.startswith("incoming/second-")} == {
        f"incoming/second-{i}.txt" for i in range(3)}
