"""Sending object bytes (PutObject, UploadPart): over aiohttp, or through aioboto3.

`transfer.data_path: aiohttp` (the default) sends the two requests that carry
data with aiohttp on the daemon's event loop (uvloop), signed by botocore's
SigV4 signer with the session's credentials: a few tens of microseconds of
Python per request instead of botocore's full request pipeline (parameter
validation, serialisation, event hooks, response parsing: ~1 ms of CPU each),
which is what bounds small-object throughput. `botocore` sends them through
the aioboto3 client like every other request (the fallback).

Both raise the same typed errors: the aiohttp path classifies S3's error
responses itself (`uploader.s3.wire`), and its connection errors and timeouts
are translated at the retry layer's boundary like botocore's, so retries, the
rate limiter, the retry budget and the circuit breaker see no difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import ssl
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping, Protocol

import aiohttp
from botocore.httpsession import ProxyConfiguration, get_cert_path
from botocore.utils import get_environ_proxies
from yarl import URL

from uploader.config import MAX_CONCURRENCY, Config
from uploader.errors import PermanentError
from uploader.s3.endpoint import BucketEndpoint, resolve_endpoint
from uploader.s3.signing import RequestSigner, payload_hash
from uploader.s3.wire import MAX_ERROR_BODY, HeaderMap, error_from_response

# Idle connections are closed after this long (S3 closes its side after ~20 s).
KEEPALIVE_SECONDS = 15.0
CRC32C_HEADER = "x-amz-checksum-crc32c"  # aiohttp's headers are case-insensitive
# Bodies from this size go out in a write of their own, not copied behind the head.
SEPARATE_WRITE_FROM = 64 * 1024
# A large body goes out in writes of this size, each allowed `read_timeout_seconds`:
# a peer that stops reading (a dead path, a zero window) would otherwise hold the
# write for as long as TCP waits (aiohttp's read timeout starts after the body).
WRITE_CHUNK = 1024 * 1024


Body = bytes | memoryview  # a small file read whole, or a view of a reused part buffer


@dataclass(frozen=True)
class Stored:
    """A PutObject's or an UploadPart's answer."""

    etag: str  # without quotes
    checksum_crc32c: str | None  # its x-amz-checksum-crc32c (see uploader.checksum_choice)


class DataPath(Protocol):
    """Sends object bytes. Raises on a non-2xx answer."""

    name: str

    async def put_object(self, *, bucket: str, key: str, body: Body,
                         params: Mapping[str, Any], what: str) -> Stored: ...

    async def upload_part(self, *, bucket: str, key: str, upload_id: str, part_number: int,
                          body: Body, params: Mapping[str, Any], what: str) -> Stored: ...


def connection_pool_size(config: Config) -> int:
    """The control-plane client's connection cap: the most requests that can be in
    flight, a PUT per file worker plus the parts, for any `transfer.concurrency` a
    reload may set (connections open only as needed, so a high cap costs nothing;
    one sized at start held a raised concurrency back). The data path has no cap."""
    return MAX_CONCURRENCY + config.transfer.max_parts_in_flight + 4


class BotocoreDataPath:
    """Everything through the aioboto3 client (`transfer.data_path: botocore`)."""

    name = "botocore"

    def __init__(self, client: Any) -> None:
        self.client = client

    async def put_object(self, *, bucket: str, key: str, body: Body,
                         params: Mapping[str, Any], what: str) -> Stored:
        response = await self.client.put_object(Bucket=bucket, Key=key, Body=body, **params)
        return Stored(_etag(response.get("ETag"), what=what), response.get("ChecksumCRC32C"))

    async def upload_part(self, *, bucket: str, key: str, upload_id: str, part_number: int,
                          body: Body, params: Mapping[str, Any], what: str) -> Stored:
        # botocore takes bytes or a file, not a view of a reused buffer: a copy, here only.
        data = bytes(body) if isinstance(body, memoryview) else body
        response = await self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                                 PartNumber=part_number, Body=data, **params)
        return Stored(_etag(response.get("ETag"), what=what), response.get("ChecksumCRC32C"))


class AiohttpDataPath:
    """PutObject and UploadPart over one shared aiohttp session (`transfer.data_path: aiohttp`)."""

    name = "aiohttp"

    def __init__(self, *, client: Any, http: aiohttp.ClientSession, credentials: Any,
                 stall_seconds: float | None = None) -> None:
        """`stall_seconds`: how long sending a body may make no progress."""
        self._client = client  # resolves endpoints; the control plane stays on it
        self._http = http
        self._stall_seconds = stall_seconds
        self._credentials = credentials
        self._buckets: dict[str, tuple[BucketEndpoint, RequestSigner, str | None]] = {}
        model = client.meta.service_model
        self._put_headers = HeaderMap(model.operation_model("PutObject"))
        self._part_headers = HeaderMap(model.operation_model("UploadPart"))
        self._configured_proxies = getattr(client.meta.config, "proxies", None)

    async def endpoint(self, bucket: str) -> BucketEndpoint:
        return (await self._bucket(bucket))[0]

    async def _bucket(self, bucket: str) -> tuple[BucketEndpoint, RequestSigner, str | None]:
        found = self._buckets.get(bucket)
        if found is None:
            endpoint = await resolve_endpoint(self._client, bucket)
            signer = RequestSigner(credentials=self._credentials, endpoint=endpoint)
            found = (endpoint, signer, self._proxy_for(endpoint.base))
            self._buckets[bucket] = found
        return found

    def _proxy_for(self, url: str) -> str | None:
        """The proxy botocore would use for `url`: the client's `proxies` if configured,
        else the environment's (HTTP_PROXY, HTTPS_PROXY, honouring NO_PROXY)."""
        proxies = self._configured_proxies
        if proxies is None:
            proxies = get_environ_proxies(url)
        return ProxyConfiguration(proxies=proxies).proxy_url_for(url)

    async def put_object(self, *, bucket: str, key: str, body: Body,
                         params: Mapping[str, Any], what: str) -> Stored:
        endpoint, signer, proxy = await self._bucket(bucket)
        answer = await self._put(signer, endpoint.object_url(key), proxy=proxy, body=body,
                                 headers=self._put_headers.headers(params),
                                 payload=payload_hash(params, body), what=what)
        return Stored(_etag(answer.get("ETag"), what=what), answer.get(CRC32C_HEADER))

    async def upload_part(self, *, bucket: str, key: str, upload_id: str, part_number: int,
                          body: Body, params: Mapping[str, Any], what: str) -> Stored:
        endpoint, signer, proxy = await self._bucket(bucket)
        url = endpoint.part_url(key, upload_id=upload_id, part_number=part_number)
        answer = await self._put(signer, url, proxy=proxy, body=body,
                                 headers=self._part_headers.headers(params),
                                 payload=payload_hash(params, body), what=what)
        return Stored(_etag(answer.get("ETag"), what=what), answer.get(CRC32C_HEADER))

    async def _put(self, signer: RequestSigner, url: str, *, proxy: str | None, body: Body,
                   headers: dict[str, str], payload: str,
                   what: str) -> Mapping[str, str]:
        """The answer's headers."""
        signed = await signer.sign(method="PUT", url=url, headers=headers, payload_hash=payload)
        # encoded=True: the path and query go out exactly as signed (yarl would re-encode).
        async with self._http.put(URL(url, encoded=True),
                                  data=_Body(body, stall_seconds=self._stall_seconds),
                                  headers=signed,
                                  proxy=proxy, allow_redirects=False) as response:
            if response.status >= 300:
                raise error_from_response(status=response.status, reason=response.reason or "",
                                          headers=response.headers,
                                          body=await _read_limited(response), what=what)
            await response.read()  # empty; read so the connection goes back to the pool
            return response.headers


class _Body(aiohttp.BytesPayload):
    """A body already in memory (within the memory budget), sent without a copy.

    Two aiohttp defaults cost a full copy of every body, which doubles the
    memory a part takes and the CPU per byte: its writer joins the request
    head and the body into one buffer (`b"".join`) on CPython before 3.12.9,
    and io.BytesIO, which its BytesPayload warning suggests above 1 MB, copies
    every 256 KiB chunk. So a large body goes out after the head, on its own,
    as the same buffer. (The warning itself, "might lock the event
    loop", concerns compressed writes, which we never ask for.)
    """

    def __init__(self, value: Body, *, stall_seconds: float | None = None) -> None:
        aiohttp.payload.Payload.__init__(self, value)  # BytesPayload's, minus the warning
        self._size = len(value)
        self._stall_seconds = stall_seconds

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        value = self._value
        if content_length is not None and content_length < len(value):
            value = memoryview(value)[:content_length]
        if len(value) < SEPARATE_WRITE_FROM:
            await writer.write(value)
            return
        await writer.write(b"")  # flushes the head alone
        view = memoryview(value)
        for start in range(0, len(view), WRITE_CHUNK):
            # A TimeoutError fails the request (aiohttp passes it on): a retry.
            async with asyncio.timeout(self._stall_seconds):
                await writer.write(view[start:start + WRITE_CHUNK])


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    while len(body) < MAX_ERROR_BODY:
        chunk = await response.content.read(MAX_ERROR_BODY - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _etag(value: str | None, *, what: str) -> str:
    if not value:
        raise PermanentError(f"{what}: the server's answer carries no ETag", code="NoETag")
    return value.strip('"')


@contextlib.asynccontextmanager
async def open_data_path(config: Config, *, client: Any,
                         session: Any) -> AsyncIterator[DataPath]:
    """The data path `transfer.data_path` asks for, sharing `client`'s session and credentials.

    `session`: the aiobotocore session the client was made from; its
    credentials object is the one the client signs with.
    """
    if config.transfer.data_path == "botocore":
        yield BotocoreDataPath(client)
        return
    credentials = await session.get_credentials()  # cached by the session: no new lookup
    ca_bundle = session.get_config_variable("ca_bundle")
    tls = _tls(client.meta.endpoint_url, ca_bundle=ca_bundle)
    async with _http_session(config, tls=tls) as http:
        data = AiohttpDataPath(client=client, http=http, credentials=credentials,
                               stall_seconds=config.transfer.read_timeout_seconds)
        await data.endpoint(config.s3.bucket)  # resolve once, up front
        yield data


def _http_session(config: Config, *, tls: ssl.SSLContext | bool) -> aiohttp.ClientSession:
    t = config.transfer
    # No cap of the connector's own: requests in flight are already bounded by the
    # worker pool (a PUT each) and the part slots, and those follow a reload of
    # `transfer.concurrency`; a fixed cap sized at start would hold a raised
    # concurrency back. Idle connections close after KEEPALIVE_SECONDS.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0,
                                     keepalive_timeout=KEEPALIVE_SECONDS, ssl=tls)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_timeout_seconds,
                                    sock_read=t.read_timeout_seconds)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # S3 sets no cookies worth keeping
        # Content-Type is ours to set (PutObject) or absent (UploadPart), as with botocore.
        skip_auto_headers={"Content-Type"},
        headers={"User-Agent": _user_agent()})


def _tls(endpoint: str, *, ca_bundle: str | None) -> ssl.SSLContext | bool:
    """Verified TLS with the CA bundle botocore would use (AWS_CA_BUNDLE, ca_bundle, certifi).

    Built only when the endpoint the client resolved (the configuration's, or
    AWS_ENDPOINT_URL and the like) is HTTPS: loading a CA bundle costs tens of
    milliseconds at every start.
    """
    if endpoint.lower().startswith("http://"):
        return True  # aiohttp's default context; never used over plain HTTP
    return ssl.create_default_context(cafile=get_cert_path(ca_bundle or True))


def _user_agent() -> str:
    return (f"uploader/{importlib.metadata.version('uploader')} "
            f"aiohttp/{aiohttp.__version__} botocore-sigv4")
