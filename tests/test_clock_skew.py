"""A local clock far from the server's: S3 refuses every signature (RequestTimeTooSkewed);
the refusal's Date teaches the signer the server's time and the retry goes through.

The end-to-end tests run the uploader under libfaketime (`faketime`, Debian), so only its
process has the wrong clock; SeaweedFS refuses skews beyond 15 minutes, as S3 does."""

from __future__ import annotations

import datetime
import email.utils
import glob
import os
import subprocess
import time

import botocore.auth
import pytest

from daemon_harness import UPLOADER, daemon_config, daemon_factory, wait_until  # noqa: F401
from daemon_harness import keys_in, object_bytes
from ops_harness import endpoint, scrape
from uploader import clock_skew
from uploader.errors import PermanentError, TransientError
from uploader.s3errors import classify_http

MiB = 1024 * 1024
# Preloaded directly (not through the `faketime` command, which does not pass SIGTERM on).
LIBFAKETIME = next(iter(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")), "")


@pytest.fixture(autouse=True)
def local_clock():
    clock_skew.forget()
    yield
    clock_skew.forget()


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def test_a_skew_refusal_teaches_the_offset_and_the_signer_uses_it():
    now = time.time()
    error = classify_http(status=403, code="RequestTimeTooSkewed", message="too large",
                          what="PUT s3://b/k", server_date=http_date(now + 3600))
    assert isinstance(error, TransientError)
    assert 3598 <= clock_skew.offset_seconds() <= 3601
    clock_skew.install()
    clock_skew.install()  # idempotent: wrapped once, so the offset is added once
    signed_at = botocore.auth.get_current_datetime()  # naive UTC, as botocore's own
    assert signed_at.tzinfo is None
    skew = signed_at.replace(tzinfo=datetime.timezone.utc).timestamp() - time.time()
    assert 3597 <= skew <= 3602


def test_a_few_seconds_of_difference_or_no_date_teach_nothing():
    now = time.time()
    assert not clock_skew.learn(http_date(now + 1), local_now=lambda: now)
    assert not clock_skew.learn(None)
    assert not clock_skew.learn("not a date")
    assert clock_skew.offset_seconds() == 0


def test_a_bodiless_403_far_from_the_server_clock_is_taken_for_a_skew_and_a_near_one_is_not():
    """A HEAD's refusal has no body to name its cause (botocore calls it "403")."""
    now = time.time()
    near = classify_http(status=403, code="403", message="Forbidden", what="HEAD s3://b",
                         server_date=http_date(now + 30))
    assert isinstance(near, PermanentError) and clock_skew.offset_seconds() == 0
    far = classify_http(status=403, code="403", message="Forbidden", what="HEAD s3://b",
                        server_date=http_date(now - 7200))
    assert isinstance(far, TransientError) and far.code == "RequestTimeTooSkewed"
    assert -7202 <= clock_skew.offset_seconds() <= -7198
    # Corrected, the next refusal is taken for what it says.
    again = classify_http(status=403, code="403", message="Forbidden", what="HEAD s3://b",
                          server_date=http_date(now - 7200))
    assert isinstance(again, PermanentError)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("offset", ["+20m", "-3h"])
def test_a_one_shot_on_a_machine_with_a_wrong_clock_uploads_everything(
        offset, s3_server, s3, bucket, tmp_path):
    small, large = os.urandom(1000), os.urandom(12 * MiB)  # one PUT; a multipart upload
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "small.bin").write_bytes(small)
    (folder / "large.bin").write_bytes(large)
    config = tmp_path / "uploader.yaml"
    config.write_text("transfer: {multipart_threshold: 8MiB, part_size: 5MiB}\n"
                      f"s3: {{bucket: {bucket}, addressing_style: path}}\n")
    result = subprocess.run(
        ["faketime", "-f", offset, UPLOADER, "upload", "--config", str(config),
         "--endpoint-url", s3_server.endpoint_url, str(folder), f"s3://{bucket}/skew/"],
        env={**os.environ, **s3_server.env()}, capture_output=True, text=True, timeout=80,
        check=False)
    assert result.returncode == 0, result.stderr
    assert object_bytes(s3, bucket, "skew/small.bin") == small
    assert object_bytes(s3, bucket, "skew/large.bin") == large
    assert result.stderr.count("the local clock is") == 1, result.stderr
    assert "requests are signed with the server's time from now on" in result.stderr


@pytest.mark.timeout(90)
def test_the_daemon_on_a_machine_with_a_wrong_clock_gets_ready_and_uploads(
        daemon_config, daemon_factory, s3, bucket, tmp_path):
    """Its first request may be the readiness probe's HeadBucket, whose 403 has no body."""
    assert LIBFAKETIME, "libfaketime is missing (Debian: faketime)"
    config = daemon_config(janitor={"enabled": False})
    daemon = daemon_factory(config, launcher=["env", "FAKETIME=-1h", f"LD_PRELOAD={LIBFAKETIME}",
                                              UPLOADER])
    base = endpoint(daemon)

    def ready() -> bool:
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as answer:
                return answer.status == 200
        except urllib.error.HTTPError:
            return False

    wait_until(ready, what="/readyz 200")
    offset = scrape(base).value("uploader_clock_offset_seconds")
    assert 3598 <= offset <= 3601, offset  # the server is an hour ahead of this process
    (tmp_path / "outbox" / "late.txt").write_text("uploaded with a clock an hour behind")
    wait_until(lambda: "incoming/late.txt" in keys_in(s3, bucket), what="the upload")
    assert daemon.terminate() == 0
    assert "the local clock is 3600 s behind" in daemon.log() or \
        "the local clock is 3599 s behind" in daemon.log()
