"""`uploader status` and `uploader retry-failed`, as an operator uses them."""

from __future__ import annotations

import time

import pytest

from daemon_harness import daemon_config, daemon_factory, run_cli, wait_until  # noqa: F401
from daemon_harness import journal_rows, object_bytes
from uploader.journal import Journal, PartRecord, UploadRecord


def test_status_shows_counts_uploads_in_progress_and_failures(daemon_config, tmp_path):
    config = daemon_config()
    journal = Journal.in_state_dir(tmp_path / "state")
    for i in range(3):
        journal.set_state(f"/data/ok-{i}", size=1, mtime_ns=1, key=f"ok-{i}", status="uploaded")
    journal.set_state("/data/bad", size=1, mtime_ns=1, key="bad", status="failed",
                      error="PUT s3://b/bad: AccessDenied (HTTP 403)")
    journal.set_state("/data/later", size=1, mtime_ns=1, key="later", status="pending",
                      error="PUT s3://b/later: connection failed")
    journal.set_state("/data/big", size=30, mtime_ns=1, key="big", status="uploading")
    journal.start_upload(UploadRecord(path="/data/big", key="big", upload_id="U1", size=30,
                                      mtime_ns=1, part_size=10, parts=3, checksum="md5",
                                      created_at=time.time()))
    for number in (1, 2):
        journal.record_part("U1", PartRecord(number, 10, f"etag{number}", None))
    journal.close()

    result = run_cli("status", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "files: pending 1, uploading 1, uploaded 3, failed 1, skipped 0, enqueued 0" in lines
    assert "in progress: /data/big -> big: 2/3 parts" in lines
    assert "waiting to retry: /data/later: PUT s3://b/later: connection failed" in lines
    assert "failed: /data/bad: PUT s3://b/bad: AccessDenied (HTTP 403)" in lines


def test_status_without_a_journal_says_so(daemon_config):
    result = run_cli("status", "--config", str(daemon_config()))
    assert result.returncode == 2
    assert "no journal" in result.stderr and "state_dir" in result.stderr


@pytest.mark.timeout(120)
def test_failed_files_go_back_in_line_with_retry_failed(daemon_config, daemon_factory,
                                                        s3, bucket, tmp_path):
    """Refused credentials: failed; the operator fixes them, runs retry-failed, and the
    daemon started with the right ones uploads the file."""
    config = daemon_config()
    source = tmp_path / "outbox" / "waiting.txt"
    source.write_bytes(b"uploaded once the credentials are right")
    daemon = daemon_factory(config, env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    wait_until(lambda: journal_rows(tmp_path / "state").get(str(source), ("",))[0] == "failed",
               what="the file to fail")
    assert daemon.terminate() == 0
    status = run_cli("status", "--config", str(config)).stdout
    assert f"failed: {source}:" in status and "SignatureDoesNotMatch" in status

    retried = run_cli("retry-failed", "--config", str(config))
    assert retried.returncode == 0 and retried.stdout.startswith("1 failed file(s)")
    assert journal_rows(tmp_path / "state")[str(source)][0] == "pending"

    daemon = daemon_factory(config)
    wait_until(lambda: journal_rows(tmp_path / "state")[str(source)][0] == "uploaded",
               what="the retried file to upload")
    assert daemon.terminate() == 0
    assert object_bytes(s3, bucket, "incoming/waiting.txt") == source.read_bytes()
