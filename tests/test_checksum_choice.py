"""`transfer.checksum: auto` off AWS: md5, until the server's answer shows it verifies
crc32c. Units, then real uploads to SeaweedFS (which echoes and verifies
x-amz-checksum-crc32c) and to SeaweedFS behind a proxy that hides the echo."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from test_fastpath import data_requests, make_config
from uploader.checksum_choice import WAIT_FROM_BYTES, ChecksumChoice
from uploader.checksums import checksum_b64
from uploader.errors import ChecksumRefused, PermanentError
from uploader.journal import Journal, PartRecord, UploadRecord
from uploader.pipeline import Outcome
from uploader.s3.datapath import Stored
from uploader.wiring import services

ELSEWHERE = "http://127.0.0.1:9000"
BODY = b"some bytes to check"
MiB = 1024 * 1024


BOTH = {"ContentMD5": checksum_b64("md5", BODY), "ChecksumCRC32C": checksum_b64("crc32c", BODY)}


async def test_off_aws_one_put_sends_both_and_its_answer_decides():
    choice = ChecksumChoice("auto", ELSEWHERE)
    checksums, teaching = await choice.for_put(len(BODY))
    assert teaching and checksums(BODY) == BOTH
    assert choice.basis == "learning"
    choice.learn(BOTH, BOTH["ChecksumCRC32C"])
    assert choice.algorithm == "crc32c" and not choice.learning and choice.basis == "echo"
    checksums, teaching = await choice.for_put(len(BODY))
    assert not teaching and checksums(BODY) == {"ChecksumCRC32C": BOTH["ChecksumCRC32C"]}


@pytest.mark.parametrize("answered", [None, "AAAAAA=="])
async def test_an_answer_without_the_same_crc32c_settles_on_md5(answered):
    choice = ChecksumChoice("auto", ELSEWHERE)
    checksums, _ = await choice.for_put(len(BODY))
    choice.learn(checksums(BODY), answered)
    assert choice.algorithm == "md5" and not choice.learning and choice.basis == "no echo"
    checksums, teaching = await choice.for_put(len(BODY))
    assert not teaching and checksums(BODY) == {"ContentMD5": BOTH["ContentMD5"]}


async def test_large_bodies_wait_for_the_teaching_answer_and_take_over_if_it_fails():
    choice = ChecksumChoice("auto", ELSEWHERE)
    _, teaching = await choice.for_put(len(BODY))
    assert teaching
    small, teaching = await choice.for_put(WAIT_FROM_BYTES - 1)  # MD5 costs less than a wait
    assert not teaching and small(BODY) == {"ContentMD5": BOTH["ContentMD5"]}
    second, third = (asyncio.create_task(choice.for_put(WAIT_FROM_BYTES)) for _ in range(2))
    await asyncio.sleep(0.05)
    assert not second.done() and not third.done()  # nothing hashed before the answer
    with pytest.raises(FileNotFoundError), choice.lesson(True):
        raise FileNotFoundError("the teaching PUT's file vanished")
    await asyncio.sleep(0.05)
    assert [task.done() for task in (second, third)] == [True, False]
    checksums, teaching = second.result()
    assert teaching and checksums(BODY) == BOTH  # the next one teaches
    choice.learn(BOTH, BOTH["ChecksumCRC32C"])
    checksums, teaching = await asyncio.wait_for(third, 1)
    assert not teaching and checksums(BODY) == {"ChecksumCRC32C": BOTH["ChecksumCRC32C"]}


async def test_a_part_carries_what_its_upload_declared_and_content_md5_until_crc32c_is_proven():
    choice = ChecksumChoice("auto", ELSEWHERE)
    assert choice.for_new_upload() == "crc32c"  # while learning: so that a part can teach
    md5_part, teaching = await choice.for_body(5 * MiB, declared="md5")  # one parked earlier
    assert not teaching and md5_part(BODY) == {"ContentMD5": BOTH["ContentMD5"]}
    checksums, teaching = await choice.for_body(5 * MiB, declared="crc32c")
    assert teaching and checksums(BODY) == BOTH
    waiting = asyncio.create_task(choice.for_body(5 * MiB, declared="crc32c"))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # a large part waits for the teaching answer
    choice.learn(BOTH, None)  # not echoed: crc32c is not shown to be checked
    checksums, teaching = await asyncio.wait_for(waiting, 1)
    assert not teaching and checksums(BODY) == BOTH  # declared crc32c, proven by MD5
    assert choice.for_new_upload() == "md5"


async def test_on_aws_a_part_of_a_crc32c_upload_carries_crc32c_alone():
    choice = ChecksumChoice("auto", None)
    assert choice.for_new_upload() == "crc32c"
    checksums, teaching = await choice.for_body(5 * MiB, declared="crc32c")
    assert not teaching and checksums(BODY) == {"ChecksumCRC32C": BOTH["ChecksumCRC32C"]}


@pytest.mark.parametrize("status, resent", [(501, True), (400, True), (403, False)])
async def test_a_refused_body_goes_again_with_content_md5_alone(status, resent):
    """Refused (400, 501): sent again without the crc32c, and the choice is md5. Any other
    error (403 AccessDenied) is the request's own: raised, nothing learned."""
    choice = ChecksumChoice("auto", ELSEWHERE)
    checksums, teaching = await choice.for_put(len(BODY))
    sent_with: list[dict[str, str]] = []

    async def send(sent: dict[str, str]) -> Stored:
        sent_with.append(sent)
        if len(sent_with) == 1:
            raise PermanentError("PUT: refused", code="Refused", status=status)
        return Stored("etag", None)

    with choice.lesson(teaching):
        if resent:
            assert await choice.send(checksums(BODY), send, teaching=teaching, resend=True) == (
                Stored("etag", None), {"ContentMD5": BOTH["ContentMD5"]})
        else:
            with pytest.raises(PermanentError):
                await choice.send(checksums(BODY), send, teaching=teaching, resend=True)
    assert sent_with == [BOTH, {"ContentMD5": BOTH["ContentMD5"]}][:1 + resent]
    assert (choice.algorithm, choice.basis, choice.learning) == (
        ("md5", "refusal", False) if resent else ("md5", "learning", True))
    _, teaching = await choice.for_put(len(BODY))
    assert teaching is not resent  # after another error, the next body teaches


async def test_a_refused_part_raises_for_its_upload_to_start_over():
    choice = ChecksumChoice("auto", ELSEWHERE)
    checksums, teaching = await choice.for_body(5 * MiB, declared="crc32c")

    async def send(sent: dict[str, str]) -> Stored:
        raise PermanentError("UploadPart: refused", code="NotImplemented", status=501)

    with pytest.raises(ChecksumRefused), choice.lesson(teaching):
        await choice.send(checksums(BODY), send, teaching=teaching, resend=False)
    assert (choice.algorithm, choice.for_new_upload(), choice.basis) == ("md5", "md5", "refusal")


@pytest.mark.parametrize("endpoint", [None, "https://s3.eu-west-1.amazonaws.com"])
async def test_on_aws_auto_is_crc32c_from_the_start(endpoint):
    choice = ChecksumChoice("auto", endpoint)
    assert choice.algorithm == "crc32c" and not choice.learning
    checksums, teaching = await choice.for_put(len(BODY))
    assert not teaching and checksums(BODY) == {"ChecksumCRC32C": BOTH["ChecksumCRC32C"]}
    assert choice.can_resume("crc32c") and not choice.can_resume("md5")


@pytest.mark.parametrize("setting", ["md5", "crc32", "sha256", "none"])
async def test_a_chosen_checksum_is_kept(setting):
    choice = ChecksumChoice(setting, ELSEWHERE)
    checksums, teaching = await choice.for_put(len(BODY))
    assert not teaching and "ChecksumCRC32C" not in checksums(BODY)
    assert choice.basis == "setting"
    assert choice.algorithm == setting
    assert choice.can_resume(setting) and not choice.can_resume("crc32c")


def test_under_auto_an_upload_made_with_either_algorithm_resumes():
    choice = ChecksumChoice("auto", ELSEWHERE)
    assert choice.can_resume("md5") and choice.can_resume("crc32c")
    assert not choice.can_resume("sha256")


def checksum_headers(record) -> set[str]:
    return {name for name in record.headers if name in ("content-md5", "x-amz-checksum-crc32c")}


def write_files(tmp_path, sizes: dict[str, int]) -> dict[str, bytes]:
    files = {name: os.urandom(size) for name, size in sizes.items()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return files


async def upload(tmp_path, fault_proxy, bucket, names, *, journal: Journal | None = None,
                 data_path: str = "aiohttp"):
    config = make_config(tmp_path, fault_proxy.url, bucket, transfer={"data_path": data_path})
    own = journal is None
    journal = journal or Journal(":memory:")
    try:
        async with services(config, journal=journal) as svc:
            for name in names:  # one after the other: the first answer comes before the next
                assert await svc.pipeline.process(tmp_path / name, name) is Outcome.UPLOADED
            return svc.pipeline.ctx.checksums.algorithm
    finally:
        if own:
            journal.close()


ECHOED = [{"content-md5", "x-amz-checksum-crc32c"}] + [{"x-amz-checksum-crc32c"}] * 4
NOT_ECHOED = [{"content-md5", "x-amz-checksum-crc32c"}] + [{"content-md5"}] * 4


@pytest.mark.parametrize("data_path", ["aiohttp", "botocore"])
@pytest.mark.parametrize("echoed, learned, headers, algorithm", [
    (True, "crc32c", ECHOED, "CRC32C"),  # SeaweedFS as it is
    (False, "md5", NOT_ECHOED, None),  # its answers without x-amz-checksum-crc32c
], ids=["echoed", "not-echoed"])
async def test_the_first_put_answer_decides_what_later_uploads_carry(
        echoed, learned, headers, algorithm, data_path, tmp_path, s3_server, s3_env, bucket, s3,
        fault_proxy):
    """Two PUTs then a two-part upload, one after the other: the first PUT carries both
    checksums, the rest what its answer taught (the multipart upload declares it too)."""
    if not echoed:
        fault_proxy.hidden_response_headers = {"x-amz-checksum-crc32c"}
    files = write_files(tmp_path, {"a.txt": 1000, "b.txt": 2000, "big.bin": 2 * 5 * MiB + 7})
    assert await upload(tmp_path, fault_proxy, bucket, files, data_path=data_path) == learned
    assert [checksum_headers(r) for r in data_requests(fault_proxy)] == headers
    create = fault_proxy.records(method="POST", forwarded=True)[0]
    assert create.headers.get("x-amz-checksum-algorithm") == algorithm
    for name, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data


async def test_an_md5_upload_resumed_after_the_switch_keeps_md5_for_its_parts(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """A multipart upload parked with md5 (a previous run), resumed after this run learned
    crc32c: its remaining part carries Content-MD5, as the parts already stored do, and
    its completion lists no crc32c."""
    part = 5 * MiB
    files = write_files(tmp_path, {"first.txt": 100, "parked.bin": 2 * part + 99})
    data, path = files["parked.bin"], tmp_path / "parked.bin"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="parked.bin")["UploadId"]
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.start_upload(UploadRecord(
        path=str(path), key="parked.bin", upload_id=upload_id, size=len(data),
        mtime_ns=path.stat().st_mtime_ns, part_size=part, parts=3, checksum="md5",
        created_at=time.time(), inode=path.stat().st_ino, ctime_ns=path.stat().st_ctime_ns))
    for number in (1, 2):
        body = data[(number - 1) * part:number * part]
        etag = s3.upload_part(Bucket=bucket, Key="parked.bin", UploadId=upload_id,
                              PartNumber=number, Body=body)["ETag"].strip('"')
        journal.record_part(upload_id, PartRecord(number, len(body), etag,
                                                  checksum_b64("md5", body)))
    journal.set_state(str(path), size=len(data), mtime_ns=path.stat().st_mtime_ns,
                      key="parked.bin", status="uploading")
    try:
        assert await upload(tmp_path, fault_proxy, bucket, ["first.txt", "parked.bin"],
                            journal=journal) == "crc32c"
    finally:
        journal.close()
    puts = data_requests(fault_proxy)
    assert [checksum_headers(r) for r in puts] == [
        {"content-md5", "x-amz-checksum-crc32c"}, {"content-md5"}]
    assert puts[1].query_params.get("uploadId") == upload_id  # resumed, not made anew
    assert s3.get_object(Bucket=bucket, Key="parked.bin")["Body"].read() == data


async def test_with_many_workers_one_put_teaches_and_the_rest_hash_once(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """40 files of 256 KiB, 16 workers at once: one PUT carries both checksums, the others
    wait for its answer and carry crc32c alone."""
    files = write_files(tmp_path, {f"f{i:02d}.bin": WAIT_FROM_BYTES + i for i in range(40)})
    config = make_config(tmp_path, fault_proxy.url, bucket, transfer={"concurrency": 16})
    journal = Journal(":memory:")
    async with services(config, journal=journal) as svc:
        svc.pool.start()
        for name in files:
            await svc.pool.submit(tmp_path / name, name)
        await svc.pool.join()
        await svc.pool.stop(grace_seconds=0)
    journal.close()
    sent = [checksum_headers(r) for r in data_requests(fault_proxy)]
    assert len(sent) == 40
    assert sent.count({"content-md5", "x-amz-checksum-crc32c"}) == 1
    assert sent.count({"x-amz-checksum-crc32c"}) == 39
    for name, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data


@pytest.mark.parametrize("data_path", ["aiohttp", "botocore"])
@pytest.mark.parametrize("refusal", ["NotImplemented", "InvalidArgument"])
async def test_a_server_that_refuses_the_crc32c_header_gets_md5_and_loses_no_file(
        refusal, data_path, tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """R2 answered x-amz-checksum-* with 501 NotImplemented, Backblaze B2 with 400
    InvalidArgument: the teaching PUT is sent again with Content-MD5 alone, and the run
    settles on md5. Every file goes up; one request only is refused."""
    fault_proxy.refuse_header("x-amz-checksum-crc32c", refusal)
    files = write_files(tmp_path, {"a.txt": 1000, "b.bin": WAIT_FROM_BYTES, "c.txt": 2000})
    assert await upload(tmp_path, fault_proxy, bucket, files, data_path=data_path) == "md5"
    puts = fault_proxy.records(method="PUT")  # the refused one too
    assert [(r.key, checksum_headers(r), r.ok) for r in puts] == [
        ("a.txt", {"content-md5", "x-amz-checksum-crc32c"}, False),
        ("a.txt", {"content-md5"}, True),
        ("b.bin", {"content-md5"}, True),
        ("c.txt", {"content-md5"}, True)]
    for name, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data


def parts_of(proxy, key: str) -> list:
    return [r for r in proxy.records(method="PUT") if r.key == key]


def declared(proxy, key: str) -> list[str | None]:
    """What each CreateMultipartUpload of `key` declared (the refused ones too)."""
    return [r.headers.get("x-amz-checksum-algorithm")
            for r in proxy.records(method="POST") if r.key == key and "uploads" in r.query]


@pytest.mark.parametrize("data_path", ["aiohttp", "botocore"])
@pytest.mark.parametrize("echoed, learned", [(True, "crc32c"), (False, "md5")],
                         ids=["echoed", "not-echoed"])
async def test_a_run_of_large_files_alone_learns_from_the_first_part(
        echoed, learned, data_path, tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """No PUT to teach: the first multipart upload declares crc32c, one of its parts
    carries Content-MD5 beside it and teaches, its other parts wait for that answer. Until
    crc32c is proven, they carry Content-MD5 too; the next upload declares what was learned."""
    if not echoed:
        fault_proxy.hidden_response_headers = {"x-amz-checksum-crc32c"}
    files = write_files(tmp_path, {"one.bin": 3 * 5 * MiB + WAIT_FROM_BYTES,
                                   "two.bin": 5 * MiB + WAIT_FROM_BYTES})
    assert await upload(tmp_path, fault_proxy, bucket, files, data_path=data_path) == learned
    both, crc32c, md5 = ({"content-md5", "x-amz-checksum-crc32c"}, {"x-amz-checksum-crc32c"},
                         {"content-md5"})
    first = [checksum_headers(r) for r in parts_of(fault_proxy, "one.bin")]
    second = [checksum_headers(r) for r in parts_of(fault_proxy, "two.bin")]
    if echoed:
        assert sorted(first, key=len, reverse=True) == [both, crc32c, crc32c, crc32c]
        assert second == [crc32c] * 2
    else:
        assert first == [both] * 4 and second == [md5] * 2
    assert declared(fault_proxy, "one.bin") == ["CRC32C"]
    assert declared(fault_proxy, "two.bin") == ["CRC32C" if echoed else None]
    for name, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data


async def test_an_upload_declared_crc32c_whose_part_is_refused_starts_over_on_md5(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """The declaration accepted, the part's header refused (400): that upload cannot be
    completed, so it is aborted and made again without the declaration, its parts on
    Content-MD5 alone; the file goes up, and so does the next one."""
    fault_proxy.refuse_header("x-amz-checksum-crc32c", "InvalidArgument")
    files = write_files(tmp_path, {"one.bin": 2 * 5 * MiB + 7, "two.bin": 5 * MiB + 3})
    assert await upload(tmp_path, fault_proxy, bucket, files) == "md5"
    assert declared(fault_proxy, "one.bin") == ["CRC32C", None]
    assert declared(fault_proxy, "two.bin") == [None]
    refused = [r for r in fault_proxy.records(method="PUT") if not r.ok]
    assert refused and all(checksum_headers(r) == {"content-md5", "x-amz-checksum-crc32c"}
                           for r in refused)
    stored = [r for r in fault_proxy.records(method="PUT") if r.ok]
    assert [(r.key, checksum_headers(r)) for r in stored][-5:] == (
        [("one.bin", {"content-md5"})] * 3 + [("two.bin", {"content-md5"})] * 2)
    first_upload = refused[0].query_params["uploadId"]
    assert fault_proxy.records(method="DELETE")[0].query_params["uploadId"] == first_upload
    for name, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data


async def test_a_refused_declaration_creates_the_upload_again_without_it(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """R2 answered x-amz-checksum-algorithm with 501: the upload is created again
    without it, on md5, and so is the next one."""
    fault_proxy.refuse_header("x-amz-checksum-algorithm", "NotImplemented")
    files = write_files(tmp_path, {"one.bin": 2 * 5 * MiB + 7, "two.bin": 5 * MiB + 3})
    assert await upload(tmp_path, fault_proxy, bucket, files) == "md5"
    assert declared(fault_proxy, "one.bin") == ["CRC32C", None]
    assert declared(fault_proxy, "two.bin") == [None]
    assert [checksum_headers(r) for r in fault_proxy.records(method="PUT")] == (
        [{"content-md5"}] * 5)
    for name, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data
