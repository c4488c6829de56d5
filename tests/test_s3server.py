"""The SeaweedFS test server really behaves like S3 where the uploader relies on it."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config
import pytest

from s3server import SeaweedS3

MiB = 1024 * 1024
MIN_PART = 5 * MiB


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _crc32_b64(data: bytes) -> str:
    return _b64(struct.pack(">I", zlib.crc32(data)))


def _error_code(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A reaped child cannot linger as a zombie, so existence means alive.
    return True


def test_put_get_round_trip(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="dir/hello.txt", Body=b"hello")
    body = s3.get_object(Bucket=bucket, Key="dir/hello.txt")["Body"]
    with body:
        assert body.read() == b"hello"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["dir/hello.txt"]


def test_wrong_secret_is_rejected(s3_server: SeaweedS3, bucket: str) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key + "x",
        region_name=s3_server.region,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )
    try:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.put_object(Bucket=bucket, Key="k", Body=b"x")
    finally:
        client.close()
    assert _error_code(info.value) == ("SignatureDoesNotMatch", 403)


def test_bad_content_md5_is_bad_digest(s3: Any, bucket: str) -> None:
    wrong = _b64(hashlib.md5(b"other").digest())
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=bucket, Key="k", Body=b"hello", ContentMD5=wrong)
    assert _error_code(info.value) == ("BadDigest", 400)


def _crc32c(data: bytes) -> int:
    """Bitwise CRC32C (Castagnoli); slow but dependency-free, fine for tests."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


CHECKSUMS: dict[str, Callable[[bytes], str]] = {
    "CRC32": _crc32_b64,
    "CRC32C": lambda data: _b64(struct.pack(">I", _crc32c(data))),
    "SHA256": lambda data: _b64(hashlib.sha256(data).digest()),
}


@pytest.mark.parametrize("algorithm", sorted(CHECKSUMS))
def test_put_checksum_validated_and_returned(s3: Any, bucket: str, algorithm: str) -> None:
    data, arg = b"payload" * 100, f"Checksum{algorithm}"
    checksum = CHECKSUMS[algorithm](data)
    assert s3.put_object(Bucket=bucket, Key="k", Body=data, **{arg: checksum})[arg] == checksum
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head[arg] == checksum
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=bucket, Key="k2", Body=data, **{arg: CHECKSUMS[algorithm](b"x")})
    assert _error_code(info.value) == ("BadDigest", 400)


def test_upload_part_checksum_validated(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="pc", ChecksumAlgorithm="CRC32")["UploadId"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.upload_part(
            Bucket=bucket, Key="pc", UploadId=upload_id, PartNumber=1,
            Body=b"data", ChecksumCRC32=_crc32_b64(b"other"),
        )
    assert _error_code(info.value) == ("BadDigest", 400)
    s3.abort_multipart_upload(Bucket=bucket, Key="pc", UploadId=upload_id)


def _upload_parts(s3: Any, bucket: str, key: str, upload_id: str, parts: list[bytes]) -> list[dict[str, Any]]:
    done = []
    for number, data in enumerate(parts, start=1):
        resp = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
            Body=data, ChecksumCRC32=_crc32_b64(data),
        )
        done.append({"PartNumber": number, "ETag": resp["ETag"], "ChecksumCRC32": _crc32_b64(data)})
    return done


def test_multipart_round_trip_etag_and_composite_crc(s3: Any, bucket: str) -> None:
    parts = [os.urandom(MIN_PART), b"tail" * 100]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="mp", ChecksumAlgorithm="CRC32")["UploadId"]
    listed = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in listed] == [("mp", upload_id)]
    done = _upload_parts(s3, bucket, "mp", upload_id, parts)
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id, MultipartUpload={"Parts": done})

    head = s3.head_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")
    md5_of_md5s = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert head["ETag"] == f'"{md5_of_md5s}-2"'
    assert head["ContentLength"] == sum(map(len, parts))
    composite = _crc32_b64(b"".join(struct.pack(">I", zlib.crc32(p)) for p in parts))
    assert head["ChecksumCRC32"] == f"{composite}-2"
    body = s3.get_object(Bucket=bucket, Key="mp")["Body"]
    with body:
        assert body.read() == b"".join(parts)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_list_parts_paginates(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="lp")["UploadId"]
    _upload_parts(s3, bucket, "lp", upload_id, [b"a", b"bb", b"ccc"])
    first = s3.list_parts(Bucket=bucket, Key="lp", UploadId=upload_id, MaxParts=2)
    assert [p["PartNumber"] for p in first["Parts"]] == [1, 2]
    assert first["IsTruncated"] is True
    rest = s3.list_parts(
        Bucket=bucket, Key="lp", UploadId=upload_id, MaxParts=2,
        PartNumberMarker=first["NextPartNumberMarker"],
    )
    assert [(p["PartNumber"], p["Size"]) for p in rest["Parts"]] == [(3, 3)]
    assert rest["IsTruncated"] is False
    s3.abort_multipart_upload(Bucket=bucket, Key="lp", UploadId=upload_id)


def test_abort_removes_upload(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="ab")["UploadId"]
    _upload_parts(s3, bucket, "ab", upload_id, [b"x"])
    s3.abort_multipart_upload(Bucket=bucket, Key="ab", UploadId=upload_id)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.list_parts(Bucket=bucket, Key="ab", UploadId=upload_id)
    assert _error_code(info.value)[0] == "NoSuchUpload"
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_non_last_part_below_5mib_is_entity_too_small(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="small")["UploadId"]
    done = _upload_parts(s3, bucket, "small", upload_id, [b"a" * (MIN_PART - 1), b"b"])
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="small", UploadId=upload_id, MultipartUpload={"Parts": done}
        )
    assert _error_code(info.value)[0] == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=upload_id)


def test_part_number_limits(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="limits")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="limits", UploadId=upload_id, PartNumber=10000, Body=b"z")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.upload_part(Bucket=bucket, Key="limits", UploadId=upload_id, PartNumber=10001, Body=b"z")
    assert _error_code(info.value)[0] == "InvalidPart"
    s3.abort_multipart_upload(Bucket=bucket, Key="limits", UploadId=upload_id)


def test_factory_servers_are_independent_and_stopped(
    s3_server: SeaweedS3, s3_server_factory: Callable[..., SeaweedS3]
) -> None:
    extra = s3_server_factory()
    assert extra.endpoint_url != s3_server.endpoint_url
    assert extra.startup_seconds is not None and extra.startup_seconds < 30
    extra.create_bucket("only-on-extra")
    shared = s3_server.boto3_client()
    try:
        assert "only-on-extra" not in [b["Name"] for b in shared.list_buckets()["Buckets"]]
    finally:
        shared.close()
    pid = extra.pid
    assert pid is not None and _alive(pid)
    extra.stop()
    assert not _alive(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone too


def test_start_failure_reports_log_tail(tmp_path: Any) -> None:
    server = SeaweedS3(data_dir=tmp_path)
    server.identities_path.parent.mkdir(parents=True, exist_ok=True)
    # An unreadable -s3.config makes weed exit; start() must say why.
    server._write_identities = lambda: server.identities_path.write_text("{not json")  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="log tail"):
            server.start()
    finally:
        server.stop()
    assert server.pid is None
