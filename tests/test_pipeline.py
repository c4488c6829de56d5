"""The pipeline in-process against the real server: edge cases hard to time from outside."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import time
from pathlib import Path

import boto3

from uploader.config import validate_config
from uploader.journal import Journal
from uploader.pipeline import Outcome
from uploader.wiring import services


def make_config(tmp_path: Path, s3_server, bucket: str, **transfer):
    return validate_config({
        "source": {"directory": str(tmp_path)},
        "s3": {"bucket": bucket, "endpoint_url": s3_server.endpoint_url,
               "region": s3_server.region, "addressing_style": "path"},
        "transfer": {"multipart_threshold": "5MiB", "part_size": "5MiB", **transfer},
        "state_dir": str(tmp_path / "state"),
    })


async def test_vanished_file_is_skipped_with_the_reason(tmp_path, s3_server, s3_env, bucket, s3):
    journal = Journal(tmp_path / "journal.sqlite3")
    gone = tmp_path / "gone.txt"
    async with services(make_config(tmp_path, s3_server, bucket), journal=journal) as svc:
        outcome = await svc.pipeline.process(gone, "gone.txt")
    record = journal.lookup(str(gone))
    journal.close()
    assert outcome is Outcome.SKIPPED
    assert record.status == "skipped" and "vanished" in record.error
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


async def test_uploaded_file_is_not_sent_twice_unless_it_changes(tmp_path, s3_server, s3_env,
                                                                 bucket, s3):
    journal = Journal(tmp_path / "journal.sqlite3")
    path = tmp_path / "data.bin"
    path.write_bytes(b"version 1")
    async with services(make_config(tmp_path, s3_server, bucket), journal=journal) as svc:
        assert await svc.pipeline.process(path, "data.bin") is Outcome.UPLOADED
        assert await svc.pipeline.process(path, "data.bin") is Outcome.ALREADY_UPLOADED
        path.write_bytes(b"version 2, longer")
        assert await svc.pipeline.process(path, "data.bin") is Outcome.UPLOADED
    journal.close()
    assert s3.get_object(Bucket=bucket, Key="data.bin")["Body"].read() == b"version 2, longer"


async def test_put_finished_before_a_crash_is_recognised(tmp_path, s3_server, s3_env, bucket,
                                                         s3):
    """The journal says `uploading` (the process died after the PUT, before recording it):
    HEAD shows the same size and ETag, so nothing is sent again."""
    journal = Journal(tmp_path / "journal.sqlite3")
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(os.urandom(1000))
    large.write_bytes(os.urandom(11 * 1024 * 1024))
    config = make_config(tmp_path, s3_server, bucket)
    async with services(config, journal=journal) as svc:
        for path in (small, large):
            assert await svc.pipeline.process(path, path.name) is Outcome.UPLOADED
            st = path.stat()
            journal.set_state(str(path), size=st.st_size, mtime_ns=st.st_mtime_ns,
                              key=path.name, status="uploading")
            assert await svc.pipeline.process(path, path.name) is Outcome.ALREADY_UPLOADED
        # A different object under the key (a torn or foreign write) is replaced.
        s3.put_object(Bucket=bucket, Key="small.bin", Body=b"x" * 1000)
        st = small.stat()
        journal.set_state(str(small), size=st.st_size, mtime_ns=st.st_mtime_ns,
                          key="small.bin", status="uploading")
        assert await svc.pipeline.process(small, "small.bin") is Outcome.UPLOADED
    journal.close()
    assert s3.get_object(Bucket=bucket, Key="small.bin")["Body"].read() == small.read_bytes()


async def test_multipart_parts_are_journaled_and_resumed(tmp_path, s3_server, s3_env, bucket,
                                                         s3):
    """A parked multipart upload (journal has UploadId and two parts) resumes: only the
    missing part is sent, and the object is byte-identical."""
    from uploader.journal import PartRecord, UploadRecord
    from uploader.checksums import checksum_b64
    import time

    part = 5 * 1024 * 1024
    path = tmp_path / "resume.bin"
    data = os.urandom(2 * part + 12345)
    path.write_bytes(data)
    st = path.stat()
    created = s3.create_multipart_upload(Bucket=bucket, Key="resume.bin")
    upload_id = created["UploadId"]
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.start_upload(UploadRecord(path=str(path), key="resume.bin", upload_id=upload_id,
                                      size=len(data), mtime_ns=st.st_mtime_ns, part_size=part,
                                      parts=3, checksum="md5", created_at=time.time()))
    for number in (1, 2):
        body = data[(number - 1) * part: number * part]
        response = s3.upload_part(Bucket=bucket, Key="resume.bin", UploadId=upload_id,
                                  PartNumber=number, Body=body)
        journal.record_part(upload_id, PartRecord(number, len(body),
                                                  response["ETag"].strip('"'),
                                                  checksum_b64("md5", body)))
    journal.set_state(str(path), size=len(data), mtime_ns=st.st_mtime_ns, key="resume.bin",
                      status="uploading")
    async with services(make_config(tmp_path, s3_server, bucket), journal=journal) as svc:
        assert await svc.pipeline.process(path, "resume.bin") is Outcome.UPLOADED
        assert svc.pipeline.totals.bytes_uploaded == len(data)
        assert svc.pipeline.totals.parts_sent == 1  # parts 1 and 2 were already stored
    assert journal.find_upload(str(path)) is None
    journal.close()
    assert s3.get_object(Bucket=bucket, Key="resume.bin")["Body"].read() == data
    assert s3.head_object(Bucket=bucket, Key="resume.bin")["ETag"].endswith('-3"')


async def test_concurrent_workers_share_one_bucket_check(tmp_path, s3_server, s3_env, bucket,
                                                         fault_proxy):
    import asyncio

    from uploader.bucket_check import BucketCheck
    from uploader.retry import RetryPolicy
    from uploader.s3client import open_s3_client

    config = make_config(tmp_path, s3_server, bucket)
    config.s3.endpoint_url = fault_proxy.url
    async with open_s3_client(config) as client:
        check = BucketCheck(client=client, bucket=bucket,
                            retry=RetryPolicy(max_attempts=2, base_seconds=0.01, cap_seconds=0.1))
        await asyncio.gather(*(check.ensure_exists() for _ in range(32)))
        await check.ensure_exists()
    assert fault_proxy.count(method="HEAD", path_prefix=f"/{bucket}") == 1


async def test_a_missing_bucket_is_asked_about_sooner_than_one_that_exists(
        tmp_path, s3_server, s3_env, bucket, fault_proxy):
    """Files waiting for a missing bucket come back every retry_later_seconds, and each
    return asks again once that long has passed; a bucket that exists is asked about
    again only every 30 s (a HeadBucket per returning file would be a request per file)."""
    import pytest

    from uploader.bucket_check import BucketCheck
    from uploader.errors import BucketMissing
    from uploader.retry import RetryPolicy
    from uploader.s3client import open_s3_client

    config = make_config(tmp_path, s3_server, bucket)
    config.s3.endpoint_url = fault_proxy.url
    absent = f"{bucket}-absent"
    now = [0.0]
    retry = RetryPolicy(max_attempts=2, base_seconds=0.01, cap_seconds=0.1)
    async with open_s3_client(config) as client:
        present, missing = (BucketCheck(client=client, bucket=name, retry=retry,
                                        missing_recheck_seconds=1.0, clock=lambda: now[0])
                            for name in (bucket, absent))
        for _ in range(2):  # the second time 2 s later: past 1 s, well within 30 s
            await present.ensure_exists()
            with pytest.raises(BucketMissing):
                await missing.ensure_exists()
            now[0] += 2.0
    asked_absent = fault_proxy.count(method="HEAD", path_prefix=f"/{absent}")
    asked_present = fault_proxy.count(method="HEAD", path_prefix=f"/{bucket}") - asked_absent
    assert (asked_present, asked_absent) == (1, 2)


async def test_a_journal_that_cannot_be_written_defers_the_file_and_sends_nothing(
        tmp_path, s3_server, s3_env, bucket, s3, caplog):
    """The state volume cannot be written (full, gone read-only): the file's `uploading`
    row cannot reach the disk, so nothing is sent; the file is deferred (tried again
    later), said so in one line, not a traceback. Once the journal takes writes, it goes up."""
    journal = Journal(tmp_path / "journal.sqlite3")
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 1000)
    journal._db.execute("PRAGMA query_only = ON")  # every write fails, as SQLite's own error
    async with services(make_config(tmp_path, s3_server, bucket), journal=journal) as svc:
        assert await svc.pipeline.process(path, "data.bin") is Outcome.DEFERRED
        assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
        assert svc.pipeline.totals.failures["journal"] == 1
        journal._db.execute("PRAGMA query_only = OFF")
        assert await svc.pipeline.process(path, "data.bin") is Outcome.UPLOADED
    journal.close()
    assert s3.get_object(Bucket=bucket, Key="data.bin")["Body"].read() == b"x" * 1000
    failures = [r for r in caplog.records if "journal cannot be written" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None
    assert "readonly database" in failures[0].getMessage()
    assert str(path) in failures[0].getMessage()


async def test_a_file_that_finds_no_free_descriptor_is_deferred_not_failed(
        tmp_path, s3_server, s3_env, bucket, s3):
    """Something else took every descriptor the process may open (EMFILE): a local
    shortage, not the file's fault. The file waits and goes up once one is free."""
    journal = Journal(tmp_path / "journal.sqlite3")
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    async with services(make_config(tmp_path, s3_server, bucket), journal=journal) as svc:
        assert await svc.pipeline.process(first, "first.txt") is Outcome.UPLOADED  # connected
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 32, limits[1]))
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        try:
            outcome = await svc.pipeline.process(second, "second.txt")
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        assert outcome is Outcome.DEFERRED
        assert svc.pipeline.totals.failures["EMFILE"] == 1
        assert journal.lookup(str(second)).status == "pending"
        assert await svc.pipeline.process(second, "second.txt") is Outcome.UPLOADED
    journal.close()
    assert s3.get_object(Bucket=bucket, Key="second.txt")["Body"].read() == b"second"


async def test_a_put_sent_before_a_crash_that_lands_after_the_restart_is_not_sent_again(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """A PUT the killed process had sent whole still reaches S3 after it died, and may land
    after the restarted one looked for it (seen in the kill test on a loaded machine): the
    restart waits a moment before looking for files it finds interrupted, and the object
    is completed once."""
    journal = Journal(tmp_path / "journal.sqlite3")
    path = tmp_path / "data.bin"
    data = os.urandom(3000)
    path.write_bytes(data)
    st = path.stat()
    journal.set_state(str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, key="data.bin",
                      status="uploading", inode=st.st_ino, ctime_ns=st.st_ctime_ns)
    config = make_config(tmp_path, s3_server, bucket)
    config.s3.endpoint_url = fault_proxy.url

    def the_dead_process_put_landing() -> None:
        time.sleep(0.5)
        proxied = boto3.client("s3", endpoint_url=fault_proxy.url, region_name=s3_server.region)
        proxied.put_object(Bucket=bucket, Key="data.bin", Body=data)

    async with services(config, journal=journal) as svc:
        landing = asyncio.get_running_loop().run_in_executor(None, the_dead_process_put_landing)
        outcome = await svc.pipeline.process(path, "data.bin")
        await landing
    journal.close()
    assert outcome is Outcome.ALREADY_UPLOADED
    assert fault_proxy.completed_uploads("data.bin") == 1
