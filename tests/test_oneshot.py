"""`uploader upload PATH... s3://BUCKET/PREFIX`: the same pipeline, once."""

from __future__ import annotations

import os

import pytest

from daemon_harness import run_cli
from daemon_harness import keys_in, object_bytes


@pytest.mark.timeout(60)
def test_upload_files_and_folders(tmp_path, s3_server, s3, bucket):
    folder = tmp_path / "photos"
    (folder / "2024" / "june").mkdir(parents=True)
    (folder / "2024" / "june" / "beach.jpg").write_bytes(os.urandom(3000))
    (folder / "big.raw").write_bytes(os.urandom(6 * 1024 * 1024))
    (folder / ".DS_Store").write_bytes(b"hidden")
    single = tmp_path / "notes.txt"
    single.write_text("notes")
    result = run_cli("upload", "--endpoint-url", s3_server.endpoint_url, str(folder),
                     str(single), f"s3://{bucket}/backup/", env=s3_server.env())
    assert result.returncode == 0, result.stderr
    assert keys_in(s3, bucket) == {"backup/2024/june/beach.jpg", "backup/big.raw",
                                   "backup/notes.txt"}
    assert object_bytes(s3, bucket, "backup/big.raw") == (folder / "big.raw").read_bytes()
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("uploaded 3 files (")
    assert "0 failed" in summary and "retries" in summary


@pytest.mark.timeout(60)
def test_upload_exits_1_when_a_file_fails(tmp_path, s3_server):
    path = tmp_path / "x.txt"
    path.write_text("x")
    result = run_cli("upload", "--endpoint-url", s3_server.endpoint_url, str(path),
                     "s3://missing-bucket-xyz", env=s3_server.env())
    assert result.returncode == 1
    assert "1 failed" in result.stdout
    assert "NoSuchBucket" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["nowhere.txt", "s3://bucket/x"], "nowhere.txt: no such file or directory"),
    (["{file}", "bucket/x"], "must look like s3://BUCKET[/PREFIX]"),
    (["s3://bucket/x"], "needs at least one PATH"),
])
def test_upload_usage_errors_exit_2(tmp_path, args, message):
    path = tmp_path / "f.txt"
    path.write_text("f")
    result = run_cli("upload", *[a.replace("{file}", str(path)) for a in args])
    assert result.returncode == 2
    assert message in result.stderr
