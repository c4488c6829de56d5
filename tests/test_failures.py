"""Bad input at run time: the file is marked failed or skipped with the reason (or, for a
bucket not there yet, waits for it), the daemon keeps serving the other files, and no
source file is ever lost."""

from __future__ import annotations

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


def status_of(state_dir: Path, path: Path) -> tuple[str, str | None] | None:
    """The file's journal entry once it reached a final state (not pending/uploading)."""
    entry = journal_rows(state_dir).get(str(path))
    if entry is not None:
        entry = (entry[0], entry[2])  # (status, error)
    return entry if entry and entry[0] in ("uploaded", "failed", "skipped") else None


@pytest.mark.timeout(90)
def test_files_wait_for_a_missing_bucket_and_go_up_once_it_exists(
        daemon_config, daemon_factory, s3, bucket, tmp_path):
    """The bucket is not there yet (made by a later step of a deployment, or re-made):
    no file fails for it. Each waits, pending with the reason, and goes up once the bucket
    exists, without a restart or `retry-failed`."""
    late = f"{bucket}-late"
    config = daemon_config(s3={"bucket": late}, after_upload="delete",
                           retry={"retry_later_seconds": 0.5})
    source = tmp_path / "outbox" / "report.csv"
    source.write_text("a,b\n1,2\n")
    daemon = daemon_factory(config)

    def waiting() -> bool:
        entry = journal_rows(tmp_path / "state").get(str(source))
        return entry is not None and entry[0] == "pending" and "NoSuchBucket" in (entry[2] or "")

    wait_until(waiting, what="the file pending for the bucket")
    assert late in daemon.log() and "NoSuchBucket" in daemon.log()
    assert source.read_text() == "a,b\n1,2\n"  # after_upload: delete has not run
    # A file that arrives later waits likewise; the daemon keeps serving.
    later = tmp_path / "outbox" / "later.csv"
    later.write_text("later")
    s3.create_bucket(Bucket=late)
    try:
        # The bucket is asked about again as often as the files come back (0.5 s here;
        # at BucketCheck's own default, 30 s, this would time out).
        wait_until(lambda: status_of(tmp_path / "state", source)
                   == status_of(tmp_path / "state", later) == ("uploaded", None),
                   timeout=15, what="both files uploaded once the bucket exists")
        assert object_bytes(s3, late, "incoming/report.csv") == b"a,b\n1,2\n"
        assert object_bytes(s3, late, "incoming/later.csv") == b"later"
        wait_until(lambda: not source.exists(), what="after_upload: delete")
        assert daemon.terminate() == 0
        assert "failed" not in daemon.log()
    finally:
        s3.delete_bucket(Bucket=late)  # SeaweedFS drops a non-empty bucket


@pytest.mark.timeout(60)
def test_wrong_credentials_fail_with_the_reason(daemon_config, daemon_factory, tmp_path,
                                                s3_server, s3, bucket):
    config = daemon_config()
    source = tmp_path / "outbox" / "data.bin"
    source.write_bytes(b"data")
    daemon = daemon_factory(config, env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    state = wait_until(lambda: status_of(tmp_path / "state", source), what="a journal entry")
    assert state[0] == "failed"
    assert "SignatureDoesNotMatch" in state[1]
    assert "not-the-secret" not in daemon.log()
    assert daemon.terminate() == 0
    assert keys_in(s3, bucket) == set()
    assert source.read_bytes() == b"data"


@pytest.mark.timeout(60)
def test_unreadable_file_fails_while_others_upload(daemon_config, daemon_factory, tmp_path,
                                                   s3, bucket):
    config = daemon_config()
    outbox, state_dir = tmp_path / "outbox", tmp_path / "state"
    secret = outbox / "secret.txt"
    secret.write_text("no entry")
    secret.chmod(0o000)
    fine = outbox / "fine.txt"
    fine.write_text("fine")
    daemon = daemon_factory(config, honour_permissions=True)
    wait_until(lambda: object_bytes(s3, bucket, "incoming/fine.txt") == b"fine",
               what="the readable file")
    state = wait_until(lambda: status_of(state_dir, secret), what="the unreadable file's entry")
    assert state[0] == "failed"
    assert "Permission denied" in state[1] and "secret.txt" in state[1]
    assert "incoming/secret.txt" not in keys_in(s3, bucket)
    # Its owner makes it readable: a change, though not of its bytes (its ctime moves, not
    # its mtime). It goes up without a restart or `retry-failed`, and before the next
    # rescan (a minute away): the chmod is an inotify event (IN_ATTRIB).
    secret.chmod(0o644)
    wait_until(lambda: object_bytes(s3, bucket, "incoming/secret.txt") == b"no entry",
               timeout=20, what="the file uploaded once readable")
    assert status_of(state_dir, secret) == ("uploaded", None)
    assert daemon.terminate() == 0
