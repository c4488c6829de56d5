"""Logs: one JSON object per line with the file's context, and never a credential or signature."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
import yaml

from daemon_harness import daemon_config, daemon_factory, run_cli, wait_until  # noqa: F401
from daemon_harness import keys_in
from uploader import logfilters
from uploader.logfilters import (
    REDACTED,
    ContextFilter,
    RedactingFilter,
    Redactor,
    bind_log_context,
    unbind_log_context,
)
from uploader.logs import JsonFormatter

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlLWJ5dGVz"

# What botocore, aiobotocore and S3 really print at DEBUG (shapes copied from their logs).
LIBRARY_LINES = [
    "Sending http request: <AWSPreparedRequest stream_output=False, method=PUT, "
    "url=http://127.0.0.1:8333/b/k, headers={'X-Amz-Date': b'20240101T000000Z', "
    f"'Authorization': b'AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20240101/us-east-1/s3/"
    "aws4_request, SignedHeaders=host;x-amz-date, "
    f"Signature={SIGNATURE}', 'X-Amz-Security-Token': b'FwoGZXIvYXdzEBYaDHqa0AP1kXyz'}}>",
    f"Signature:\n{SIGNATURE}",
    "CanonicalRequest:\nPUT\n/b/k\n\nhost:127.0.0.1\nx-amz-security-token:FwoGZXIvYXdzEBYaDH\n",
    "GET https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
    f"{ACCESS_KEY}%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Expires=3600"
    f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}",
    f"https://b.s3.amazonaws.com/k?AWSAccessKeyId={ACCESS_KEY}&Signature=abcDEF%2Bghi%3D"
    "&Expires=1700000000",
    "Response body:\nb'<Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>"
    f"{ACCESS_KEY}</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256\\n20240101</StringToSign>"
    f"<SignatureProvided>{SIGNATURE}</SignatureProvided></Error>'",
    f"authorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20240101, Signature={SIGNATURE}",
    f"{{'SecretAccessKey': '{SECRET}', 'SessionToken': 'FwoGZXIvYXdzEBYaDH'}}",
    f"aws_secret_access_key={SECRET[::-1]}",
    # AssumeRoleWithWebIdentity (EKS/IRSA) at DEBUG, and SSO's bearer token header.
    "Making request for OperationModel(name=AssumeRoleWithWebIdentity) with params: "
    f"{{'body': {{'RoleArn': 'arn:aws:iam::1:role/r', 'WebIdentityToken': '{JWT}'}}}}",
    f"Action=AssumeRoleWithWebIdentity&WebIdentityToken={JWT}&Version=2011-06-15",
    "headers={'x-amz-sso_bearer_token': 'aoaAAAAAGXyz0123456789abcdefSECRET'}",
    f"token file read: {JWT}",
]


@pytest.mark.parametrize("line", LIBRARY_LINES)
def test_redactor_removes_every_secret_shape(line):
    clean = Redactor(secrets=[SECRET], access_keys=[ACCESS_KEY])(line)
    for secret in (SECRET, SECRET[::-1], ACCESS_KEY, SIGNATURE, "FwoGZXIvYXdzEBYaDH",
                   "abcDEF%2Bghi", "Credential=AKIA", "eyJ", "aoaAAAAAGXyz"):
        assert secret not in clean
    assert REDACTED in clean or "AKIA…MPLE" in clean


def test_every_pattern_match_names_a_word_the_quick_test_looks_for():
    """The patterns run only on a line the quick test picks out: each thing a pattern
    redacts must hold one of its words, or a line carrying only that would leak."""
    lines = [*LIBRARY_LINES, *(line.upper() for line in LIBRARY_LINES),
             *(line.swapcase() for line in LIBRARY_LINES)]
    for pattern, _ in logfilters._PATTERNS:
        matches = [m.group(0) for line in lines for m in pattern.finditer(line)]
        assert matches, f"no line above shows what {pattern.pattern!r} is for"
        for match in matches:
            assert logfilters._MIGHT_NAME_A_SECRET.search(match.lower()), match


@pytest.mark.parametrize("line", [
    f"reading {SECRET} from the environment",
    f"uploaded as {ACCESS_KEY} to s3://b/k",
    "uploaded as AKIAZZZZZZZZZZZZZZZZ to s3://b/k",  # a key ID nobody registered
    "SIGNATURE=5d672d79c15b13162d9279b0855cfba6789a",
    "X-AMZ-CREDENTIAL=AKIAZZZZ/20240101/us-east-1",
])
def test_redactor_cleans_lines_without_the_usual_context(line):
    clean = Redactor(secrets=[SECRET], access_keys=[ACCESS_KEY])(line)
    for secret in (SECRET, ACCESS_KEY, "AKIAZZZZZZZZZZZZZZZZ", "5d672d79c15b", "AKIAZZZZ/"):
        assert secret not in clean


def test_a_secret_inside_a_longer_one_leaves_no_tail():
    redactor = Redactor(secrets=[SECRET[:12]])
    redactor.register(SECRET)
    assert redactor(f"key {SECRET} end") == f"key {REDACTED} end"


def test_redactor_leaves_ordinary_text_alone():
    text = ("upload failed: PUT s3://b/k: SignatureDoesNotMatch (HTTP 403): The request "
            "signature we calculated does not match; check the AWS secret key")
    assert Redactor(secrets=[SECRET])(text) == text


def test_json_lines_carry_context_and_redacted_exceptions(capsys):
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter(Redactor(secrets=[SECRET])))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test_logs.context")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = bind_log_context(file="/data/outbox/a.txt", key="incoming/a.txt")
        try:
            logger.warning("retrying after %s", "SlowDown", extra={"attempt": 2,
                                                                    "error_code": "SlowDown"})
            try:
                raise RuntimeError(f"boom with {SECRET}")
            except RuntimeError:
                logger.exception("failed")
        finally:
            unbind_log_context(token)
        logger.warning("after the file")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["file"] == "/data/outbox/a.txt" and lines[0]["key"] == "incoming/a.txt"
    assert lines[0]["attempt"] == 2 and lines[0]["error_code"] == "SlowDown"
    assert SECRET not in lines[1]["exception"] and REDACTED in lines[1]["exception"]
    assert "file" not in lines[2]


def assert_no_secrets(text: str, *, secrets: list[str], access_key: str) -> None:
    for secret in secrets:
        assert secret not in text, "a secret key reached the log"
    assert access_key not in text, "a whole access key ID reached the log"
    assert "Credential=AKIA" not in text and "AWS4-HMAC-SHA256 Credential" not in text
    leaks = re.findall(r"(?i)(?:x-amz-)?signature(?>=|:(?:\\n|\s)*)(?!\[REDACTED\])\S{0,20}",
                       text)
    assert not leaks, f"signatures in the log: {leaks[:3]}"
    leaks = re.findall(r"(?i)authorization['\"]?(?>\s*[:=]\s*b?['\"]?)(?!\[REDACTED\])\S{0,20}",
                       text)
    assert not leaks, f"Authorization values in the log: {leaks[:3]}"


@pytest.mark.timeout(90)
def test_no_secret_reaches_the_logs_with_debug_on(daemon_config, daemon_factory, s3_server, s3,
                                                  bucket, tmp_path):
    debug = {"level": "DEBUG", "library_level": "DEBUG", "format": "json"}
    config = daemon_config(logging=debug, janitor={"enabled": False})
    outbox = tmp_path / "outbox"
    daemon = daemon_factory(config)
    daemon.wait_for_log("watching")
    for i in range(3):
        (outbox / f"file-{i}.txt").write_text(f"content {i}")
    wait_until(lambda: len(keys_in(s3, bucket)) == 3, what="three uploads")
    assert daemon.terminate() == 0
    daemon_log = daemon.log()

    # A failing run too: a wrong secret, so S3's errors and ours are logged as well.
    wrong = "wrong-secret-" + "z" * 27
    oneshot_config = tmp_path / "oneshot.yaml"
    oneshot_config.write_text(yaml.safe_dump({
        "s3": {"bucket": bucket, "addressing_style": "path", "region": s3_server.region},
        "logging": debug, "retry": {"max_attempts": 1}}))
    single = tmp_path / "single.txt"
    single.write_text("single")
    failed = run_cli("upload", "--config", str(oneshot_config), "--endpoint-url",
                     s3_server.endpoint_url, str(single), f"s3://{bucket}/x/",
                     env={**s3_server.env(), "AWS_SECRET_ACCESS_KEY": wrong})
    assert failed.returncode == 1

    for output in (daemon_log, failed.stderr):
        lines = [json.loads(line) for line in output.splitlines()]  # one JSON object a line
        assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
        assert any(line["logger"].startswith(("botocore", "aiobotocore")) and
                   line["level"] == "debug" for line in lines), "no library DEBUG lines"
        assert REDACTED in output
        assert_no_secrets(output, secrets=[s3_server.secret_key, wrong],
                          access_key=s3_server.access_key)
    uploaded = [json.loads(line) for line in daemon_log.splitlines()
                if '"uploaded ' in line and '"logger": "uploader.pipeline"' in line]
    assert len(uploaded) == 3
    assert all(line["file"].startswith(str(outbox)) and line["key"].startswith("incoming/")
               for line in uploaded)
    failure = [json.loads(line) for line in failed.stderr.splitlines()
               if '"upload failed' in line]
    assert failure and failure[0]["error_code"] and failure[0]["key"] == "x/single.txt"


@pytest.mark.timeout(60)
def test_files_deferred_again_and_again_are_summed_up_not_logged_a_line_each(
        daemon_config, daemon_factory, bucket, tmp_path):
    """With the bucket missing, every file is deferred and tried again every
    `retry_later_seconds`: each attempt was a WARNING line (40 files every 0.2 s here; a
    backlog of 100,000 every 30 s is 3,300 lines a second). Now the first is logged, and one
    summary per `logging.repeats_summary_seconds` counts the rest."""
    config = daemon_config(s3={"bucket": f"{bucket}-absent"},
                           retry={"retry_later_seconds": 0.2}, janitor={"enabled": False},
                           logging={"format": "json", "repeats_summary_seconds": 1})
    for i in range(40):
        (tmp_path / "outbox" / f"f{i:02d}.txt").write_text(f"file {i}")
    daemon = daemon_factory(config)

    def summaries() -> list[dict]:
        return [line for line in records(daemon.log()) if "repeats" in line]

    wait_until(lambda: len(summaries()) >= 3, what="three summaries")
    assert daemon.terminate() == 0
    deferred = [line for line in records(daemon.log()) if "NoSuchBucket" in line["message"]]
    in_full = [line for line in deferred if "repeats" not in line]
    assert len(in_full) == 1, in_full  # the first; the rest are counted
    assert in_full[0]["level"] == "warning" and in_full[0]["error_code"] == "NoSuchBucket"
    counted = [line["repeats"] for line in summaries()]
    assert all(count >= 40 for count in counted[:3]), counted  # every file, at least once
    assert summaries()[0]["message"].startswith(
        f"{counted[0]} more like this in the last 1 s, the latest: upload deferred: ")
    assert summaries()[0]["file"].startswith(str(tmp_path / "outbox"))


def records(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]
