"""Running `uploader` as a user would: a subprocess with a YAML config.

Fixtures:
  * ``daemon_config`` (function): ``make(**overrides) -> Path`` writes a YAML
    config for a fresh watched directory and state dir, pointed at the shared
    SeaweedFS (or at a given endpoint) and the test's bucket.
  * ``daemon_factory`` (function): ``start(config_path, env=None) -> Daemon``;
    every daemon still running at teardown is killed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

__all__ = ["Daemon", "daemon_config", "daemon_factory", "journal_rows", "keys_in", "object_bytes",
           "run_cli", "wait_until", "UPLOADER"]

UPLOADER = str(Path(sys.executable).with_name("uploader"))
# Root reads any file; without these two capabilities it obeys file modes like anyone.
ROOT_WITHOUT_READ_OVERRIDE = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                              "--bounding-set=-dac_override,-dac_read_search"]


def wait_until(predicate: Callable[[], Any], *, timeout: float = 30.0,
               interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def terminate(self, *, timeout: float = 60.0) -> int:
        """SIGTERM, as a container runtime would; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def wait_for_log(self, text: str, *, timeout: float = 30.0) -> None:
        wait_until(lambda: text in self.log(), timeout=timeout, what=f"log line {text!r}")


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([UPLOADER, *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


def object_bytes(s3, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def keys_in(s3, bucket: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def journal_rows(state_dir: Path) -> dict[str, tuple[str, int, str | None]]:
    """path -> (status, attempts, error); empty while the daemon has not created it yet."""
    path = state_dir / "journal.sqlite3"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as db:
        try:
            rows = db.execute("SELECT path, status, attempts, error FROM files").fetchall()
        except sqlite3.OperationalError:  # the daemon is still creating the schema
            return {}
    return {path: (status, attempts, error) for path, status, attempts, error in rows}



@pytest.fixture
def daemon_config(tmp_path: Path, s3_server: Any, bucket: str) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(**overrides: Any) -> Path:
        config: dict[str, Any] = {
            "source": {"directory": str(tmp_path / "outbox"), "settle_seconds": 0.5,
                       "rescan_interval_seconds": 60},
            "s3": {"bucket": bucket, "prefix": "incoming/", "region": s3_server.region,
                   "endpoint_url": s3_server.endpoint_url, "addressing_style": "path"},
            "transfer": {"multipart_threshold": "5MiB", "part_size": "5MiB"},
            "retry": {"max_attempts": 3, "backoff_base_seconds": 0.05},
            "state_dir": str(tmp_path / "state"),
            "shutdown_grace_seconds": 10,
            # Port 0: a free port each (logged); several daemons may run at once.
            "metrics": {"listen": "127.0.0.1:0"},
        }
        for section, values in overrides.items():
            if isinstance(values, dict) and isinstance(config.get(section), dict):
                config[section].update(values)
            else:
                config[section] = values
        Path(config["source"]["directory"]).mkdir(parents=True, exist_ok=True)
        path = tmp_path / f"uploader-{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    return make


@pytest.fixture
def daemon_factory(tmp_path: Path, s3_server: Any) -> Iterator[Callable[..., Daemon]]:
    daemons: list[Daemon] = []

    def start(config_path: Path, *, env: dict[str, str] | None = None,
              honour_permissions: bool = False, subcommand: str = "run",
              open_files: int | None = None, launcher: list[str] | None = None) -> Daemon:
        """`open_files`: the process's limit on open files (soft and hard), as `ulimit -n`.
        `launcher`: what runs in place of the `uploader` script, given the same arguments."""
        log_path = tmp_path / f"daemon-{len(daemons)}.log"
        full_env = {**os.environ, **s3_server.env(), **(env or {})}
        with log_path.open("wb") as log_file:
            command = [*(launcher or [UPLOADER]), subcommand, "--config", str(config_path)]
            if honour_permissions and os.geteuid() == 0:
                command = [*ROOT_WITHOUT_READ_OVERRIDE, *command]
            if open_files is not None:
                command = ["prlimit", f"--nofile={open_files}:{open_files}", "--", *command]
            process = subprocess.Popen(command, env=full_env, stdout=log_file,
                                       stderr=subprocess.STDOUT)
        daemon = Daemon(process=process, log_path=log_path, config_path=config_path)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.kill()
