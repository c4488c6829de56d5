"""More files in flight than the process may open: `transfer.concurrency` against the
open-files limit (`ulimit -n`; systemd's default is 1024 soft, 524288 hard). Each file
in flight holds its file and a connection open."""

from __future__ import annotations

import os
import resource
import subprocess

import pytest

from daemon_harness import (  # noqa: F401
    UPLOADER,
    daemon_config,
    daemon_factory,
    journal_rows,
    keys_in,
    wait_until,
)


def small_files(folder, count: int) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"f{i:04d}.bin": os.urandom(100 + i % 50) for i in range(count)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


@pytest.mark.timeout(120)
def test_a_low_soft_limit_is_raised_to_the_hard_one(tmp_path, s3_server, s3, bucket):
    files = small_files(tmp_path / "many", 600)
    config = tmp_path / "c.yaml"
    config.write_text("transfer: {concurrency: 500}\ns3: {addressing_style: path}\n")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 4096))

    result = subprocess.run(
        [UPLOADER, "upload", "--config", str(config), "--endpoint-url", s3_server.endpoint_url,
         str(tmp_path / "many"), f"s3://{bucket}/many/"], preexec_fn=low_soft_limit,
        env={**os.environ, **s3_server.env()}, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Too many open files" not in result.stderr
    assert keys_in(s3, bucket) == {f"many/{name}" for name in files}


@pytest.mark.timeout(180)
def test_past_a_low_hard_limit_the_files_in_flight_are_capped_to_fit(
        daemon_config, daemon_factory, s3, bucket, tmp_path):
    config = daemon_config(transfer={"concurrency": 400},
                           retry={"retry_later_seconds": 0.5}, janitor={"enabled": False})
    files = small_files(tmp_path / "outbox", 500)
    daemon = daemon_factory(config, open_files=200)
    wait_until(lambda: keys_in(s3, bucket) == {f"incoming/{name}" for name in files},
               timeout=150, what="every file, in the end")
    assert daemon.terminate() == 0
    rows = journal_rows(tmp_path / "state")
    assert {status for status, _, _ in rows.values()} == {"uploaded"}
    log = daemon.log()
    assert "transfer.concurrency 400 may need up to 872 open files" in log
    assert "limit of 200" in log and "uploading 64 files at a time" in log
    assert "Too many open files" not in log
