"""after_upload: delete and move happen only once the object is verified in S3."""

from __future__ import annotations

import pytest

from daemon_harness import daemon_config, daemon_factory, wait_until  # noqa: F401
from daemon_harness import object_bytes
from test_failures import status_of


@pytest.mark.timeout(60)
def test_delete_after_verified_upload(daemon_config, daemon_factory, tmp_path, s3, bucket):
    config = daemon_config(after_upload="delete")
    source = tmp_path / "outbox" / "sub" / "gone-after.txt"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"upload me, then delete me")
    daemon = daemon_factory(config)
    wait_until(lambda: not source.exists(), what="the source to be deleted")
    assert object_bytes(s3, bucket, "incoming/sub/gone-after.txt") == b"upload me, then delete me"
    assert status_of(tmp_path / "state", source)[0] == "uploaded"
    assert daemon.terminate() == 0


@pytest.mark.timeout(60)
def test_move_keeps_the_relative_path(daemon_config, daemon_factory, tmp_path, s3, bucket):
    done = tmp_path / "done"
    config = daemon_config(after_upload="move", move_to=str(done))
    source = tmp_path / "outbox" / "a" / "b.bin"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"moved")
    daemon = daemon_factory(config)
    wait_until(lambda: (done / "a" / "b.bin").exists(), what="the moved file")
    assert not source.exists()
    assert (done / "a" / "b.bin").read_bytes() == b"moved"
    assert object_bytes(s3, bucket, "incoming/a/b.bin") == b"moved"
    assert daemon.terminate() == 0


@pytest.mark.timeout(60)
def test_failed_upload_never_moves_the_source(daemon_config, daemon_factory, tmp_path):
    done = tmp_path / "done"
    config = daemon_config(after_upload="move", move_to=str(done))
    source = tmp_path / "outbox" / "stay.txt"
    source.write_bytes(b"stay")
    daemon = daemon_factory(config, env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    wait_until(lambda: status_of(tmp_path / "state", source), what="a final state")
    assert status_of(tmp_path / "state", source)[0] == "failed"
    assert daemon.terminate() == 0
    assert source.read_bytes() == b"stay"
    assert not done.exists() or not any(done.iterdir())
