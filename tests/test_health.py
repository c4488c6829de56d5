"""/healthz, /readyz and `uploader health`, against real daemons and real credential checks."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from daemon_harness import daemon_config, daemon_factory, run_cli, wait_until  # noqa: F401
from daemon_harness import object_bytes
from ops_harness import endpoint, free_port, get

# A credential_process (the AWS chain's own way to rotate credentials): it prints the
# key pair in creds.json with an expiry 15 min + 1 s ahead, so the SDK refreshes it
# (runs this again) about every second, and a rotation reaches the daemon live.
CREDENTIAL_PROCESS = """
import datetime, json, sys
pair = json.load(open(sys.argv[1]))
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=15, seconds=1)
print(json.dumps({"Version": 1, **pair, "Expiration": expires.isoformat()}))
"""


def rotating_credentials(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(environment for the daemon, the creds.json file its credentials come from)."""
    script, pair, aws_config = (tmp_path / "creds.py", tmp_path / "creds.json",
                                tmp_path / "aws-config")
    script.write_text(CREDENTIAL_PROCESS)
    aws_config.write_text(f"[default]\ncredential_process = {sys.executable} {script} {pair}\n")
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
           "AWS_CONFIG_FILE": str(aws_config)}
    return env, pair


def use_key(pair: Path, access_key: str, secret_key: str) -> None:
    pair.write_text(json.dumps({"AccessKeyId": access_key, "SecretAccessKey": secret_key}))


@pytest.mark.timeout(60)
def test_readiness_follows_the_credentials(daemon_config, daemon_factory, s3_server, s3, bucket,
                                           tmp_path):
    env, pair = rotating_credentials(tmp_path)
    use_key(pair, s3_server.access_key, "not-the-secret-" + "x" * 25)
    config = daemon_config(metrics={"listen": f"127.0.0.1:{free_port()}"},
                           janitor={"enabled": False})
    daemon = daemon_factory(config, env=env)
    base = endpoint(daemon)

    status, text = get(f"{base}/healthz")
    assert status == 200 and text.startswith("ok"), text  # alive, whatever S3 says
    status, text = get(f"{base}/readyz")
    assert status == 503, text
    assert "s3: HeadBucket" in text and "credentials were refused" in text
    assert "journal: ok" in text
    health = run_cli("health", "--config", str(config))
    assert health.returncode == 1
    assert "not ready" in health.stderr and "credentials were refused" in health.stderr

    use_key(pair, s3_server.access_key, s3_server.secret_key)  # the key is rotated in
    wait_until(lambda: get(f"{base}/readyz")[0] == 200, what="ready with the right secret")
    health = run_cli("health", "--config", str(config))
    assert health.returncode == 0, health.stderr
    assert health.stdout.startswith("ready")

    # Least privilege: a key that may write objects but not list (HeadBucket: 403) uploads
    # fine, so the daemon is ready.
    use_key(pair, s3_server.writer_access_key, s3_server.writer_secret_key)
    (tmp_path / "outbox" / "written.txt").write_text("by a write-only key")
    wait_until(lambda: object_bytes(s3, bucket, "incoming/written.txt"), what="the upload")
    status, text = get(f"{base}/readyz")
    assert status == 200, text

    use_key(pair, s3_server.access_key, "revoked-" + "y" * 32)
    wait_until(lambda: get(f"{base}/readyz")[0] == 503, what="not ready once revoked")
    assert daemon.terminate() == 0


@pytest.mark.timeout(60)
def test_readiness_fails_when_the_journal_cannot_be_written(daemon_config, daemon_factory,
                                                            tmp_path):
    config = daemon_config(janitor={"enabled": False})
    daemon = daemon_factory(config)
    base = endpoint(daemon)
    wait_until(lambda: get(f"{base}/readyz")[0] == 200, what="ready")
    shutil.rmtree(tmp_path / "state")  # the state volume went away
    status, text = wait_until(lambda: (r := get(f"{base}/readyz"))[0] == 503 and r,
                              what="not ready without a state_dir")
    assert "s3: ok" in text
    assert "journal: state_dir" in text and "is not writable" in text
    daemon.kill()


@pytest.mark.timeout(60)
def test_readiness_fails_while_the_watched_folder_is_gone(daemon_config, daemon_factory, s3,
                                                          bucket, tmp_path):
    """The folder removed (a volume unmounted, rm -rf): not ready, saying why, until a folder
    is back at the path; then its files go up."""
    config = daemon_config(janitor={"enabled": False}, source={"rescan_interval_seconds": 3600})
    outbox = tmp_path / "outbox"
    daemon = daemon_factory(config)
    base = endpoint(daemon)
    wait_until(lambda: get(f"{base}/readyz")[0] == 200, what="ready")
    shutil.rmtree(outbox)
    status, text = wait_until(lambda: (r := get(f"{base}/readyz"))[0] == 503 and r,
                              what="not ready without the watched folder")
    assert "s3: ok" in text and "journal: ok" in text
    assert f"source: {outbox} is gone since" in text
    assert "uploader_source_available 0.0" in get(f"{base}/metrics")[1]
    outbox.mkdir()
    (outbox / "back.txt").write_bytes(b"written once the folder was back")
    wait_until(lambda: get(f"{base}/readyz")[0] == 200, what="ready again")
    assert "uploader_source_available 1.0" in get(f"{base}/metrics")[1]
    wait_until(lambda: object_bytes(s3, bucket, "incoming/back.txt") is not None,
               what="the file in the new folder uploaded")
    assert daemon.terminate() == 0
    log = daemon.log()
    assert f"{outbox} is gone" in log and f"{outbox} is back" in log


@pytest.mark.timeout(30)
def test_health_exits_1_with_the_reason_when_no_daemon_answers(daemon_config, tmp_path):
    port = free_port()
    result = run_cli("health", "--config", str(daemon_config(
        metrics={"listen": f"0.0.0.0:{port}"})))
    assert result.returncode == 1
    assert f"cannot reach the daemon at http://127.0.0.1:{port}/readyz" in result.stderr

    result = run_cli("health", "--config", str(daemon_config(metrics={"enabled": False})))
    assert result.returncode == 1
    assert "metrics.enabled is false" in result.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("source: [unclosed\n")
    result = run_cli("health", "--config", str(broken))
    assert result.returncode == 1  # never 2: Docker reserves it
    assert "invalid YAML" in result.stderr
