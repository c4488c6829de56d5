"""The container: hadolint finds nothing, and the image's entrypoint runs as written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_harness import daemon_factory, wait_until  # noqa: F401
from daemon_harness import object_bytes
from ops_harness import free_port

ROOT = Path(__file__).parent.parent
HADOLINT = Path(sys.executable).with_name("hadolint")


INIT = ["tini", "--"]


def dockerfile_instruction(name: str) -> str:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    match = re.search(rf"^{name}\s+(.+)$", text, re.MULTILINE)
    assert match, f"Dockerfile has no {name}"
    return match.group(1)


def test_hadolint_finds_nothing():
    result = subprocess.run([str(HADOLINT), str(ROOT / "Dockerfile")], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_runs_as_non_root_with_volumes():
    assert dockerfile_instruction("USER").split(":")[0] not in ("0", "root")
    volumes = json.loads(dockerfile_instruction("VOLUME"))
    assert {"/data/outbox", "/var/lib/uploader"} <= set(volumes)
    assert dockerfile_instruction("FROM").startswith("python:3.11-slim")
    assert dockerfile_instruction("EXPOSE").split() == ["9100"]
    assert json.loads(dockerfile_instruction("ENTRYPOINT"))[:2] == INIT  # an init as PID 1


@pytest.mark.timeout(60)
def test_entrypoint_runs_the_example_config(tmp_path, s3_server, s3, bucket):
    """The exact ENTRYPOINT, with the image's config file (copied here) and env overrides
    standing in for the volumes a container would mount."""
    entrypoint = json.loads(dockerfile_instruction("ENTRYPOINT"))
    assert entrypoint == [*INIT, "uploader", "run", "--config", "/config/uploader.yaml"]
    entrypoint = entrypoint[len(INIT):]  # no tini here; it only forwards signals
    healthcheck = json.loads(dockerfile_instruction("HEALTHCHECK").split("CMD", 1)[1])
    assert healthcheck == ["uploader", "health", "--config", "/config/uploader.yaml"]
    config = tmp_path / "uploader.yaml"
    shutil.copy(ROOT / "config" / "uploader.yaml", config)
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "hello.txt").write_text("hello from the container")
    env = {**s3_server.env(), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "UPLOADER_SOURCE__DIRECTORY": str(outbox), "UPLOADER_STATE_DIR": str(tmp_path / "s"),
           "UPLOADER_S3__BUCKET": bucket, "UPLOADER_S3__ENDPOINT_URL": s3_server.endpoint_url,
           "UPLOADER_S3__ADDRESSING_STYLE": "path", "UPLOADER_SOURCE__SETTLE_SECONDS": "0.2",
           # The image serves on 0.0.0.0:9100; here a free loopback port stands in.
           "UPLOADER_METRICS__LISTEN": f"127.0.0.1:{free_port()}"}
    command = [*entrypoint[:-1], str(config)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: object_bytes(s3, bucket, "incoming/hello.txt"),
                   what="the file to be uploaded")
        health = [*healthcheck[:-1], str(config)]
        wait_until(lambda: subprocess.run(health, env=env, capture_output=True,
                                          check=False).returncode == 0,
                   what="the HEALTHCHECK command to pass")
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    finally:
        process.kill()
    assert process.returncode == 0
    assert subprocess.run(health, env=env, capture_output=True, check=False).returncode == 1
    first = json.loads(output.splitlines()[0])  # the example logs JSON lines
    assert {"time", "level", "message"} <= set(first)
