"""A network or FUSE filesystem that fails reads for a while (a soft-mounted NFS server away
answers EIO, a file replaced on the server leaves a stale handle): its files wait, pending
with the reason, and go up once it reads again; none is failed for it.

The filesystem is real: `faulty_fs.py`, a FUSE mirror of a directory whose reads fail with a
chosen errno while the test says so, mounted by the `faulty_mount` fixture."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon_harness import (  # noqa: F401
    daemon_config,
    daemon_factory,
    journal_rows,
    keys_in,
    object_bytes,
    wait_until,
)

MiB = 1024 * 1024


@dataclass
class FaultyMount:
    backing: Path  # write files here; they appear under `mount`
    mount: Path
    control: Path

    def fail(self, errno_name: str) -> None:
        self.control.write_text(errno_name)

    def heal(self) -> None:
        self.control.write_text("")


@pytest.fixture
def faulty_mount(tmp_path: Path) -> Iterator[FaultyMount]:
    fs = FaultyMount(backing=tmp_path / "backing", mount=tmp_path / "mnt",
                     control=tmp_path / "fault")
    fs.backing.mkdir()
    fs.mount.mkdir()
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("faulty_fs.py")),
                               str(fs.backing), str(fs.mount), str(fs.control)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: os.path.ismount(fs.mount) or server.poll() is not None,
                   timeout=10, what="the FUSE mount")
        assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
        yield fs
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(fs.mount)], check=False,
                       stderr=subprocess.DEVNULL)
        server.terminate()
        server.wait(timeout=10)
        if server.stderr is not None:
            server.stderr.close()


def test_the_faulty_filesystem_fails_reads_only_while_told(faulty_mount):
    (faulty_mount.backing / "a.txt").write_text("hello")
    seen = faulty_mount.mount / "a.txt"
    assert seen.read_text() == "hello"
    faulty_mount.fail("EIO")
    with pytest.raises(OSError, match="Input/output error"):
        seen.read_text()
    assert seen.stat().st_size == 5  # stat still answers, as an attribute cache does
    faulty_mount.heal()
    assert seen.read_text() == "hello"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault, reason", [("EIO", "Input/output error"),
                                           ("ESTALE", "Stale file handle")])
def test_files_on_a_filesystem_failing_reads_wait_and_go_up_once_it_reads_again(
        fault, reason, faulty_mount, daemon_config, daemon_factory, s3, bucket):
    small, large = os.urandom(1000), os.urandom(12 * MiB)  # one PUT; a multipart upload
    (faulty_mount.backing / "small.bin").write_bytes(small)
    (faulty_mount.backing / "large.bin").write_bytes(large)
    faulty_mount.fail(fault)
    config = daemon_config(source={"directory": str(faulty_mount.mount), "settle_seconds": 0.2},
                           retry={"retry_later_seconds": 0.3}, janitor={"enabled": False})
    state = Path(config.read_text().split("state_dir: ")[1].split("\n")[0])
    daemon = daemon_factory(config)
    paths = [str(faulty_mount.mount / name) for name in ("small.bin", "large.bin")]

    def settled_states() -> dict[str, tuple[str, str | None]]:
        rows = journal_rows(state)
        return {path: (rows[path][0], rows[path][2]) for path in paths
                if path in rows and rows[path][0] != "uploading"}

    wait_until(lambda: len(settled_states()) == 2, what="both files tried")
    time.sleep(1)  # several retries later: still waiting, none given up on
    for path, (status, error) in settled_states().items():
        assert status == "pending", (path, status, error)
        assert reason in (error or ""), (path, error)
    assert keys_in(s3, bucket) == set()

    faulty_mount.heal()
    wait_until(lambda: keys_in(s3, bucket) == {"incoming/small.bin", "incoming/large.bin"},
               what="both files uploaded once the filesystem reads again")
    assert object_bytes(s3, bucket, "incoming/small.bin") == small
    assert object_bytes(s3, bucket, "incoming/large.bin") == large
    assert daemon.terminate() == 0
    assert f"read failed: {reason}; tried again later" in daemon.log()
