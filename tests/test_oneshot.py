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


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("sources", "destination", "expected"), [
    # A folder's files go below the prefix taken as a folder, with or without its '/'.
    (["photos"], "backup", {"backup/a.txt", "backup/sub/b.txt"}),
    (["photos"], "backup/", {"backup/a.txt", "backup/sub/b.txt"}),
    # A file given alone is renamed to the destination (as `aws s3 cp` and s5cmd)...
    (["report.txt"], "archive/2024-report", {"archive/2024-report"}),
    # ...unless the destination is a folder or the bucket itself.
    (["report.txt"], "archive/", {"archive/report.txt"}),
    (["report.txt"], "", {"report.txt"}),
    # Among several sources, every file keeps its name below the prefix.
    (["report.txt", "photos"], "set", {"set/report.txt", "set/a.txt", "set/sub/b.txt"}),
])
def test_where_objects_go(tmp_path, s3_server, s3, bucket, sources, destination, expected):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "photos" / "a.txt").write_text("a")
    (tmp_path / "photos" / "sub" / "b.txt").write_text("b")
    (tmp_path / "report.txt").write_text("report")
    result = run_cli("upload", "--endpoint-url", s3_server.endpoint_url,
                     *[str(tmp_path / s) for s in sources], f"s3://{bucket}/{destination}",
                     env=s3_server.env())
    assert result.returncode == 0, result.stderr
    assert keys_in(s3, bucket) == expected


@pytest.mark.timeout(90)
def test_each_file_is_counted_once_when_some_fail_transiently(tmp_path, s3_server, s3, bucket,
                                                              fault_proxy):
    """The proxy holds the prefix to 2 PUT/s and one attempt per request is allowed, so
    some files fail with SlowDown. A one-shot does not put them back in line for later:
    each file is either uploaded or failed, the summary adds up, the exit says so."""
    import re

    import yaml

    folder = tmp_path / "batch"
    folder.mkdir()
    for i in range(12):
        (folder / f"f{i:02d}.txt").write_text(f"file {i}")
    fault_proxy.burst_seconds = 0.5
    fault_proxy.write_rate_per_prefix = 2
    config = tmp_path / "oneshot.yaml"
    config.write_text(yaml.safe_dump({
        "s3": {"addressing_style": "path"},
        "retry": {"max_attempts": 1, "retry_later_seconds": 0.2},
        "rate_limit": {"adaptive": False}}))
    result = run_cli("upload", "--config", str(config), "--endpoint-url", fault_proxy.url,
                     str(folder), f"s3://{bucket}/b/", env=s3_server.env())
    summary = result.stdout.strip().splitlines()[-1]
    uploaded, failed = (int(n) for n in re.search(
        r"uploaded (\d+) files .* (\d+) failed", summary).groups())
    assert failed > 0 and result.returncode == 1, summary
    assert uploaded + failed == 12, summary
    assert len(keys_in(s3, bucket)) == uploaded


@pytest.mark.timeout(90)
def test_a_one_shot_gives_up_on_an_endpoint_that_fails_every_put(tmp_path, s3_server, s3,
                                                                 bucket, fault_proxy):
    """Every PUT is answered 500 (SeaweedFS out of volumes did that): the breaker opens,
    and after `retry.max_attempts` failed probes in a row the run gives up on the files
    left, exit 1, instead of waiting out the outage a probe at a time as the daemon does
    (it took hours: each file's every attempt waited for a probe of its own)."""
    import yaml

    folder = tmp_path / "batch"
    folder.mkdir()
    for i in range(30):
        (folder / f"f{i:02d}.txt").write_text(f"file {i}")
    fault_proxy.answer_with(10**6, "InternalError", where=lambda r: r.method == "PUT")
    config = tmp_path / "oneshot.yaml"
    config.write_text(yaml.safe_dump({
        "s3": {"addressing_style": "path"},
        "transfer": {"concurrency": 4},
        "retry": {"max_attempts": 3, "backoff_base_seconds": 0.01},
        "breaker": {"open_seconds": 0.2, "max_open_seconds": 0.4}}))
    result = run_cli("upload", "--config", str(config), "--endpoint-url", fault_proxy.url,
                     str(folder), f"s3://{bucket}/b/", env=s3_server.env(), timeout=60)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 1, result.stderr
    assert summary.startswith("uploaded 0 files") and "30 failed" in summary, summary
    assert "3 probes in a row failed" in result.stderr, result.stderr
    failures = [line for line in result.stderr.splitlines() if " ERROR upload failed " in line]
    unnamed = [i for i in range(30)
               if not any(f"{folder / f'f{i:02d}.txt'}" in line for line in failures)]
    assert unnamed == [], "a one-shot names each file it failed, as failed"
    assert "upload deferred" not in result.stderr  # nothing comes back later in a one-shot
    # The files left were not sent: a PUT each for those in flight, and the probes (the
    # old behaviour sent every file max_attempts times, a probe at a time: 90 PUTs).
    assert fault_proxy.count(method="PUT") < 30, fault_proxy.count(method="PUT")
    assert keys_in(s3, bucket) == set()
