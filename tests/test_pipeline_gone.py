"""The pipeline in-process against the real server: files that are gone, or were never
nameable, and what is left behind for them (parked multipart uploads, moved files)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from test_pipeline import make_config
from uploader.config import validate_config
from uploader.journal import Journal, UploadRecord
from uploader.pipeline import Outcome
from uploader.wiring import services

MiB = 1024 * 1024


def park_upload(s3, journal: Journal, bucket: str, path: Path, key: str, *, size: int) -> str:
    """A multipart upload parked for `path` (created in S3, journaled, no part yet)."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    journal.start_upload(UploadRecord(path=str(path), key=key, upload_id=upload_id, size=size,
                                      mtime_ns=time.time_ns(), part_size=5 * MiB, parts=3,
                                      checksum="md5", created_at=time.time()))
    journal.set_state(str(path), size=size, mtime_ns=time.time_ns(), key=key, status="pending")
    return upload_id


def sqs_config(tmp_path: Path, s3_server, bucket: str, **settings):
    """A fleet member's settings (source.type sqs: shared work); no queue is used here."""
    return validate_config({
        "source": {"type": "sqs", "queue_url": "http://127.0.0.1:9/queue/q",
                   "directory": str(tmp_path)},
        "s3": {"bucket": bucket, "endpoint_url": s3_server.endpoint_url,
               "region": s3_server.region, "addressing_style": "path"},
        "transfer": {"multipart_threshold": "5MiB", "part_size": "5MiB"},
        "state_dir": str(tmp_path / "state"), **settings})


def uploads_in_s3(s3, bucket: str) -> list[str]:
    return [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


async def test_a_parked_upload_is_aborted_when_its_file_is_gone(tmp_path, s3_server, s3_env,
                                                                bucket, s3):
    journal = Journal(tmp_path / "journal.sqlite3")
    gone = tmp_path / "gone.bin"
    park_upload(s3, journal, bucket, gone, "gone.bin", size=12 * MiB)
    async with services(make_config(tmp_path, s3_server, bucket), journal=journal) as svc:
        assert await svc.pipeline.process(gone, "gone.bin") is Outcome.SKIPPED
    assert journal.find_upload(str(gone)) is None
    journal.close()
    assert uploads_in_s3(s3, bucket) == []  # no stored parts left to pay for


async def test_a_parked_upload_is_aborted_when_the_file_now_goes_up_in_one_put(
        tmp_path, s3_server, s3_env, bucket, s3):
    journal = Journal(tmp_path / "journal.sqlite3")
    path = tmp_path / "shrunk.bin"
    park_upload(s3, journal, bucket, path, "shrunk.bin", size=12 * MiB)
    path.write_bytes(os.urandom(1000))  # now below the multipart threshold
    async with services(make_config(tmp_path, s3_server, bucket), journal=journal) as svc:
        assert await svc.pipeline.process(path, "shrunk.bin") is Outcome.UPLOADED
    assert journal.find_upload(str(path)) is None
    journal.close()
    assert uploads_in_s3(s3, bucket) == []
    assert s3.get_object(Bucket=bucket, Key="shrunk.bin")["Body"].read() == path.read_bytes()


async def test_a_file_gone_after_its_upload_counts_as_done(tmp_path, s3_server, s3_env, bucket):
    """Deleted or moved after upload, then a late event or a duplicate message for it."""
    journal = Journal(tmp_path / "journal.sqlite3")
    path = tmp_path / "done.txt"
    path.write_text("uploaded, then deleted")
    async with services(make_config(tmp_path, s3_server, bucket), journal=journal) as svc:
        assert await svc.pipeline.process(path, "done.txt") is Outcome.UPLOADED
        path.unlink()
        assert await svc.pipeline.process(path, "done.txt") is Outcome.ALREADY_UPLOADED
    assert journal.lookup(str(path)).status == "uploaded"
    journal.close()


async def test_a_fleet_instance_finds_a_file_another_one_uploaded_and_deleted(
        tmp_path, s3_server, s3_env, bucket):
    """SQS, after_upload: delete. A duplicate message reaches an instance with a journal of
    its own: the file is gone, the object is there, so the message is done (not failed
    towards the dead-letter queue)."""
    path = tmp_path / "shared.txt"
    path.write_text("one instance uploads it")
    for name in ("first", "second"):
        journal = Journal(tmp_path / f"{name}.sqlite3")
        async with services(sqs_config(tmp_path, s3_server, bucket, after_upload="delete"),
                            journal=journal) as svc:
            outcome = await svc.pipeline.process(path, "shared.txt")
        journal.close()
        if name == "first":
            assert outcome is Outcome.UPLOADED and not path.exists()
    assert outcome is Outcome.ALREADY_UPLOADED


async def test_a_file_name_that_is_not_utf8_fails_with_the_reason(tmp_path, s3_server, s3_env,
                                                                  bucket, s3, caplog):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.txt"
    with open(raw, "wb") as handle:
        handle.write(b"latin-1 name")
    path = Path(os.fsdecode(raw))
    journal = Journal(tmp_path / "journal.sqlite3")
    config = make_config(tmp_path, s3_server, bucket)
    config.keys.spread = "hash"  # naming the partition hashes the name: must not raise
    async with services(config, journal=journal) as svc:
        svc.pipeline.partition_of(path.name)
        assert await svc.pipeline.process(path, path.name) is Outcome.FAILED
        assert svc.pipeline.totals.failures["InvalidFileName"] == 1
    journal.close()
    assert "caf\\xe9.txt: the file name is not valid UTF-8" in caplog.text
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


async def test_a_moved_file_stays_inside_move_to_whatever_its_name(tmp_path, s3_server, s3_env,
                                                                   bucket):
    """A queue message's key is the relative name: a leading `/` must not make the move
    target absolute (it would land at the filesystem's root)."""
    move_to = tmp_path / "done"
    config = make_config(tmp_path, s3_server, bucket).model_copy(
        update={"after_upload": "move", "move_to": move_to})
    path = tmp_path / "report.txt"
    path.write_text("moved after upload")
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        async with services(config, journal=journal) as svc:
            assert await svc.pipeline.process(path, "/uploader-test-report.txt") is \
                Outcome.UPLOADED
        assert (move_to / "uploader-test-report.txt").read_text() == "moved after upload"
    finally:
        journal.close()
        Path("/uploader-test-report.txt").unlink(missing_ok=True)


async def test_a_file_larger_than_s3s_largest_object_fails_before_anything_is_sent(
        tmp_path, s3_server, s3_env, bucket, fault_proxy):
    """5 TiB + 1 byte (sparse: no disk used): refused up front, not after 5 TiB of parts."""
    path = tmp_path / "huge.img"
    with open(path, "wb") as handle:
        handle.truncate(5 * 1024**4 + 1)
    journal = Journal(tmp_path / "journal.sqlite3")
    config = make_config(tmp_path, s3_server, bucket)
    config.s3.endpoint_url = fault_proxy.url  # the proxy sees every request
    async with services(config, journal=journal) as svc:
        assert await svc.pipeline.process(path, "huge.img") is Outcome.FAILED
        assert svc.pipeline.totals.failures["EntityTooLarge"] == 1
    record = journal.lookup(str(path))
    journal.close()
    assert record.status == "failed" and "largest object (5 TiB)" in record.error
    assert fault_proxy.records(method="POST") == [] and fault_proxy.records(method="PUT") == []


async def test_a_parked_upload_is_not_completed_over_the_object_another_instance_sent(
        tmp_path, s3_server, s3_env, bucket, s3):
    """A fleet: our upload of the file was parked (shutdown), then another instance got the
    message again and uploaded the file. Back with the message, we must not complete ours
    over it (a second publication): S3 is asked first, and the parked upload aborted."""
    path = tmp_path / "shared.bin"
    data = os.urandom(6 * MiB)
    path.write_bytes(data)
    journal = Journal(tmp_path / "journal.sqlite3")
    park_upload(s3, journal, bucket, path, "shared.bin", size=len(data))
    journal.set_state(str(path), size=len(data), mtime_ns=path.stat().st_mtime_ns,
                      key="shared.bin", status="pending")
    s3.upload_file(str(path), bucket, "shared.bin", Config=TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))  # the other instance
    async with services(sqs_config(tmp_path, s3_server, bucket), journal=journal) as svc:
        assert await svc.pipeline.process(path, "shared.bin") is Outcome.ALREADY_UPLOADED
    assert journal.find_upload(str(path)) is None
    journal.close()
    assert uploads_in_s3(s3, bucket) == []


async def test_other_bytes_under_the_path_with_size_and_mtime_kept_are_uploaded(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """cp -p, rsync -t, tar -x: other bytes under the path, size and mtime as before. The
    journal's inode and ctime tell; a change of metadata alone (chmod) costs a HEAD and a
    read, not an upload."""
    path = tmp_path / "report.csv"
    path.write_bytes(b"version A " * 100)
    mtime_ns = path.stat().st_mtime_ns
    journal = Journal(tmp_path / "journal.sqlite3")
    config = make_config(tmp_path, s3_server, bucket)
    config.s3.endpoint_url = fault_proxy.url

    def put_count() -> int:
        return len(fault_proxy.records(method="PUT"))

    async with services(config, journal=journal) as svc:
        assert await svc.pipeline.process(path, "report.csv") is Outcome.UPLOADED
        replacement = tmp_path / "incoming.tmp"  # another file takes the path
        replacement.write_bytes(b"version B " * 100)
        os.utime(replacement, ns=(mtime_ns, mtime_ns))
        replacement.rename(path)
        assert await svc.pipeline.process(path, "report.csv") is Outcome.UPLOADED
        assert s3.get_object(Bucket=bucket, Key="report.csv")["Body"].read()[:9] == b"version B"

        with open(path, "r+b") as handle:  # rewritten in place, the inode kept
            handle.write(b"version C ")
        os.utime(path, ns=(mtime_ns, mtime_ns))
        assert await svc.pipeline.process(path, "report.csv") is Outcome.UPLOADED
        assert s3.get_object(Bucket=bucket, Key="report.csv")["Body"].read()[:9] == b"version C"

        sent = put_count()
        path.chmod(0o600)  # the ctime moves, the bytes do not
        assert await svc.pipeline.process(path, "report.csv") is Outcome.ALREADY_UPLOADED
        assert put_count() == sent
        asked = len(fault_proxy.records(method="HEAD"))
        assert await svc.pipeline.process(path, "report.csv") is Outcome.ALREADY_UPLOADED
        assert len(fault_proxy.records(method="HEAD")) == asked  # journaled: not asked again
    journal.close()


async def test_each_hashed_prefix_under_s3_prefix_is_a_limiter_partition(
        tmp_path, s3_server, s3_env, bucket):
    """keys.spread: hash under s3.prefix `in/`: keys are in/<hh>/path. Were the partition
    the key's first segment, every file would share `in`: one SlowDown would slow all
    prefixes, and the intake would hold them all aside together."""
    config = validate_config({
        "source": {"directory": str(tmp_path)},
        "s3": {"bucket": bucket, "prefix": "in/", "endpoint_url": s3_server.endpoint_url,
               "region": s3_server.region, "addressing_style": "path"},
        "keys": {"spread": "hash", "partitions": 16}, "state_dir": str(tmp_path / "state")})
    async with services(config, journal=Journal(":memory:")) as svc:
        partitions = {svc.pipeline.partition_of(f"logs/{i}.txt") for i in range(200)}
    assert len(partitions) == 16
    assert all(p.startswith(f"{bucket}/in/") for p in partitions)
