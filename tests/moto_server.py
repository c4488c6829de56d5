"""moto's server (S3 and SQS over real HTTP) for tests, plus a pytest fixture.

SeaweedFS is the S3 server the tests trust; moto's server is used where it
can do what SeaweedFS cannot: SQS, and S3 multipart uploads whose parts are
smaller than 5 MiB (`S3_UPLOAD_PART_MIN_SIZE`), so an upload of more than
1,000 parts (ListParts then pages) fits in a test.

Fixture:
  * ``moto_server`` (session): a running :class:`MotoServer` on a free loopback port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from botocore.config import Config

__all__ = ["MotoServer", "moto_server"]

HOST = "127.0.0.1"
MIN_PART_SIZE = 1024
START_DEADLINE_S = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class MotoServer:
    process: subprocess.Popen[bytes]
    port: int
    region: str = "us-east-1"
    access_key: str = "moto-key"
    secret_key: str = "moto-secret"

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self, endpoint_url: str | None = None) -> dict[str, str]:
        endpoint = endpoint_url or self.endpoint_url
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
                "AWS_ENDPOINT_URL": endpoint}

    def credentials(self) -> dict[str, str]:
        """Keyword arguments for a boto3 or aioboto3 session or client of this server."""
        return {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key,
                "region_name": self.region}

    def client(self, service: str):  # noqa: ANN201 - a boto3 client
        return boto3.client(service, endpoint_url=self.endpoint_url, **self.credentials(),
                            config=Config(s3={"addressing_style": "path"}))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_moto_server() -> MotoServer:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["S3_UPLOAD_PART_MIN_SIZE"] = str(MIN_PART_SIZE)
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = MotoServer(process=process, port=port)
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode} at start")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"moto server did not listen on {HOST}:{port} in time")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = start_moto_server()
    try:
        yield server
    finally:
        server.stop()
