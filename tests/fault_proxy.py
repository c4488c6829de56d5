"""An HTTP/1.1 fault-injecting reverse proxy for S3 tests.

It sits between the code under test and a real S3 server (SeaweedFS) and
produces the faults real S3 produces: SlowDown throttling per prefix,
500/503 errors, connections reset mid-body, outages and latency.

Why raw asyncio streams and not aiohttp: SigV4 signs the method, the raw
path, the query and the Host header.  An HTTP library re-encodes paths,
adds or normalises headers and decodes bodies, so forwarding must be
byte-exact: the request head is sent upstream exactly as received and
bodies and responses are relayed verbatim in chunks (never buffered whole).
Each client connection gets its own upstream keep-alive connection.

The proxy runs its own event loop in a daemon thread, so sync tests, async
tests (any loop) and subprocesses (via ``.url``) can all use it.  Fault
settings and the request log are guarded by one lock and are safe to touch
from any thread while the proxy runs.

Fault order per request: outage, latency, delay (`delay`), reset, error, throttle.  Faults
are answered locally, never forwarded; except a lost answer (`lose_answers`):
the request is forwarded and handled, and the client's connection is reset
instead of getting the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

__all__ = ["FaultProxy", "RequestRecord", "fault_proxy"]

HOST = "127.0.0.1"
CHUNK = 256 * 1024
MAX_HEAD = 1024 * 1024  # StreamReader limit: generous for big header sets
BODY_PREFIX = 1024  # response bytes kept per record (to spot 200-with-<Error>)
RESET_READ_MAX = 64 * 1024  # how much body a reset fault reads before aborting
PARTIAL_READ_TIMEOUT = 2.0
LINGER_TIMEOUT = 5.0
BODY_GRACE_S = 1.0  # how long a finished response waits for its request body relay
UPSTREAM_IDLE_REUSE_S = 20.0  # below SeaweedFS' 120 s idle timeout
DEFAULT_BURST_SECONDS = 1.0
START_TIMEOUT = 10.0
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})
NO_BODY_STATUSES = frozenset({204, 304})

RESET = "reset"  # status recorded for injected resets and outage refusals
ABORTED = "aborted"  # status recorded when a peer vanished mid-exchange

_REASONS = {
    400: "Bad Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Slow Down",
}
_ERRORS = {
    "SlowDown": (503, "Please reduce your request rate."),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "ServiceUnavailable": (503, "Service is unable to handle request."),
    "BadGateway": (502, "The fault proxy could not reach the upstream server."),
    "NoSuchUpload": (404, "The specified upload does not exist."),
    # How servers that lack the flexible checksums refuse their headers: R2 did with
    # 501, Backblaze B2 with 400 ("Unsupported header ... received for this API call").
    "NotImplemented": (501, "A header you provided implies functionality that is not implemented."),
    "InvalidArgument": (400, "Unsupported header received for this API call."),
}


# --------------------------------------------------------------------- records
@dataclass
class RequestRecord:
    """One request as seen by the proxy.  Times are ``time.monotonic()``."""

    method: str
    path: str  # raw, still percent-encoded, exactly as received
    query: str  # raw query string without the '?'
    bucket: str
    key: str  # percent-decoded object key ('' for bucket/service requests)
    partition: str  # throttling partition: "bucket/first-segment" or "bucket/"
    headers: dict[str, str]  # request headers, lower-cased names
    t_start: float
    t_end: float = 0.0
    status: int | str | None = None  # HTTP status, RESET or ABORTED
    forwarded: bool = False
    fault: str | None = None  # throttle | error | reset | outage | upstream_down
    response_prefix: bytes = b""

    @property
    def query_params(self) -> dict[str, str]:
        params = {}
        for item in self.query.split("&") if self.query else []:
            name, _, value = item.partition("=")
            params[unquote(name)] = unquote(value)
        return params

    @property
    def ok(self) -> bool:
        """2xx and no S3 error document hidden in a 200 body."""
        return (
            isinstance(self.status, int)
            and 200 <= self.status < 300
            and b"<Error>" not in self.response_prefix
        )

    @property
    def is_put_object(self) -> bool:
        params = self.query_params
        return (
            self.method == "PUT"
            and bool(self.key)
            and "uploadId" not in params
            and "partNumber" not in params
            and not (params.keys() & {"tagging", "acl", "retention", "legal-hold"})
            and "x-amz-copy-source" not in self.headers
        )

    @property
    def is_complete_multipart(self) -> bool:
        return self.method == "POST" and "uploadId" in self.query_params


@dataclass
class _Counters:
    total: int = 0
    forwarded: int = 0
    throttled: int = 0
    errors: int = 0
    resets: int = 0
    refused: int = 0  # connections/requests refused during an outage
    connections: int = 0  # client connections accepted (keep-alive => few)
    upstream_connections: int = 0  # connections opened to the upstream server


# --------------------------------------------------------------- rate limiting
class _TokenBucket:
    """Classic token bucket; capacity = rate * burst_seconds (min 1)."""

    def __init__(self, rate: float, burst_seconds: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * burst_seconds)
        self.tokens = self.capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Faults:
    write_rate_per_prefix: float | None = None
    # Per partition ("bucket/first-segment"), instead of write_rate_per_prefix.
    write_rates: dict[str, float] = field(default_factory=dict)
    burst_seconds: float = DEFAULT_BURST_SECONDS
    error_rate: float = 0.0
    reset_rate: float = 0.0
    latency: float = 0.0
    # (extra seconds, which requests): see FaultProxy.delay
    delayed: tuple[float, Callable[["RequestRecord"], bool]] | None = None
    outage: bool = False
    outage_until: float = 0.0
    buckets: dict[str, _TokenBucket] = field(default_factory=dict)
    # (answers still to lose, which requests): see FaultProxy.lose_answers
    lost_answers: tuple[int, Callable[["RequestRecord"], bool]] | None = None
    # (answers still to give, the error code, which requests): see FaultProxy.answer_with
    scripted: tuple[int, str, Callable[["RequestRecord"], bool]] | None = None
    # Response headers left out of every answer relayed (lower-cased names).
    hidden_response_headers: frozenset[str] = frozenset()
    # Request header (lower-cased) -> the error code answering any request carrying it.
    refused_request_headers: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ HTTP bits
@dataclass
class _Head:
    """A parsed request or response head; ``raw`` is forwarded verbatim."""

    raw: bytes
    first: list[str]  # request: method, target, version; response: version, status, reason
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    def tokens(self, name: str) -> set[str]:
        """Comma-separated header tokens, lower-cased (Connection, TE...)."""
        found: set[str] = set()
        for key, value in self.headers:
            if key == name:
                found.update(t.strip().lower() for t in value.split(","))
        return found


class _PeerGone(Exception):
    """The other side closed or reset the connection mid-message."""


class _UpstreamGone(_PeerGone):
    pass


async def _read_head(reader: asyncio.StreamReader) -> _Head | None:
    """Read one HTTP head; None on a clean EOF between messages."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise _PeerGone("truncated head") from exc
    except (ConnectionError, asyncio.LimitOverrunError) as exc:
        raise _PeerGone(str(exc)) from exc
    lines = raw.decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    if len(first) < 2:
        raise _PeerGone(f"malformed start line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    return _Head(raw, first, headers)


def _body_framing(head: _Head, *, is_request: bool) -> tuple[str, int]:
    """('chunked', 0) | ('length', n) | ('eof', 0); n may be 0."""
    if "chunked" in head.tokens("transfer-encoding"):
        return "chunked", 0
    length = head.get("content-length")
    if length is not None:
        return "length", int(length)
    return ("length", 0) if is_request else ("eof", 0)


class _Tap:
    """Keeps the first bytes of a body for the request record."""

    def __init__(self) -> None:
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        if len(self.data) < BODY_PREFIX:
            self.data += chunk[: BODY_PREFIX - len(self.data)]


async def _read(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        data = await reader.read(n)
    except ConnectionError as exc:
        raise _PeerGone(str(exc)) from exc
    return data


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise _PeerGone(str(exc)) from exc


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
        raise _PeerGone(str(exc)) from exc


async def _write(writer: asyncio.StreamWriter | None, data: bytes) -> None:
    if writer is None or not data:
        return
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError as exc:
        raise _PeerGone(str(exc)) from exc


class _BodyRelay:
    """Copies one message body verbatim; ``before_last`` runs before the
    final bytes are written so observers see a record before the client
    sees the end of the response."""

    def __init__(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter | None,
        tap: _Tap | None = None,
        before_last: Callable[[], None] = lambda: None,
    ) -> None:
        self.src, self.dst, self.tap, self.before_last = src, dst, tap, before_last

    async def run(self, framing: tuple[str, int]) -> None:
        kind, length = framing
        if kind == "length":
            await self._fixed(length, final=True)
        elif kind == "chunked":
            await self._chunked()
        else:
            await self._until_eof()

    async def _fixed(self, length: int, *, final: bool) -> None:
        remaining = length
        if remaining == 0 and final:
            self.before_last()
        while remaining:
            data = await _read(self.src, min(CHUNK, remaining))
            if not data:
                raise _PeerGone("body truncated")
            remaining -= len(data)
            if self.tap:
                self.tap.feed(data)
            if final and remaining == 0:
                self.before_last()
            await _write(self.dst, data)

    async def _chunked(self) -> None:
        while True:
            line = await _read_line(self.src)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                trailer = await self._read_trailers()
                self.before_last()
                await _write(self.dst, line + trailer)
                return
            await _write(self.dst, line)
            await self._fixed(size, final=False)
            await _write(self.dst, await _read_exactly(self.src, 2))  # CRLF

    async def _read_trailers(self) -> bytes:
        parts = []
        while True:
            line = await _read_line(self.src)
            parts.append(line)
            if line == b"\r\n":
                return b"".join(parts)

    async def _until_eof(self) -> None:
        while data := await _read(self.src, CHUNK):
            if self.tap:
                self.tap.feed(data)
            await _write(self.dst, data)
        self.before_last()


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close with SO_LINGER 0 so the peer gets a TCP RST, not a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _error_response(code: str, head: _Head, *, close: bool) -> tuple[int, bytes]:
    status, message = _ERRORS[code]
    request_id = uuid.uuid4().hex[:16].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>fault-proxy</HostId></Error>"
    ).encode()
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: application/xml",
        f"Content-Length: {len(body)}",
        f"x-amz-request-id: {request_id}",
        "x-amz-id-2: fault-proxy",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        "Server: AmazonS3",
    ]
    if close:
        lines.append("Connection: close")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if head.first[0] != "HEAD":
        raw += body
    return status, raw


def _split_target(target: str) -> tuple[str, str, str, str, str]:
    """raw path, raw query, bucket, decoded key, throttle partition."""
    path, _, query = target.partition("?")
    if "://" in path:  # absolute-form target (some clients use it via proxies)
        path = urlsplit(path).path or "/"
    parts = path.lstrip("/").split("/", 2)
    bucket = parts[0]
    key = unquote(path.lstrip("/")[len(bucket) + 1 :]) if len(parts) > 1 else ""
    partition = f"{bucket}/{parts[1]}" if len(parts) == 3 else f"{bucket}/"
    return path, query, bucket, key, partition


# ---------------------------------------------------------------- the proxy
class FaultProxy:
    """Fault-injecting HTTP/1.1 reverse proxy running in a background thread.

    Token-bucket choice: capacity = rate * burst_seconds (default 1 s, min 1
    token), refilled continuously.  A full second of burst mirrors S3, which
    absorbs short spikes and throttles sustained excess; pass a smaller
    ``burst_seconds`` for a stricter limiter.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        seed: int = 0,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        port: int = 0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http:// upstream, got {upstream_url!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self._requested_port = port
        self._cond = threading.Condition(threading.RLock())
        self._faults = _Faults(burst_seconds=burst_seconds)
        self._rng = random.Random(seed)
        self._records: list[RequestRecord] = []
        self._counters = _Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0
        self.internal_errors: list[BaseException] = []  # proxy bugs; should stay empty

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # ----------------------------------------------------------- lifecycle
    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready, failure), name="fault-proxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError("fault proxy did not start")
        if failure:
            self._thread.join()
            raise RuntimeError("fault proxy failed to start") from failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(
                    self._on_connect, HOST, self._requested_port, limit=MAX_HEAD, backlog=1024
                )
            )
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            failure.append(exc)
            loop.close()
            ready.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await _Connection(self, reader, writer).serve()
        except asyncio.CancelledError:
            # Only stop() cancels us.  Ending normally keeps asyncio's stream
            # callback from logging "task.exception()" on a cancelled task.
            pass
        finally:
            self._tasks.discard(task)

    # -------------------------------------------------------- fault knobs
    def _set(self, name: str, value: Any) -> None:
        with self._cond:
            setattr(self._faults, name, value)
            if name in ("write_rate_per_prefix", "write_rates", "burst_seconds"):
                self._faults.buckets.clear()  # new limits start with full buckets

    def _get(self, name: str) -> Any:
        with self._cond:
            return getattr(self._faults, name)

    @property
    def write_rate_per_prefix(self) -> float | None:
        """Allowed PUT/POST/DELETE per second per prefix partition (None: off)."""
        return self._get("write_rate_per_prefix")

    @write_rate_per_prefix.setter
    def write_rate_per_prefix(self, rate: float | None) -> None:
        self._set("write_rate_per_prefix", rate)

    @property
    def write_rates(self) -> dict[str, float]:
        """Allowed writes per second for the partitions named (others: write_rate_per_prefix)."""
        return dict(self._get("write_rates"))

    @write_rates.setter
    def write_rates(self, rates: dict[str, float]) -> None:
        self._set("write_rates", dict(rates))

    @property
    def hidden_response_headers(self) -> frozenset[str]:
        """Headers (lower-cased names) taken out of the server's answers: a server that
        does not send them."""
        return self._get("hidden_response_headers")

    @hidden_response_headers.setter
    def hidden_response_headers(self, names: set[str] | frozenset[str]) -> None:
        self._set("hidden_response_headers", frozenset(name.lower() for name in names))

    @property
    def burst_seconds(self) -> float:
        return self._get("burst_seconds")

    @burst_seconds.setter
    def burst_seconds(self, seconds: float) -> None:
        self._set("burst_seconds", seconds)

    @property
    def error_rate(self) -> float:
        """Probability of answering 500 InternalError / 503 ServiceUnavailable."""
        return self._get("error_rate")

    @error_rate.setter
    def error_rate(self, p: float) -> None:
        self._set("error_rate", p)

    @property
    def reset_rate(self) -> float:
        """Probability of reading part of the body and then sending a TCP RST."""
        return self._get("reset_rate")

    @reset_rate.setter
    def reset_rate(self, p: float) -> None:
        self._set("reset_rate", p)

    @property
    def latency(self) -> float:
        """Seconds added before every request is handled."""
        return self._get("latency")

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._set("latency", seconds)

    @property
    def outage(self) -> bool:
        with self._cond:
            return self._faults.outage or time.monotonic() < self._faults.outage_until

    @outage.setter
    def outage(self, on: bool) -> None:
        with self._cond:
            self._faults.outage = on
            if not on:
                self._faults.outage_until = 0.0

    def outage_for(self, seconds: float) -> None:
        """Refuse every connection for ``seconds`` from now."""
        with self._cond:
            self._faults.outage_until = time.monotonic() + seconds

    def delay(self, seconds: float, *, where: Callable[[RequestRecord], bool]) -> None:
        """Every request matching `where` waits `seconds` before it is forwarded (after
        any `latency`): one kind of request arriving late, e.g. to race another."""
        with self._cond:
            self._faults.delayed = (seconds, where)

    def _delay_for(self, record: RequestRecord) -> float:
        with self._cond:
            delayed = self._faults.delayed
        return delayed[0] if delayed is not None and delayed[1](record) else 0.0

    def lose_answers(self, count: int, *, where: Callable[[RequestRecord], bool]) -> None:
        """The next `count` requests matching `where` reach the server, which acts on
        them, but their answers never reach the client: the connection is reset
        instead (an answer lost to a timeout or a network cut, the work done)."""
        with self._cond:
            self._faults.lost_answers = (count, where)

    def answer_with(self, count: int, code: str, *,
                    where: Callable[[RequestRecord], bool]) -> None:
        """The next `count` requests matching `where` get S3's error `code` (one of
        _ERRORS), not forwarded: how some servers answer, e.g. NoSuchUpload to a
        CompleteMultipartUpload sent again after it succeeded."""
        if code not in _ERRORS:
            raise ValueError(f"unknown error code {code!r}; known: {sorted(_ERRORS)}")
        with self._cond:
            self._faults.scripted = (count, code, where)

    def refuse_header(self, name: str, code: str) -> None:
        """Answer every request carrying the header `name` with S3's error `code` (one
        of _ERRORS), not forwarded: a server that does not implement what it asks for."""
        if code not in _ERRORS:
            raise ValueError(f"unknown error code {code!r}; known: {sorted(_ERRORS)}")
        with self._cond:
            self._faults.refused_request_headers[name.lower()] = code

    def _scripted_answer(self, record: RequestRecord) -> str | None:
        with self._cond:
            scripted = self._faults.scripted
            if scripted is None or scripted[0] <= 0 or not scripted[2](record):
                return None
            self._faults.scripted = (scripted[0] - 1, scripted[1], scripted[2])
            return scripted[1]

    def _lose_answer(self, record: RequestRecord) -> bool:
        with self._cond:
            lost = self._faults.lost_answers
            if lost is None or lost[0] <= 0 or not lost[1](record):
                return False
            self._faults.lost_answers = (lost[0] - 1, lost[1])
            record.fault = "lost_answer"
            return True

    def clear_faults(self) -> None:
        with self._cond:
            burst = self._faults.burst_seconds
            self._faults = _Faults(burst_seconds=burst)

    def _decide(self, record: RequestRecord) -> str | None:
        """Pick this request's fault: 'reset', an error code, or None."""
        with self._cond:
            faults, now = self._faults, time.monotonic()
            if scripted := self._scripted_answer(record):
                return scripted
            for name, code in faults.refused_request_headers.items():
                if name in record.headers:
                    return code
            if faults.reset_rate and self._rng.random() < faults.reset_rate:
                return RESET
            if faults.error_rate and self._rng.random() < faults.error_rate:
                return self._rng.choice(("InternalError", "ServiceUnavailable"))
            rate = faults.write_rates.get(record.partition, faults.write_rate_per_prefix)
            if rate and record.method in WRITE_METHODS:
                bucket = faults.buckets.get(record.partition)
                if bucket is None:
                    bucket = faults.buckets[record.partition] = _TokenBucket(
                        rate, faults.burst_seconds, now
                    )
                if not bucket.take(now):
                    return "SlowDown"
            return None

    # ------------------------------------------------------- request log
    def _finish(self, record: RequestRecord) -> None:
        record.t_end = time.monotonic()
        with self._cond:
            self._records.append(record)
            c = self._counters
            c.total += 1
            c.forwarded += record.forwarded
            c.throttled += record.fault == "throttle"
            c.errors += record.fault == "error"
            c.resets += record.fault == "reset"
            c.refused += record.fault == "outage"
            self._cond.notify_all()

    def _bump(self, counter: str) -> None:
        with self._cond:
            setattr(self._counters, counter, getattr(self._counters, counter) + 1)
            self._cond.notify_all()

    def _internal_error(self, exc: BaseException) -> None:
        with self._cond:
            self.internal_errors.append(exc)

    def counters(self) -> dict[str, int]:
        with self._cond:
            return dict(vars(self._counters))

    def reset_log(self) -> None:
        with self._cond:
            self._records.clear()
            self._counters = _Counters()

    def records(self, **filters: Any) -> list[RequestRecord]:
        """Records matching all filters, see :meth:`count`."""
        with self._cond:
            snapshot = list(self._records)
        return [r for r in snapshot if _matches(r, **filters)]

    def count(self, **filters: Any) -> int:
        """Count records.  Filters: method, forwarded, status, fault, bucket,
        key, partition, path_prefix, query_has (param name), ok (bool),
        where (callable on the record)."""
        return len(self.records(**filters))

    def completed_uploads(self, key: str, bucket: str | None = None) -> int:
        """Successful PutObject + CompleteMultipartUpload that reached S3 for key.

        Tests use it to prove a file was uploaded exactly once.
        """
        return self.count(
            key=key,
            bucket=bucket,
            forwarded=True,
            ok=True,
            where=lambda r: r.is_put_object or r.is_complete_multipart,
        )

    def wait_for(self, n: int = 1, timeout: float = 10.0, **filters: Any) -> list[RequestRecord]:
        """Block until at least n records match; returns them (or raises)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(found := self.records(**filters)) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"only {len(found)}/{n} requests matching {filters}")
                self._cond.wait(left)
            return found

    async def wait_for_async(self, n: int = 1, timeout: float = 10.0, **filters: Any) -> list[RequestRecord]:
        """:meth:`wait_for` for async tests (runs in a worker thread)."""
        return await asyncio.to_thread(self.wait_for, n, timeout, **filters)

    def __repr__(self) -> str:
        return f"FaultProxy({self.url} -> {self.upstream[0]}:{self.upstream[1]})"


def _matches(
    record: RequestRecord,
    *,
    method: str | None = None,
    forwarded: bool | None = None,
    status: int | str | None = None,
    fault: str | None = None,
    bucket: str | None = None,
    key: str | None = None,
    partition: str | None = None,
    path_prefix: str | None = None,
    query_has: str | None = None,
    ok: bool | None = None,
    where: Callable[[RequestRecord], bool] | None = None,
) -> bool:
    checks = [
        method is None or record.method == method.upper(),
        forwarded is None or record.forwarded == forwarded,
        status is None or record.status == status,
        fault is None or record.fault == fault,
        bucket is None or record.bucket == bucket,
        key is None or record.key == key,
        partition is None or record.partition == partition,
        path_prefix is None or record.path.startswith(path_prefix),
        query_has is None or query_has in record.query_params,
        ok is None or record.ok == ok,
        where is None or where(record),
    ]
    return all(checks)


# ----------------------------------------------------------- one connection
class _Connection:
    """One client connection, paired with its own upstream connection."""

    def __init__(self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.reader, self.writer = reader, writer
        self.up_reader: asyncio.StreamReader | None = None
        self.up_writer: asyncio.StreamWriter | None = None
        self.up_last_used = 0.0

    async def serve(self) -> None:
        self.proxy._bump("connections")
        try:
            if self.proxy.outage:
                self.proxy._bump("refused")
                _abort(self.writer)
                return
            while await self._one_request():
                pass
        except _PeerGone:
            _abort(self.writer)
        except Exception as exc:  # a proxy bug: surface it to tests, never hang
            self.proxy._internal_error(exc)
            _abort(self.writer)
        finally:
            await self._close_all()

    async def _close_all(self) -> None:
        # Close both before awaiting anything: stop() may cancel us mid-await,
        # and a writer that was never closed leaks (ResourceWarning).
        writers = [w for w in (self.writer, self.up_writer) if w is not None]
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(self) -> bool:
        """Handle one request; True to keep the client connection open."""
        head = await _read_head(self.reader)
        if head is None:
            return False
        path, query, bucket, key, partition = _split_target(head.first[1])
        record = RequestRecord(
            method=head.first[0], path=path, query=query, bucket=bucket, key=key,
            partition=partition, headers=dict(head.headers), t_start=time.monotonic(),
        )
        if self.proxy.outage:
            return self._refuse(record)
        if latency := self.proxy.latency:
            await asyncio.sleep(latency)
        if delay := self.proxy._delay_for(record):
            await asyncio.sleep(delay)
        fault = self.proxy._decide(record)
        if fault == RESET:
            return await self._reset(head, record)
        if fault is not None:
            record.fault = "throttle" if fault == "SlowDown" else "error"
            return await self._answer_locally(head, record, fault)
        return await self._forward(head, record)

    # ------------------------------------------------------------ faults
    def _refuse(self, record: RequestRecord) -> bool:
        record.status, record.fault = RESET, "outage"
        self.proxy._finish(record)
        _abort(self.writer)
        return False

    async def _reset(self, head: _Head, record: RequestRecord) -> bool:
        """Read part of the body (as if the upload was under way), then RST."""
        kind, length = _body_framing(head, is_request=True)
        if kind == "chunked" or length > 0:
            if "100-continue" in head.tokens("expect"):
                await _write(self.writer, b"HTTP/1.1 100 Continue\r\n\r\n")
            want = RESET_READ_MAX if kind == "chunked" else max(1, min(length // 2, RESET_READ_MAX))
            with contextlib.suppress(asyncio.TimeoutError, _PeerGone):
                await asyncio.wait_for(_read(self.reader, want), PARTIAL_READ_TIMEOUT)
        record.status, record.fault = RESET, "reset"
        self.proxy._finish(record)
        _abort(self.writer)
        return False

    async def _answer_locally(self, head: _Head, record: RequestRecord, code: str) -> bool:
        """Send an S3 error without forwarding.

        With ``Expect: 100-continue`` the client holds the body back, so we
        answer at once and close (as servers do).  Otherwise the body is
        already on its way: drain it so the connection stays usable.
        """
        expects = "100-continue" in head.tokens("expect")
        close = expects or "close" in head.tokens("connection")
        if not expects:
            await _BodyRelay(self.reader, None).run(_body_framing(head, is_request=True))
        record.status, raw = _error_response(code, head, close=close)
        self.proxy._finish(record)
        await _write(self.writer, raw)
        if close:
            await self._lingering_close()
        return not close

    async def _lingering_close(self) -> None:
        """Half-close and discard input, so a body the client was still
        sending cannot turn our response into a RST before it is read."""
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError, _PeerGone):
            await asyncio.wait_for(self._discard_input(), LINGER_TIMEOUT)

    async def _discard_input(self) -> None:
        while await _read(self.reader, CHUNK):
            pass

    # ----------------------------------------------------------- forward
    async def _upstream(self) -> bool:
        """Ensure a live upstream connection; False if upstream is down."""
        stale = (
            self.up_reader is None
            or self.up_reader.at_eof()
            or time.monotonic() - self.up_last_used > UPSTREAM_IDLE_REUSE_S
        )
        if not stale:
            return True
        await self._drop_upstream()
        try:
            self.up_reader, self.up_writer = await asyncio.open_connection(
                *self.proxy.upstream, limit=MAX_HEAD
            )
        except OSError:
            return False
        self.proxy._bump("upstream_connections")
        return True

    async def _drop_upstream(self) -> None:
        writer, self.up_reader, self.up_writer = self.up_writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _forward(self, head: _Head, record: RequestRecord) -> bool:
        if not await self._upstream():
            record.fault = "upstream_down"
            return await self._answer_locally(head, record, "BadGateway")
        assert self.up_writer is not None
        record.forwarded = True
        await self._write_upstream(head.raw)
        body = asyncio.create_task(
            _BodyRelay(self.reader, self.up_writer).run(_body_framing(head, is_request=True))
        )
        response = asyncio.create_task(self._relay_response(head, record))
        return await self._settle(body, response, record)

    async def _write_upstream(self, data: bytes) -> None:
        try:
            await _write(self.up_writer, data)
        except _PeerGone as exc:
            raise _UpstreamGone(str(exc)) from exc

    async def _settle(
        self, body: asyncio.Task[None], response: asyncio.Task[bool], record: RequestRecord
    ) -> bool:
        """Wait for request body and response relays; decide keep-alive."""
        try:
            await self._wait_exchange(body, response)
        finally:
            pending = [t for t in (body, response) if not t.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.up_last_used = time.monotonic()
        failed = response.cancelled() or response.exception() is not None
        if failed or body.cancelled() or body.exception() is not None:
            # Framing on one side is unknown now: neither connection is reusable.
            await self._drop_upstream()
            if record.t_end == 0.0:
                record.status = record.status or ABORTED
                self.proxy._finish(record)
            if failed:
                raise _PeerGone("exchange aborted")
            return False
        return response.result()

    @staticmethod
    async def _wait_exchange(body: asyncio.Task[None], response: asyncio.Task[bool]) -> None:
        """Until the response is relayed, or the request body relay failed.

        The body relay may never finish on its own: after ``Expect:
        100-continue`` answered with a final error, no body ever comes.
        """
        pending = {body, response}
        while response in pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if body in done and (body.cancelled() or body.exception() is not None):
                return
        if body in pending and response.exception() is None and response.result():
            # Upstream may answer before our last body write is drained;
            # closing a keep-alive connection over that race would make the
            # client's next request fail spuriously.
            await asyncio.wait(pending, timeout=BODY_GRACE_S)

    async def _relay_response(self, req: _Head, record: RequestRecord) -> bool:
        assert self.up_reader is not None
        head = _without(await self._read_final_head(),
                        self.proxy._get("hidden_response_headers"))
        status = int(head.first[1])
        record.status = status
        if self.proxy._lose_answer(record):
            self.proxy._finish(record)  # the server answered; the client never hears it
            await self._drop_upstream()
            _abort(self.writer)
            raise _PeerGone("answer lost on purpose")
        framing = _body_framing(head, is_request=False)
        if req.first[0] == "HEAD" or status in NO_BODY_STATUSES:
            framing = ("length", 0)
        tap = _Tap()

        def finish() -> None:
            record.response_prefix = bytes(tap.data)
            self.proxy._finish(record)

        if framing == ("length", 0):
            finish()
            await _write(self.writer, head.raw)
        else:
            await _write(self.writer, head.raw)
            await _BodyRelay(self.up_reader, self.writer, tap, finish).run(framing)
        close = (
            framing[0] == "eof"
            or "close" in head.tokens("connection")
            or "close" in req.tokens("connection")
        )
        if close:
            await self._drop_upstream()
        return not close

    async def _read_final_head(self) -> _Head:
        """Skip (but relay) interim 1xx responses such as 100 Continue."""
        assert self.up_reader is not None
        while True:
            try:
                head = await _read_head(self.up_reader)
            except _PeerGone as exc:
                raise _UpstreamGone(str(exc)) from exc
            if head is None:
                raise _UpstreamGone("upstream closed before responding")
            if not head.first[1].startswith("1") or head.first[1] == "101":
                return head
            await _write(self.writer, head.raw)


def _without(head: _Head, names: frozenset[str]) -> _Head:
    """`head` minus the headers named (the rest relayed byte for byte)."""
    if not names or not any(key in names for key, _ in head.headers):
        return head
    lines = head.raw.split(b"\r\n")
    kept = [lines[0]] + [line for line in lines[1:]
                         if line.split(b":", 1)[0].strip().lower().decode("latin-1")
                         not in names]
    return _Head(raw=b"\r\n".join(kept), first=head.first,
                 headers=[(key, value) for key, value in head.headers if key not in names])


# ------------------------------------------------------------------- fixture
@pytest.fixture
def fault_proxy(s3_server: Any) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session ``s3_server``; all faults off."""
    proxy = FaultProxy(s3_server.endpoint_url).start()
    try:
        yield proxy
    finally:
        proxy.stop()
    assert not proxy.internal_errors, f"fault proxy bugs: {proxy.internal_errors!r}"
