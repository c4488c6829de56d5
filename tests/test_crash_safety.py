"""Crash safety in-process, against real servers: every case the kill test can only hit by luck.

The fault proxy in front of the server counts what was really sent, so "not
uploaded twice" and "only the missing parts" are measured, not assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import time
from pathlib import Path

import pytest

from fault_proxy import FaultProxy
from uploader.config import validate_config
from uploader.janitor import Janitor
from uploader.journal import Journal, PartRecord, UploadRecord
from uploader.pipeline import Outcome
from uploader.wiring import services

MiB = 1024 * 1024
PART = 5 * MiB


def make_config(tmp_path: Path, endpoint: str, bucket: str, *, region: str = "us-east-1",
                **sections):
    raw = {
        "source": {"directory": str(tmp_path)},
        "s3": {"bucket": bucket, "endpoint_url": endpoint, "region": region,
               "addressing_style": "path", "prefix": "in/"},
        "transfer": {"multipart_threshold": "5MiB", "part_size": "5MiB"},
        "state_dir": str(tmp_path / "state"),
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return validate_config(raw)


def writes(proxy: FaultProxy) -> int:
    """Requests that create or change data (PUT object/part, POST create/complete)."""
    return proxy.count(method="PUT", forwarded=True) + proxy.count(method="POST", forwarded=True)


def restore(journal: Journal, snapshot: dict) -> None:
    """Put back what the journal held before the crash (the commit that never happened)."""
    record = snapshot["upload"]
    journal.start_upload(record)
    for part in snapshot["parts"].values():
        journal.record_part(record.upload_id, part)
    path = Path(record.path)
    st = path.stat()
    journal.set_state(record.path, size=st.st_size, mtime_ns=st.st_mtime_ns, key=record.key,
                      status="uploading")


async def test_crash_between_complete_and_commit_does_not_upload_again(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """CompleteMultipartUpload succeeded, then the process died before the journal knew.

    On restart the journal still holds the UploadId and its parts; ListParts answers
    NoSuchUpload (it was completed), so HEAD decides: same size and multipart ETag means
    done, and nothing is sent.
    """
    path = tmp_path / "big.bin"
    data = os.urandom(2 * PART + 999)
    path.write_bytes(data)
    journal = Journal(tmp_path / "journal.sqlite3")
    config = make_config(tmp_path, fault_proxy.url, bucket, region=s3_server.region)
    snapshot: dict = {}
    async with services(config, journal=journal) as svc:
        original_drop = journal.drop_upload

        def remember_then_drop(file_path: str) -> None:
            upload = journal.find_upload(file_path)
            snapshot.update(upload=upload, parts=journal.parts(upload.upload_id))
            original_drop(file_path)

        journal.drop_upload = remember_then_drop  # type: ignore[method-assign]
        assert await svc.pipeline.process(path, "big.bin") is Outcome.UPLOADED
        journal.drop_upload = original_drop  # type: ignore[method-assign]
        assert fault_proxy.completed_uploads("in/big.bin") == 1

        restore(journal, snapshot)
        fault_proxy.reset_log()
        assert await svc.pipeline.process(path, "big.bin") is Outcome.ALREADY_UPLOADED
    assert writes(fault_proxy) == 0
    assert journal.lookup(str(path)).status == "uploaded"
    assert journal.find_upload(str(path)) is None
    journal.close()
    assert s3.get_object(Bucket=bucket, Key="in/big.bin")["Body"].read() == data


async def test_an_expired_upload_id_starts_over_cleanly(tmp_path, s3_server, s3_env, bucket, s3,
                                                       fault_proxy):
    """The journal's UploadId was aborted on the server (lifecycle rule, another tool)."""
    path = tmp_path / "big.bin"
    data = os.urandom(2 * PART + 1)
    path.write_bytes(data)
    journal = Journal(tmp_path / "journal.sqlite3")
    stale = s3.create_multipart_upload(Bucket=bucket, Key="in/big.bin")["UploadId"]
    body = data[:PART]
    etag = s3.upload_part(Bucket=bucket, Key="in/big.bin", UploadId=stale, PartNumber=1,
                          Body=body)["ETag"].strip('"')
    s3.abort_multipart_upload(Bucket=bucket, Key="in/big.bin", UploadId=stale)
    st = path.stat()
    journal.start_upload(UploadRecord(path=str(path), key="in/big.bin", upload_id=stale,
                                      size=len(data), mtime_ns=st.st_mtime_ns, part_size=PART,
                                      parts=3, checksum="md5", created_at=time.time()))
    journal.record_part(stale, PartRecord(1, PART, etag, None))
    journal.set_state(str(path), size=len(data), mtime_ns=st.st_mtime_ns, key="in/big.bin",
                      status="uploading")

    config = make_config(tmp_path, fault_proxy.url, bucket, region=s3_server.region)
    async with services(config, journal=journal) as svc:
        assert await svc.pipeline.process(path, "big.bin") is Outcome.UPLOADED
        assert svc.pipeline.totals.parts_sent == 3  # all of them, under a new UploadId
    assert journal.find_upload(str(path)) is None
    journal.close()
    creates = fault_proxy.count(method="POST", query_has="uploads", forwarded=True)
    assert creates == 1
    assert fault_proxy.completed_uploads("in/big.bin") == 1
    assert s3.get_object(Bucket=bucket, Key="in/big.bin")["Body"].read() == data


async def test_a_file_changed_during_its_upload_is_not_published(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """Appended to while its parts are in flight: aborted, back to settling, then sent whole."""
    path = tmp_path / "growing.bin"
    first = os.urandom(3 * PART)
    path.write_bytes(first)
    journal = Journal(tmp_path / "journal.sqlite3")
    config = make_config(tmp_path, fault_proxy.url, bucket, region=s3_server.region,
                         transfer={"max_parts_in_flight": 1})
    fault_proxy.latency = 0.2  # keep the upload in flight while the file changes
    async with services(config, journal=journal) as svc:
        upload = asyncio.ensure_future(svc.pipeline.process(path, "growing.bin"))
        await fault_proxy.wait_for_async(1, method="PUT", query_has="partNumber", timeout=30)
        with path.open("ab") as handle:
            handle.write(b"late bytes")
        assert await upload is Outcome.CHANGED
        assert journal.lookup(str(path)).status == "pending"
        assert journal.find_upload(str(path)) is None
        assert fault_proxy.count(method="DELETE", query_has="uploadId", forwarded=True) == 1
        assert fault_proxy.completed_uploads("in/growing.bin") == 0
        assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

        fault_proxy.latency = 0
        assert await svc.pipeline.process(path, "growing.bin") is Outcome.UPLOADED
    journal.close()
    assert s3.get_object(Bucket=bucket, Key="in/growing.bin")["Body"].read() == first + b"late bytes"


async def test_the_janitor_aborts_only_old_uploads_the_journal_does_not_know(
        tmp_path, s3_server, s3_env, bucket, s3, monkeypatch):
    monkeypatch.setattr("uploader.janitor.LIST_UPLOADS_PAGE", 2)  # make it page
    orphans = [s3.create_multipart_upload(Bucket=bucket, Key=f"in/orphan-{i}.bin")["UploadId"]
               for i in range(3)]
    ours = s3.create_multipart_upload(Bucket=bucket, Key="in/ours.bin")["UploadId"]
    elsewhere = s3.create_multipart_upload(Bucket=bucket, Key="other/x.bin")["UploadId"]
    gone = s3.create_multipart_upload(Bucket=bucket, Key="in/gone.bin")["UploadId"]
    journal = Journal(tmp_path / "journal.sqlite3")
    (tmp_path / "ours.bin").write_bytes(b"x")  # parked, to be resumed
    for name, upload_id in (("ours", ours), ("gone", gone)):
        journal.start_upload(UploadRecord(
            path=str(tmp_path / f"{name}.bin"), key=f"in/{name}.bin", upload_id=upload_id,
            size=1, mtime_ns=1, part_size=PART, parts=1, checksum="md5",
            created_at=time.time()))
    config = make_config(tmp_path, s3_server.endpoint_url, bucket, region=s3_server.region)
    async with services(config, journal=journal) as svc:
        young = await Janitor(ctx=svc.pipeline.ctx, prefix="in/",
                              abort_after_seconds=3600).sweep()
        # Known but its file deleted while parked: nothing would ever complete it.
        assert young.aborted == ["in/gone.bin"] and journal.find_upload(
            str(tmp_path / "gone.bin")) is None
        assert young.kept_young == 3 and young.kept_known == 1

        two_days_later = datetime.datetime.now().timestamp() + 2 * 86400
        report = await Janitor(ctx=svc.pipeline.ctx, prefix="in/", abort_after_seconds=86400,
                               now=lambda: two_days_later).sweep()
        assert sorted(report.aborted) == [f"in/orphan-{i}.bin" for i in range(3)]
        assert report.listed == 4 and report.kept_known == 1
        left = {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]}
        assert left == {ours, elsewhere}
        assert not left & set(orphans)

        # SQS: a parked upload resumes only if its message comes back here; after a day
        # it never will (SQS hides a message for 12 hours at most).
        sqs = await Janitor(ctx=svc.pipeline.ctx, prefix="in/", abort_after_seconds=86400,
                            parked_resume_here=False, now=lambda: two_days_later).sweep()
        assert sqs.aborted == ["in/ours.bin"] and journal.uploads() == []
    journal.close()


@pytest.mark.timeout(180)
async def test_a_resumed_upload_of_more_than_1000_parts_pages_through_list_parts(
        tmp_path, moto_server, monkeypatch):
    """1,500 parts of 1 KiB on moto's server (it allows small parts): the first run is
    cancelled after 1,100 parts; the second reads ListParts page by page and sends only
    the parts that were not yet journaled."""
    total_parts, part_size = 1500, 1024
    data = os.urandom(total_parts * part_size - 100)
    path = tmp_path / "many-parts.bin"
    path.write_bytes(data)
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket="paging")
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    proxy = FaultProxy(moto_server.endpoint_url).start()
    journal = Journal(tmp_path / "journal.sqlite3")
    config = make_config(tmp_path, proxy.url, "paging", transfer={"max_parts_in_flight": 16})
    try:
        async with services(config, journal=journal) as svc:
            svc.pipeline.ctx.part_size = part_size
            svc.pipeline.ctx.multipart_threshold = part_size
            first = asyncio.ensure_future(svc.pipeline.process(path, "many-parts.bin"))
            await proxy.wait_for_async(1100, method="PUT", query_has="partNumber", ok=True,
                                       timeout=120)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
        upload = journal.find_upload(str(path))
        journaled = journal.count_parts(upload.upload_id)
        assert 1100 - 16 <= journaled < total_parts
        resumed_at = time.monotonic()  # parts cancelled in flight may still be logged later

        async with services(config, journal=journal) as svc:
            svc.pipeline.ctx.part_size = part_size
            svc.pipeline.ctx.multipart_threshold = part_size
            assert await svc.pipeline.process(path, "many-parts.bin") is Outcome.UPLOADED
            assert svc.pipeline.totals.parts_sent == total_parts - journaled
        def resumed(record) -> bool:  # noqa: ANN001
            return record.t_start > resumed_at

        list_pages = proxy.count(method="GET", query_has="uploadId", where=resumed)
        assert list_pages == 2  # 1,000 parts, then the rest
        resent = {r.query_params["partNumber"]
                  for r in proxy.records(method="PUT", query_has="partNumber", where=resumed)}
        assert len(resent) == total_parts - journaled  # only the parts not journaled
        assert proxy.completed_uploads("in/many-parts.bin") == 1
    finally:
        proxy.stop()
        journal.close()
    assert s3.get_object(Bucket="paging", Key="in/many-parts.bin")["Body"].read() == data


@pytest.mark.parametrize("size", [1000, 2 * PART + 7], ids=["put", "multipart"])
async def test_two_instances_racing_on_one_file_publish_it_once(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy, size):
    """Duplicate queue messages taken by two instances at the same moment: both look
    (nothing there), both send; If-None-Match lets exactly one publish."""
    path = tmp_path / "dup.bin"
    data = os.urandom(size)
    path.write_bytes(data)
    fault_proxy.latency = 0.3  # both HEADs answer before either write lands
    outcomes = []
    async with contextlib.AsyncExitStack() as stack:
        pipelines = []
        for name in ("a", "b"):
            journal = Journal(tmp_path / f"journal-{name}.sqlite3")
            stack.callback(journal.close)
            config = make_config(tmp_path, fault_proxy.url, bucket, region=s3_server.region,
                                 source={"type": "sqs", "queue_url": "http://127.0.0.1:1/q"})
            svc = await stack.enter_async_context(services(config, journal=journal))
            pipelines.append(svc.pipeline)
        a, b = (p.process(path, "dup.bin") for p in pipelines)
        if size < PART:  # both HEADs answer, then both PUTs meet at the server
            outcomes = await asyncio.gather(a, b)
        else:
            # b starts once a's upload is created: b's HEAD (0.3 s) still answers before
            # a's parts and Complete (0.3 s each) land, and the two Completes do not meet
            # at the server in the same instant, where SeaweedFS's own If-None-Match
            # check is not atomic (both then succeed; on AWS one gets 412 or 409).
            first = asyncio.ensure_future(a)
            await fault_proxy.wait_for_async(timeout=30, where=lambda r: (
                r.method == "POST" and "uploads" in r.query_params and r.ok))
            outcomes = await asyncio.gather(first, b)
    assert sorted(o.value for o in outcomes) == ["already uploaded", "uploaded"]
    assert fault_proxy.completed_uploads("in/dup.bin") == 1
    assert fault_proxy.count(status=412) == 1
    assert s3.get_object(Bucket=bucket, Key="in/dup.bin")["Body"].read() == data
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("repeat", ["answered as the first", "NoSuchUpload"])
async def test_a_complete_whose_answer_was_lost_is_recognised_not_failed(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy, repeat):
    """CompleteMultipartUpload reaches S3 and completes, but the answer is lost (a reset),
    so it is sent again. SeaweedFS, moto and AWS answer the repeat as the first; other
    servers answer NoSuchUpload, the upload being no more (the proxy answers so here).
    Either way the object is there and whole: the file is uploaded, not failed, and
    nothing is aborted."""
    path = tmp_path / "big.bin"
    data = os.urandom(2 * PART + 1)
    path.write_bytes(data)
    fault_proxy.lose_answers(1, where=lambda r: r.is_complete_multipart)
    if repeat == "NoSuchUpload":
        fault_proxy.answer_with(1, "NoSuchUpload", where=lambda r: r.is_complete_multipart
                                and fault_proxy.count(where=lambda o: o.is_complete_multipart))
    journal = Journal(tmp_path / "journal.sqlite3")
    config = make_config(tmp_path, fault_proxy.url, bucket, region=s3_server.region)
    async with services(config, journal=journal) as svc:
        assert await svc.pipeline.process(path, "big.bin") is Outcome.UPLOADED
    journal.close()
    completes = fault_proxy.records(where=lambda r: r.is_complete_multipart)
    assert [r.fault for r in completes] == ["lost_answer",
                                            None if repeat != "NoSuchUpload" else "error"]
    assert fault_proxy.count(method="DELETE") == 0  # nothing aborted
    assert s3.get_object(Bucket=bucket, Key="in/big.bin")["Body"].read() == data


async def test_the_journal_forgets_files_finished_long_ago_and_gone_since(
        tmp_path, s3_server, s3_env, bucket):
    """Deleted or moved after upload, their rows would stay for ever: an outbox of unique
    names would grow the journal without bound. Rows of files still there, of recent
    ones, and of unfinished ones stay."""
    journal = Journal(tmp_path / "journal.sqlite3")
    kept = tmp_path / "still-here.txt"
    kept.write_text("x")
    for name, status in [("gone-1.txt", "uploaded"), ("gone-2.txt", "skipped"),
                         ("gone-3.txt", "enqueued"), ("still-here.txt", "uploaded"),
                         ("gone-pending.txt", "pending"), ("gone-failed.txt", "failed")]:
        journal.set_state(str(tmp_path / name), size=1, mtime_ns=1, key=name, status=status)
    config = make_config(tmp_path, s3_server.endpoint_url, bucket, region=s3_server.region)
    async with services(config, journal=journal) as svc:
        janitor = Janitor(ctx=svc.pipeline.ctx, prefix="in/", abort_after_seconds=86400,
                          forget_after_seconds=3600)
        assert await janitor.forget_gone_files() == 0  # all finished just now
        week_later = time.time() + 7 * 86400
        janitor = Janitor(ctx=svc.pipeline.ctx, prefix="in/", abort_after_seconds=86400,
                          forget_after_seconds=3600, now=lambda: week_later)
        assert await janitor.forget_gone_files() == 3
        await journal.durable()
    left = {Path(r.path).name for state in ("uploaded", "skipped", "enqueued", "pending",
                                             "failed") for r in journal.files_in_state(state)}
    journal.close()
    assert left == {"still-here.txt", "gone-pending.txt", "gone-failed.txt"}


async def test_forgetting_goes_through_a_large_journal_in_batches(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    for i in range(2500):
        journal.set_state(str(tmp_path / f"gone-{i:05d}"), size=1, mtime_ns=1, key=str(i),
                          status="uploaded")
    assert await journal.forget_gone(finished_before=time.time() + 1, batch=1000) == 2500
    assert journal.counts()["uploaded"] == 0
    journal.close()
