"""One state_dir, one instance: a second `uploader run` or `enqueue` on it is refused,
naming the holder; the first goes on; a killed holder leaves no stale lock."""

from __future__ import annotations

import pytest
import yaml

from daemon_harness import (  # noqa: F401
    daemon_config,
    daemon_factory,
    object_bytes,
    run_cli,
    wait_until,
)


@pytest.mark.timeout(120)
def test_a_second_instance_on_one_state_dir_is_refused_and_a_kill_leaves_no_lock(
        daemon_config, daemon_factory, s3_server, s3, bucket, tmp_path):
    config = daemon_config(state_dir_lock_wait_seconds=0)  # refused at once
    outbox = tmp_path / "outbox"
    first = daemon_factory(config)
    wait_until(lambda: "watching" in first.log(), what="the first daemon watching")

    second = run_cli("run", "--config", str(config), env=s3_server.env(), timeout=60)
    assert second.returncode == 2, second.stderr
    assert str(tmp_path / "state") in second.stderr
    assert f"uploader run, pid {first.process.pid}" in second.stderr
    assert "each instance needs its own state_dir" in second.stderr

    # `enqueue` with the same state_dir (the fleet's one-YAML mistake) is refused before
    # it reaches the queue (this one does not exist).
    enqueue_config = tmp_path / "enqueue.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["source"]["queue_url"] = "http://127.0.0.1:9/000000000000/absent"
    settings["state_dir_lock_wait_seconds"] = 1  # waits, then gives up
    enqueue_config.write_text(yaml.safe_dump(settings))
    enqueue = run_cli("enqueue", "--config", str(enqueue_config), env=s3_server.env(),
                      timeout=60)
    assert enqueue.returncode == 2, enqueue.stderr
    assert f"pid {first.process.pid}" in enqueue.stderr
    assert "waiting up to 1 s for it to stop" in enqueue.stderr
    assert "(waited 1 s for it to stop)" in enqueue.stderr

    # The first instance was not disturbed.
    (outbox / "after.txt").write_bytes(b"taken by the first")
    wait_until(lambda: object_bytes(s3, bucket, "incoming/after.txt"), what="after.txt")

    first.process.kill()  # no clean-up of any kind: the kernel drops the lock
    first.process.wait(timeout=30)
    third = daemon_factory(config)
    (outbox / "later.txt").write_bytes(b"taken by the third")
    wait_until(lambda: object_bytes(s3, bucket, "incoming/later.txt"), what="later.txt")
    assert third.terminate() == 0


@pytest.mark.timeout(120)
def test_in_a_rolling_update_the_new_instance_waits_for_the_old_one_to_stop(
        daemon_config, daemon_factory, s3, bucket, tmp_path):
    """The new instance starts while the old one still finishes its uploads: it used to
    exit 2 at once (and be restarted with a growing back-off); it waits for the lock,
    and takes over when the old one is gone. SIGTERM while waiting stops it cleanly."""
    config = daemon_config(state_dir_lock_wait_seconds=60)
    outbox = tmp_path / "outbox"
    old = daemon_factory(config)
    wait_until(lambda: "watching" in old.log(), what="the old instance watching")

    impatient = daemon_factory(config)
    wait_until(lambda: "waiting up to 60 s for it to stop" in impatient.log(),
               what="the impatient one waiting")
    assert impatient.terminate() == 0  # SIGTERM while waiting
    assert "stopped while waiting for state_dir" in impatient.log()

    new = daemon_factory(config)
    wait_until(lambda: "waiting up to 60 s for it to stop" in new.log(), what="the new waiting")
    assert f"uploader run, pid {old.process.pid}" in new.log()
    assert new.process.poll() is None and "watching" not in new.log()
    assert old.terminate() == 0
    wait_until(lambda: "watching" in new.log(), what="the new instance taking over")
    (outbox / "after.txt").write_bytes(b"taken by the new instance")
    wait_until(lambda: object_bytes(s3, bucket, "incoming/after.txt"), what="after.txt")
    assert new.terminate() == 0
