"""Liveness, readiness, and `uploader health`, the client a container's HEALTHCHECK runs.

- **Liveness** (`/healthz`): the process answers and its event loop keeps
  time. `LoopMonitor` sleeps a short tick over and over and records how late
  it woke; a loop blocked by a runaway callback shows as lag, and `/healthz`
  fails when the lag passes `max_lag_seconds`.
- **Readiness** (`/readyz`): the daemon can do its job now: the bucket
  answers HeadBucket with the credentials in use (through the daemon's own
  client, so the whole credential chain and its refresh are what is tested),
  and the journal is writable (a file written and synced in `state_dir`, and
  the journal's write lock taken and released on a connection of its own).
  Neither check goes through the retry layer: readiness reports the present,
  not what retries might achieve.
  A directory daemon also needs its watched folder: one removed, moved away or
  unmounted makes it not ready until a folder is back at that path.
- `check_ready` asks a running daemon's `/readyz` for `uploader health`:
  exit 0 when ready, 1 otherwise (Docker reserves 2), with the reason.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from uploader.config import parse_listen
from uploader.errors import TransferError
from uploader.s3errors import translate

LOOP_TICK_SECONDS = 0.25
MAX_LOOP_LAG_SECONDS = 5.0
S3_TIMEOUT_SECONDS = 5.0
READY_CACHE_SECONDS = 1.0  # probes in a burst share one HeadBucket


class LoopMonitor:
    """How late the event loop runs a timer: the liveness signal."""

    def __init__(self, *, tick_seconds: float = LOOP_TICK_SECONDS,
                 max_lag_seconds: float = MAX_LOOP_LAG_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._tick = tick_seconds
        self.max_lag_seconds = max_lag_seconds
        self._clock = clock
        self._last_tick = clock()
        self._last_lag = 0.0

    async def run(self) -> None:
        while True:
            before = self._clock()
            await asyncio.sleep(self._tick)
            now = self._clock()
            self._last_lag = max(0.0, now - before - self._tick)
            self._last_tick = now

    def lag(self) -> float:
        """The last tick's lateness, or longer if the next tick is overdue."""
        overdue = self._clock() - self._last_tick - self._tick
        return max(self._last_lag, overdue, 0.0)

    def check(self) -> tuple[bool, str]:
        lag = self.lag()
        if lag > self.max_lag_seconds:
            return False, f"event loop lagging: a timer ran {lag:.1f}s late"
        return True, f"event loop lag {lag:.3f}s"


@dataclass(frozen=True)
class ReadyReport:
    ready: bool
    checks: dict[str, str]  # check name -> "ok" or the problem

    def text(self) -> str:
        head = "ready" if self.ready else "not ready"
        return head + "\n" + "".join(f"{name}: {result}\n" for name, result in self.checks.items())


class Readiness:
    """Can the daemon upload now? Bucket reachable with these credentials, journal writable,
    and (`source_problem`, when given) the source able to find files."""

    def __init__(self, *, client: Any, bucket: str, state_dir: Path, journal_path: Path | str,
                 source_problem: Callable[[], str | None] | None = None,
                 s3_timeout_seconds: float = S3_TIMEOUT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._bucket = bucket
        self._state_dir = state_dir
        self._journal_path = Path(journal_path)
        self._source_problem = source_problem
        self._timeout = s3_timeout_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last: tuple[float, ReadyReport] | None = None

    async def check(self) -> ReadyReport:
        async with self._lock:
            if self._last is not None and self._clock() - self._last[0] < READY_CACHE_SECONDS:
                return self._last[1]
            s3, journal = await asyncio.gather(self._s3(), asyncio.to_thread(self._journal))
            problems = {"s3": s3, "journal": journal}
            if self._source_problem is not None:
                problems["source"] = self._source_problem()
            report = ReadyReport(ready=not any(problems.values()),
                                 checks={name: problem or "ok"
                                         for name, problem in problems.items()})
            self._last = (self._clock(), report)
            return report

    async def _s3(self) -> str | None:
        what = f"HeadBucket s3://{self._bucket}"
        try:
            await asyncio.wait_for(self._client.head_bucket(Bucket=self._bucket), self._timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return f"{what}: no answer within {self._timeout:.0f}s"
        except Exception as exc:  # translated right here, the readiness boundary
            error = translate(exc, what=what)
            if error.status == 403 and await self._only_listing_denied():
                return None  # uploads work (the bucket check lets them go on too)
            return _explain(error)
        return None

    async def _only_listing_denied(self) -> bool:
        """After HeadBucket's bodiless 403: were the credentials refused, or only the
        listing? ListObjectsV2 answers with a code: AccessDenied means the signature
        was accepted and the identity may not list, which uploads do not need
        (least-privilege, write-only credentials)."""
        try:
            await asyncio.wait_for(self._client.list_objects_v2(Bucket=self._bucket, MaxKeys=1),
                                   self._timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other answer: not ready, as HeadBucket said
            return translate(exc, what="ListObjectsV2").code == "AccessDenied"
        return True

    def _journal(self) -> str | None:
        """In a thread: the state_dir takes a synced write, the journal its write lock."""
        probe = self._state_dir / f".uploader-ready-{os.getpid()}"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"ready?")
                handle.flush()
                os.fsync(handle.fileno())
            probe.unlink()
        except OSError as exc:
            return f"state_dir {self._state_dir} is not writable: {exc.strerror}"
        try:
            db = sqlite3.connect(f"{self._journal_path.absolute().as_uri()}?mode=rw", uri=True,
                                 timeout=2.0, isolation_level=None)
            try:
                db.execute("BEGIN IMMEDIATE")  # the write lock: what every journal write needs
                db.execute("ROLLBACK")
            finally:
                db.close()
        except sqlite3.Error as exc:
            return f"journal {self._journal_path} is not writable: {exc}"
        return None


def _explain(error: TransferError) -> str:
    if error.status == 403:
        return f"{error}; the credentials were refused (wrong access key or secret?)"
    if error.status == 404:
        return f"{error}; the bucket does not exist (check s3.bucket and s3.region)"
    return str(error)


# ----------------------------------------------------------------- the client
def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:9100`) -> (host, port); an empty host means all."""
    return parse_listen(listen)  # the schema's own reading, so both agree


def local_url(listen: str, path: str) -> str:
    """The URL a process on the same host reaches `listen` at."""
    host, port = split_listen(listen)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def check_ready(listen: str, *, timeout: float = 10.0) -> tuple[bool, str]:
    """Ask the daemon serving on `listen` whether it is ready: (ready, what it said)."""
    url = local_url(listen, "/readyz")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return True, response.read().decode("utf-8", "replace").strip()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace").strip()
        return False, body or f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, (f"cannot reach the daemon at {url} ({reason}); is `uploader run` "
                       "running with this configuration (metrics.listen)?")
