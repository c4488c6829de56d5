"""The fault proxy forwards S3 traffic byte-exactly and injects faults on demand."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any

import aioboto3
import botocore.exceptions
import pytest
from botocore.config import Config

from fault_proxy import FaultProxy, _split_target
from s3server import SeaweedS3

MiB = 1024 * 1024
# botocore splits connection trouble: refused (ConnectionError) vs. closed/reset (HTTPClientError).
CONNECTION_ERRORS = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)
# Keys that break if the proxy re-encodes paths (SigV4 signs the raw path).
AWKWARD_KEYS = ["plain.txt", "dir/sub dir/a+b=c&d.bin", "ünï/cödé %25 ~!*'().txt"]


@pytest.fixture
def pc(s3_server: SeaweedS3, fault_proxy: FaultProxy) -> Iterator[Any]:
    """boto3 client talking to the shared server through the proxy."""
    client = s3_server.boto3_client(endpoint_url=fault_proxy.url)
    yield client
    client.close()


def _code(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def _get(client: Any, bucket: str, key: str) -> bytes:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    with body:
        return body.read()


# ------------------------------------------------------------- pass-through
@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_put_get_round_trip_with_awkward_keys(pc: Any, fault_proxy: FaultProxy, bucket: str, key: str) -> None:
    pc.put_object(Bucket=bucket, Key=key, Body=b"hello")
    assert _get(pc, bucket, key) == b"hello"
    listed = pc.list_objects_v2(Bucket=bucket, Prefix=key[:5])["Contents"]
    assert [o["Key"] for o in listed] == [key]
    assert fault_proxy.count(method="PUT", key=key, forwarded=True, status=200) == 1
    assert fault_proxy.completed_uploads(key, bucket=bucket) == 1


def test_multi_mb_object_streams_through(pc: Any, fault_proxy: FaultProxy, bucket: str) -> None:
    data = os.urandom(12 * MiB)  # > 1 MiB: botocore sends Expect: 100-continue
    pc.put_object(Bucket=bucket, Key="big", Body=data)
    got = _get(pc, bucket, "big")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    head = pc.head_object(Bucket=bucket, Key="big")
    assert head["ContentLength"] == len(data)
    assert fault_proxy.counters()["forwarded"] == fault_proxy.counters()["total"] == 3


def test_multipart_through_proxy(pc: Any, fault_proxy: FaultProxy, bucket: str) -> None:
    parts = [os.urandom(5 * MiB), b"end"]
    upload_id = pc.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    done = []
    for number, data in enumerate(parts, start=1):
        etag = pc.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=number, Body=data)["ETag"]
        done.append({"PartNumber": number, "ETag": etag})
    page = pc.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id, MaxParts=1)
    assert [p["PartNumber"] for p in page["Parts"]] == [1] and page["IsTruncated"]
    pc.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id, MultipartUpload={"Parts": done})
    assert _get(pc, bucket, "mp") == b"".join(parts)
    assert fault_proxy.count(method="PUT", key="mp", query_has="partNumber") == 2
    assert fault_proxy.completed_uploads("mp", bucket=bucket) == 1


RAW_REQUEST = (
    b"PUT /bkt/a%2Fb%20c/%7Ex?z=1&a=%2F&empty= HTTP/1.1\r\nHost: example.invalid:1234\r\n"
    b"x-amz-Mixed-Case:  v \r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;ext=1\r\nwxyz\r\n2\r\n12\r\n0\r\nTrailer-A: t\r\n\r\n"
)
RAW_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Odd:  spaced \r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n"
)


async def _capture_then_reply(seen: bytearray, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Toy upstream: collect the request bytes, answer RAW_RESPONSE."""
    try:
        while len(seen) < len(RAW_REQUEST) and (data := await reader.read(65536)):
            seen.extend(data)
        writer.write(RAW_RESPONSE)
        await writer.drain()
    finally:
        writer.close()


async def test_byte_exact_forwarding_of_raw_requests() -> None:
    """Head and chunked body reach upstream unchanged, response comes back unchanged."""
    seen = bytearray()
    server = await asyncio.start_server(
        lambda r, w: _capture_then_reply(seen, r, w), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        with FaultProxy(f"http://127.0.0.1:{port}") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            try:
                writer.write(RAW_REQUEST)
                got = await asyncio.wait_for(reader.readexactly(len(RAW_RESPONSE)), 5)
            finally:
                writer.close()
                await writer.wait_closed()
            record = proxy.records()[0]
    finally:
        server.close()
        await server.wait_closed()
    assert bytes(seen) == RAW_REQUEST
    assert got == RAW_RESPONSE
    assert (record.path, record.query, record.key) == ("/bkt/a%2Fb%20c/%7Ex", "z=1&a=%2F&empty=", "a/b c/~x")
    assert record.headers["x-amz-mixed-case"] == "v" and record.status == 200


async def test_hundreds_of_concurrent_connections(
    s3_server: SeaweedS3, s3: Any, fault_proxy: FaultProxy, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"v" * 1000)
    session = aioboto3.Session()
    config = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, max_pool_connections=300)
    async with session.client(
        "s3", endpoint_url=fault_proxy.url, region_name=s3_server.region, config=config,
        aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key,
    ) as client:

        async def fetch() -> bytes:
            resp = await client.get_object(Bucket=bucket, Key="k")
            async with resp["Body"] as body:
                return await body.read()

        bodies = await asyncio.gather(*(fetch() for _ in range(300)))
    assert bodies == [b"v" * 1000] * 300
    assert fault_proxy.count(method="GET", key="k", status=200) == 300


async def test_aioboto3_put_and_slowdown(s3_server: SeaweedS3, fault_proxy: FaultProxy, bucket: str) -> None:
    """The daemon's own client stack (aiobotocore/aiohttp) through the proxy."""
    data = os.urandom(6 * MiB)
    config = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1})
    async with aioboto3.Session().client(
        "s3", endpoint_url=fault_proxy.url, region_name=s3_server.region, config=config,
        aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key,
    ) as client:
        await client.put_object(Bucket=bucket, Key="p/one", Body=data)
        fault_proxy.write_rate_per_prefix = 0.5
        await client.put_object(Bucket=bucket, Key="p/two", Body=data)
        with pytest.raises(botocore.exceptions.ClientError) as info:
            await client.put_object(Bucket=bucket, Key="p/three", Body=data)
        assert _code(info.value) == ("SlowDown", 503)
        head = await client.head_object(Bucket=bucket, Key="p/two")
    assert head["ContentLength"] == len(data)
    assert [fault_proxy.completed_uploads(f"p/{k}") for k in ("one", "two", "three")] == [1, 1, 0]


# ------------------------------------------------------------------- faults
def test_split_target_partitions() -> None:
    assert _split_target("/bkt/a1/x/y?uploads")[1:] == ("uploads", "bkt", "a1/x/y", "bkt/a1")
    assert _split_target("/bkt/file")[2:] == ("bkt", "file", "bkt/")
    assert _split_target("/bkt?delete")[2:] == ("bkt", "", "bkt/")


def test_slowdown_per_prefix(pc: Any, fault_proxy: FaultProxy, bucket: str) -> None:
    fault_proxy.write_rate_per_prefix = 0.5  # bucket capacity 1: one PUT, then throttled
    pc.put_object(Bucket=bucket, Key="a1/first", Body=b"x")
    for key, body in (("a1/second", b"y"), ("a1/deep/big", os.urandom(2 * MiB))):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            pc.put_object(Bucket=bucket, Key=key, Body=body)
        assert _code(info.value) == ("SlowDown", 503)
        assert "reduce your request rate" in info.value.response["Error"]["Message"]
    pc.put_object(Bucket=bucket, Key="b2/other", Body=b"z")  # other prefix: own bucket
    assert _get(pc, bucket, "a1/first") == b"x"  # reads are never throttled
    assert fault_proxy.counters()["throttled"] == 2
    assert fault_proxy.count(fault="throttle", forwarded=False, status=503) == 2
    assert fault_proxy.completed_uploads("a1/second") == 0
    fault_proxy.write_rate_per_prefix = None
    pc.put_object(Bucket=bucket, Key="a1/second", Body=b"y")
    assert fault_proxy.completed_uploads("a1/second", bucket=bucket) == 1


def test_a_write_rate_for_one_partition_leaves_the_others_alone(
        pc: Any, fault_proxy: FaultProxy, bucket: str) -> None:
    fault_proxy.write_rates = {f"{bucket}/slow": 0.5}  # capacity 1: one PUT, then throttled
    pc.put_object(Bucket=bucket, Key="slow/first", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        pc.put_object(Bucket=bucket, Key="slow/second", Body=b"y")
    assert _code(info.value) == ("SlowDown", 503)
    for i in range(5):
        pc.put_object(Bucket=bucket, Key=f"fast/{i}", Body=b"z")
    assert fault_proxy.count(fault="throttle") == 1


def test_error_rate_gives_500_and_503(pc: Any, fault_proxy: FaultProxy, bucket: str) -> None:
    fault_proxy.error_rate = 1.0
    codes = set()
    for _ in range(20):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            pc.put_object(Bucket=bucket, Key="k", Body=b"x")
        codes.add(_code(info.value))
    with pytest.raises(botocore.exceptions.ClientError) as info:
        pc.head_object(Bucket=bucket, Key="k")  # HEAD: error status, no body
    assert _code(info.value)[1] in (500, 503)
    assert codes == {("InternalError", 500), ("ServiceUnavailable", 503)}
    assert fault_proxy.counters()["errors"] == 21
    assert fault_proxy.counters()["forwarded"] == 0


def test_reset_mid_body_is_a_connection_error(pc: Any, fault_proxy: FaultProxy, bucket: str) -> None:
    fault_proxy.reset_rate = 1.0
    for body in (b"small", os.urandom(3 * MiB)):
        with pytest.raises(CONNECTION_ERRORS):
            pc.put_object(Bucket=bucket, Key="k", Body=body)
    assert fault_proxy.count(status="reset", fault="reset", forwarded=False) == 2
    fault_proxy.reset_rate = 0.0
    pc.put_object(Bucket=bucket, Key="k", Body=b"ok")
    assert fault_proxy.completed_uploads("k") == 1


def test_outage_refuses_connections(s3_server: SeaweedS3, pc: Any, fault_proxy: FaultProxy) -> None:
    pc.list_buckets()  # leaves a pooled keep-alive connection: it must be refused too
    fault_proxy.outage = True
    with pytest.raises(CONNECTION_ERRORS):
        pc.list_buckets()
    fresh = s3_server.boto3_client(endpoint_url=fault_proxy.url)  # refused at accept
    try:
        with pytest.raises(CONNECTION_ERRORS):
            fresh.list_buckets()
        fault_proxy.outage = False
        fresh.list_buckets()
    finally:
        fresh.close()
    pc.list_buckets()
    counters = fault_proxy.counters()
    assert (counters["refused"], counters["forwarded"]) == (2, 3)
    assert fault_proxy.count(fault="outage", status="reset", forwarded=False) == 1


def test_outage_for_expires(pc: Any, fault_proxy: FaultProxy) -> None:
    began = time.monotonic()
    fault_proxy.outage_for(0.5)
    with pytest.raises(CONNECTION_ERRORS):
        pc.list_buckets()
    time.sleep(max(0.0, began + 0.5 - time.monotonic()))  # waiting for a deadline, not an event
    assert not fault_proxy.outage
    pc.list_buckets()


def test_latency_delays_requests(pc: Any, fault_proxy: FaultProxy) -> None:
    fault_proxy.latency = 0.4
    began = time.monotonic()
    pc.list_buckets()
    assert time.monotonic() - began >= 0.4


def test_delay_holds_back_only_the_requests_it_names(pc: Any, fault_proxy: FaultProxy,
                                                     bucket: str) -> None:
    fault_proxy.delay(0.6, where=lambda record: record.key == "late")
    began = time.monotonic()
    pc.put_object(Bucket=bucket, Key="early", Body=b"1")
    assert time.monotonic() - began < 0.6
    pc.put_object(Bucket=bucket, Key="late", Body=b"2")
    assert time.monotonic() - began >= 0.6
    late = fault_proxy.records(key="late")[0]
    assert late.forwarded and late.t_end - late.t_start >= 0.6


# ---------------------------------------------------------------------- log
def test_request_log_and_wait_for(pc: Any, fault_proxy: FaultProxy, bucket: str) -> None:
    pc.put_object(Bucket=bucket, Key="dir/a", Body=b"1")
    pc.put_object(Bucket=bucket, Key="dir/a", Body=b"2")
    pc.list_objects_v2(Bucket=bucket, Prefix="dir/")
    assert fault_proxy.completed_uploads("dir/a", bucket=bucket) == 2
    assert fault_proxy.count(method="PUT", path_prefix=f"/{bucket}/dir/") == 2
    listing = fault_proxy.wait_for(1, timeout=1, method="GET", query_has="list-type")[0]
    assert listing.query_params["prefix"] == "dir/"
    assert listing.partition == f"{bucket}/" and listing.t_end >= listing.t_start
    assert fault_proxy.counters() == {
        "total": 3, "forwarded": 3, "throttled": 0, "errors": 0, "resets": 0, "refused": 0,
        "connections": 1, "upstream_connections": 1,  # keep-alive on both sides
    }
    with pytest.raises(TimeoutError):
        fault_proxy.wait_for(1, timeout=0.1, method="DELETE")
    fault_proxy.reset_log()
    assert fault_proxy.records() == [] and fault_proxy.counters()["total"] == 0


def test_complete_with_error_body_is_not_counted(pc: Any, fault_proxy: FaultProxy, bucket: str) -> None:
    upload_id = pc.create_multipart_upload(Bucket=bucket, Key="tiny")["UploadId"]
    etag = pc.upload_part(Bucket=bucket, Key="tiny", UploadId=upload_id, PartNumber=1, Body=b"a")["ETag"]
    with pytest.raises(botocore.exceptions.ClientError):
        pc.complete_multipart_upload(
            Bucket=bucket, Key="tiny", UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}, {"PartNumber": 2, "ETag": etag}]},
        )
    assert fault_proxy.count(key="tiny", method="POST", query_has="uploadId") == 1
    assert fault_proxy.completed_uploads("tiny", bucket=bucket) == 0
