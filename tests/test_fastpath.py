"""The aiohttp data path against the real server (SeaweedFS verifies SigV4 and checksums).

The fault proxy in front of it records every request, so which path sent what
(aiohttp or botocore, told apart by User-Agent) is measured, not assumed.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from fault_proxy import FaultProxy
from uploader.config import validate_config
from uploader.errors import PermanentError, ThrottleError
from uploader.journal import Journal
from uploader.limiter import partition_for
from uploader.pipeline import Outcome
from uploader.s3.datapath import AiohttpDataPath, BotocoreDataPath
from uploader import s3client
from uploader.s3client import check_aws_settings, open_s3
from uploader.wiring import services

MiB = 1024 * 1024


def make_config(tmp_path: Path, endpoint: str, bucket: str, **sections):
    raw = {
        "source": {"directory": str(tmp_path)},
        "s3": {"bucket": bucket, "endpoint_url": endpoint, "region": "us-east-1",
               "addressing_style": "path"},
        "transfer": {"multipart_threshold": "5MiB", "part_size": "5MiB"},
        "state_dir": str(tmp_path / "state"),
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return validate_config(raw)


def data_requests(proxy: FaultProxy) -> list:
    """PutObject and UploadPart requests that reached the server."""
    return proxy.records(method="PUT", forwarded=True)


def sent_by_aiohttp(record) -> bool:
    return "aiohttp" in record.headers.get("user-agent", "")


def sent_by_botocore(record) -> bool:
    return "Botocore" in record.headers.get("user-agent", "")


HEADERS = ("content-md5", "x-amz-checksum-crc32", "x-amz-checksum-crc32c",
           "x-amz-checksum-sha256")


@pytest.mark.parametrize("checksum", ["auto", "md5", "crc32", "crc32c", "sha256", "none"])
async def test_objects_arrive_byte_identical_with_their_headers(
        checksum, tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """A PUT and a three-part multipart upload per checksum setting, with user metadata,
    a content type, a storage class, and keys that need percent-encoding."""
    files = {"small notes+1.txt": os.urandom(70_000),
             "dir/é~large=1.bin": os.urandom(2 * 5 * MiB + 4321)}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    config = make_config(tmp_path, fault_proxy.url, bucket,
                         s3={"metadata": {"team": "ingest"}, "storage_class": "STANDARD_IA"},
                         transfer={"checksum": checksum})
    journal = Journal(tmp_path / "journal.sqlite3")
    async with services(config, journal=journal) as svc:
        assert isinstance(svc.pipeline.ctx.data, AiohttpDataPath)
        for name in files:
            assert await svc.pipeline.process(tmp_path / name, name) is Outcome.UPLOADED
    journal.close()
    for name, data in files.items():
        got = s3.get_object(Bucket=bucket, Key=name)
        assert got["Body"].read() == data, name
        assert got["Metadata"] == {"team": "ingest"}
        assert got["StorageClass"] == "STANDARD_IA"
    assert s3.head_object(Bucket=bucket, Key="small notes+1.txt")["ContentType"] == "text/plain"
    sent = data_requests(fault_proxy)
    assert len(sent) == 1 + 3 and all(sent_by_aiohttp(r) and r.ok for r in sent)
    header = {"md5": "content-md5", "crc32": "x-amz-checksum-crc32",
              "crc32c": "x-amz-checksum-crc32c", "sha256": "x-amz-checksum-sha256"}.get(checksum)
    expected = [(header,) if header else ()] * 4
    if checksum == "auto":
        # SeaweedFS echoes x-amz-checksum-crc32c: the PUT carries it beside Content-MD5, and
        # the multipart upload made after that answer crc32c alone (uploader.checksum_choice).
        expected = [("content-md5", "x-amz-checksum-crc32c")] + [("x-amz-checksum-crc32c",)] * 3
    for record, names in zip(sent, expected):
        present = {name for name in HEADERS if name in record.headers}
        assert present == set(names), (record.method, record.query)
        for name in names:
            assert name in record.headers["authorization"]
        if names:
            assert (record.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
                    ) == (checksum != "sha256")
        else:  # no checksum: the payload's SHA-256 is signed instead
            assert len(record.headers["x-amz-content-sha256"]) == 64


@pytest.mark.parametrize("params", [
    {"ContentMD5": "jXd/OF09/siBXSD3SWAm3A=="},  # the MD5 of b"data", not of the body sent
    {"ChecksumCRC32C": "AAAAAA=="},
    {"ChecksumSHA256": "Om6weQ85rIfJTzhWst0sXREOaBFgImGpqSPTuyOtyLc="},
])
async def test_a_body_that_does_not_match_its_checksum_is_rejected(params, tmp_path, s3_server,
                                                                   s3_env, bucket, s3):
    config = make_config(tmp_path, s3_server.endpoint_url, bucket)
    async with open_s3(config) as access:
        with pytest.raises(PermanentError) as caught:
            await access.data.put_object(bucket=bucket, key="corrupt", body=b"other bytes",
                                         params=params, what="PUT s3://b/corrupt")
    assert caught.value.status == 400 and caught.value.code == "BadDigest"
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


async def test_the_client_comes_from_the_checked_session_without_the_high_level_helpers(
        tmp_path, s3_server, s3_env, bucket):
    """The start-up check's botocore session carries the clients (building one costs ~15 ms),
    and the control-plane client lacks aioboto3's upload_file and the like (adding them
    imports s3transfer, ~20 ms): its API calls work all the same."""
    config = make_config(tmp_path, s3_server.endpoint_url, bucket)
    check_aws_settings(config)
    [checked] = s3client._checked_sessions.values()
    async with open_s3(config) as access:
        assert not s3client._checked_sessions  # taken, not built again
        assert not hasattr(access.client, "upload_file")
        assert (await access.client.head_bucket(Bucket=bucket))["ResponseMetadata"][
            "HTTPStatusCode"] == 200
        assert access.client._request_signer._credentials is await checked.get_credentials()


async def test_a_session_checked_under_another_environment_is_not_taken(
        tmp_path, s3_server, s3_env, bucket, monkeypatch):
    config = make_config(tmp_path, s3_server.endpoint_url, bucket)
    check_aws_settings(config)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # what the checked session read may differ
    async with open_s3(config):
        assert len(s3client._checked_sessions) == 1
    s3client._checked_sessions.clear()


async def test_a_plain_http_endpoint_from_the_environment_loads_no_ca_bundle(
        tmp_path, s3_server, s3_env, bucket, s3, monkeypatch):
    """AWS_ENDPOINT_URL=http://... with no endpoint configured: no TLS to verify, so
    neither the data path nor the control plane loads a CA bundle (~25 ms of CPU
    each at every start)."""
    loaded = []
    original = ssl.SSLContext.load_verify_locations

    def spy(context, *args, **kwargs):
        loaded.append(args)
        return original(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", spy)
    config = make_config(tmp_path, None, bucket)
    async with open_s3(config) as access:
        assert access.client.meta.endpoint_url == s3_server.endpoint_url
        await access.client.head_bucket(Bucket=bucket)  # the control plane connects too
        await access.data.put_object(bucket=bucket, key="plain.txt", body=b"plain",
                                     params={}, what="PUT plain.txt")
    assert s3.get_object(Bucket=bucket, Key="plain.txt")["Body"].read() == b"plain"
    assert loaded == []


async def test_a_wrong_secret_is_a_permanent_signature_error(tmp_path, s3_server, s3_env,
                                                             bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    config = make_config(tmp_path, s3_server.endpoint_url, bucket)
    async with open_s3(config) as access:
        with pytest.raises(PermanentError) as caught:
            await access.data.put_object(bucket=bucket, key="k", body=b"data",
                                     params={"ContentMD5": "jXd/OF09/siBXSD3SWAm3A=="},
                                     what="PUT s3://b/k")
    assert caught.value.code == "SignatureDoesNotMatch" and caught.value.status == 403
    assert "SignatureDoesNotMatch" in str(caught.value) and "secret key" in str(caught.value)


async def test_slowdown_is_a_throttle_the_limiter_sees(tmp_path, s3_server, s3_env, bucket, s3,
                                                       fault_proxy):
    """The proxy allows one write per prefix, then answers 503 SlowDown."""
    fault_proxy.write_rate_per_prefix = 0.01  # one token, no refill within the test
    config = make_config(tmp_path, fault_proxy.url, bucket, retry={"max_attempts": 1})
    journal = Journal(":memory:")
    async with services(config, journal=journal) as svc:
        ctx = svc.pipeline.ctx

        async def put(key: str) -> str:
            return await svc.retry.call(
                lambda: ctx.data.put_object(bucket=bucket, key=key, body=b"x", params={},
                                            what=f"PUT {key}"),
                what=f"PUT {key}", partition=partition_for(bucket, key), nbytes=1)

        assert await put("p/first")
        with pytest.raises(ThrottleError) as caught:
            await put("p/second")
        stats = svc.retry.limiter.snapshot()[partition_for(bucket, "p/second")]
    journal.close()
    assert caught.value.code == "SlowDown" and caught.value.status == 503
    assert svc.retry.throttles == 1 and stats.throttles == 1
    assert fault_proxy.count(fault="throttle") == 1
    assert all(sent_by_aiohttp(r) for r in fault_proxy.records(method="PUT"))


async def test_the_botocore_setting_sends_everything_through_aioboto3(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    files = {"a.txt": os.urandom(1000), "big.bin": os.urandom(5 * MiB + 1)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    async def upload(data_path: str) -> list:
        fault_proxy.reset_log()
        config = make_config(tmp_path, fault_proxy.url, bucket,
                             transfer={"data_path": data_path})
        journal = Journal(":memory:")
        async with services(config, journal=journal) as svc:
            kind = type(svc.pipeline.ctx.data)
            for name in files:
                assert await svc.pipeline.process(tmp_path / name, name) is Outcome.UPLOADED
        journal.close()
        return kind, fault_proxy.records(forwarded=True)

    kind, records = await upload("botocore")
    assert kind is BotocoreDataPath
    assert len([r for r in records if r.method == "PUT"]) == 3  # a PUT and two parts
    assert records and all(sent_by_botocore(r) for r in records)
    kind, records = await upload("aiohttp")
    assert kind is AiohttpDataPath
    assert all(sent_by_aiohttp(r) for r in records if r.method == "PUT")
    assert all(sent_by_botocore(r) for r in records if r.method != "PUT")  # control plane
    for name, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data


async def upload_files(config, folder: Path, count: int, *,
                       workers: int | None = None) -> None:  # noqa: ANN001
    """`count` files f000.. of `folder` through the worker pool (resized to `workers`)."""
    journal = Journal(":memory:")
    async with services(config, journal=journal) as svc:
        svc.pool.start()
        if workers is not None:
            svc.pool.resize(workers)  # as SIGHUP does
        for i in range(count):
            await svc.pool.submit(folder / f"f{i:03d}", f"f{i:03d}")
        await svc.pool.join()
        await svc.pool.stop(grace_seconds=0)
    journal.close()


async def test_a_raised_concurrency_gets_its_connections_at_once(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """A reload that raises transfer.concurrency is not held back by a connection pool
    sized at start: the new workers' PUTs go out in parallel on connections of their own."""
    for i in range(48):
        (tmp_path / f"f{i:03d}").write_bytes(os.urandom(100))
    config = make_config(tmp_path, fault_proxy.url, bucket,
                         transfer={"concurrency": 2, "max_parts_in_flight": 1})
    fault_proxy.latency = 0.3  # each PUT holds its connection for a while
    await upload_files(config, tmp_path, 48, workers=24)  # 2 + 1 + 4 sized at start
    assert fault_proxy.count(method="PUT", forwarded=True, ok=True) == 48
    assert fault_proxy.counters()["connections"] >= 20


async def test_connections_are_kept_alive_and_bounded_by_concurrency(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    for i in range(120):
        (tmp_path / f"f{i:03d}").write_bytes(os.urandom(100 + i))
    config = make_config(tmp_path, fault_proxy.url, bucket,
                         transfer={"concurrency": 4, "max_parts_in_flight": 1})
    await upload_files(config, tmp_path, 120)
    assert fault_proxy.count(method="PUT", forwarded=True, ok=True) == 120
    # 4 workers' PUTs + the control plane's few: far fewer connections than requests.
    assert fault_proxy.counters()["connections"] <= 4 + 1 + 4 + 2


async def test_the_data_path_goes_through_the_proxy_botocore_would_use(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy, monkeypatch):
    """HTTP_PROXY/NO_PROXY from the environment, as botocore reads them for the control
    plane: the data path's PUTs went straight to S3, which fails where only a proxy
    reaches out. The fault proxy takes absolute-form requests, as a forward proxy."""
    (tmp_path / "a.txt").write_bytes(b"through the proxy")
    monkeypatch.setenv("HTTP_PROXY", fault_proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    config = make_config(tmp_path, s3_server.endpoint_url, bucket)
    async with services(config, journal=Journal(":memory:")) as svc:
        assert await svc.pipeline.process(tmp_path / "a.txt", "a.txt") is Outcome.UPLOADED
    puts = fault_proxy.records(method="PUT")
    assert len(puts) == 1 and sent_by_aiohttp(puts[0]) and puts[0].ok
    assert s3.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"through the proxy"

    fault_proxy.reset_log()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the endpoint's host: no proxy
    async with services(config, journal=Journal(":memory:")) as svc:
        assert await svc.pipeline.process(tmp_path / "a.txt", "b.txt") is Outcome.UPLOADED
    assert fault_proxy.records() == []


async def test_a_body_the_server_stops_reading_fails_after_the_read_timeout(tmp_path, s3_env):
    """A peer that accepts a PUT and then reads nothing (a dead path, a zero window): the
    body's write makes no progress. Without a limit the worker waited as long as TCP
    does (minutes, or for ever); it must fail after `read_timeout_seconds`, to be
    retried."""
    import asyncio
    import socket
    import time

    from uploader.s3errors import translate
    from uploader.errors import TransientError

    held: list[asyncio.StreamWriter] = []

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep the connection open, read nothing

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(never_reads, sock=listener)
    port = listener.getsockname()[1]
    config = make_config(tmp_path, f"http://127.0.0.1:{port}", "stalled",
                         transfer={"read_timeout_seconds": 1})
    try:
        async with open_s3(config) as s3:
            started = time.monotonic()
            with pytest.raises(Exception) as caught:
                await asyncio.wait_for(s3.data.put_object(
                    bucket="stalled", key="k", body=bytes(64 * MiB), params={},
                    what="PUT s3://stalled/k"), 30)
            elapsed = time.monotonic() - started
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert elapsed < 10, elapsed
    assert isinstance(translate(caught.value, what="PUT"), TransientError), caught.value
