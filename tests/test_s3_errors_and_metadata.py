"""Which S3 errors are worth retrying, and user metadata S3 cannot store as given.

The classification is exercised through `translate` (botocore's errors) and
`error_from_response` (the aiohttp data path's), the retry consequences on a
fake clock, and the metadata refusal end to end against the real server,
through the fault proxy, which proves nothing was sent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, HTTPClientError

from uploader.breaker import BreakerState, CircuitBreaker
from uploader.clock import FakeClock
from uploader.config import validate_config
from uploader.errors import ConnectionFailure, PermanentError, TransientError
from uploader.journal import FAILED, Journal
from uploader.pipeline import Outcome
from uploader.retry import RetryPolicy
from uploader.s3.metadata import MAX_METADATA_BYTES, MetadataError, check_metadata
from uploader.s3.wire import error_from_response
from uploader.s3errors import translate
from uploader.wiring import services

from test_retry import Script

MiB = 1024 * 1024


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "msg"},
                        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}}},
                       "PutObject")


def error_document(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>msg</Message></Error>".encode()


def policy(**kwargs) -> RetryPolicy:
    defaults = {"max_attempts": 5, "base_seconds": 0.1, "cap_seconds": 1.0}
    return RetryPolicy(**{**defaults, **kwargs}, clock=FakeClock(autoadvance=True),
                       rng=lambda: 1.0)


# ------------------------------------------------------------ classification
WORTH_RETRYING = [
    ("RequestTimeTooSkewed", 403),  # our clock was off (NTP step, resumed VM)
    ("IncompleteBody", 400),  # the body was cut off on the network
    ("ConditionalRequestConflict", 409),  # two If-None-Match writes raced
    ("OperationAborted", 409),  # "a conflicting conditional operation ... Try again"
    ("TokenRefreshRequired", 400),  # as ExpiredToken: the credentials refresh
]


@pytest.mark.parametrize(("code", "status"), WORTH_RETRYING)
def test_errors_a_later_attempt_can_cure_are_transient_on_both_data_paths(code, status):
    from_botocore = translate(client_error(code, status), what="PUT s3://b/k")
    from_aiohttp = error_from_response(status=status, reason="", headers={},
                                       body=error_document(code), what="PUT s3://b/k")
    for error in (from_botocore, from_aiohttp):
        assert type(error) is TransientError
        assert (error.code, error.status) == (code, status)


def test_a_redirect_names_the_buckets_region_and_a_temporary_one_is_retried():
    """Wrong s3.region: S3 answers 301 PermanentRedirect with x-amz-bucket-region; the
    control plane follows it (botocore's redirector), the data path does not, so the
    error must say where the bucket is. A 307 (a new bucket's DNS) is temporary."""
    moved = error_from_response(
        status=301, reason="Moved Permanently", headers={"x-amz-bucket-region": "eu-west-1"},
        body=error_document("PermanentRedirect"), what="PUT s3://b/k")
    assert type(moved) is PermanentError
    assert "the bucket is in eu-west-1: set s3.region: eu-west-1" in str(moved)
    temporary = error_from_response(
        status=307, reason="Temporary Redirect", headers={"x-amz-bucket-region": "eu-west-1"},
        body=error_document("TemporaryRedirect"), what="PUT s3://b/k")
    assert type(temporary) is TransientError


async def test_a_skewed_clock_is_retried_until_the_clock_is_right():
    operation = Script(client_error("RequestTimeTooSkewed", 403),
                       client_error("RequestTimeTooSkewed", 403))
    assert await policy().call(operation, what="PUT s3://b/k") == "done"
    assert operation.calls == 3


async def test_a_conditional_write_conflict_goes_back_to_the_caller_to_start_over():
    """AWS ends a multipart upload on a 409 to its conditional Complete: resending
    the same request would only get NoSuchUpload, a permanent failure. The caller
    keeps the file for later (a PUT is sent again, a multipart upload is resumed,
    found gone, and created anew)."""
    operation = Script(client_error("ConditionalRequestConflict", 409))
    retry = policy()
    with pytest.raises(TransientError) as caught:
        await retry.call(operation, what="CompleteMultipartUpload s3://b/k")
    assert caught.value.code == "ConditionalRequestConflict"
    assert operation.calls == 1 and retry.retries == 0


async def test_a_transient_4xx_is_the_endpoint_answering_not_an_outage():
    """A skewed clock makes every request fail; the endpoint is up, and opening
    its circuit breaker would report an outage that is not there."""
    breaker = CircuitBreaker(endpoint="s3", clock=FakeClock(), failure_threshold=2)
    retry = policy(breaker=breaker, max_attempts=2)
    with pytest.raises(TransientError):
        await retry.call(Script(*[client_error("RequestTimeTooSkewed", 403)] * 2), what="PUT")
    assert breaker.state is BreakerState.CLOSED
    with pytest.raises(TransientError):
        await retry.call(Script(*[client_error("InternalError", 500)] * 2), what="PUT")
    assert breaker.state is BreakerState.OPEN  # a run of 5xx still counts


def test_a_request_the_http_client_refuses_to_build_is_permanent_not_a_connection_failure():
    """aiohttp refuses a control character in a header before sending anything;
    as a connection failure it was retried forever and opened the breaker."""
    refused = HTTPClientError(error=ValueError("Forbidden control character detected in "
                                               "headers. Potential header injection attack."))
    error = translate(refused, what="CreateMultipartUpload s3://b/k (/data/f)")
    assert type(error) is PermanentError and error.code == "UnsendableRequest"
    assert "not sent" in str(error) and "/data/f" in str(error)
    dropped = HTTPClientError(error=RuntimeError("the connection went away"))
    assert type(translate(dropped, what="PUT")) is ConnectionFailure


# ------------------------------------------------------------ check_metadata
def test_metadata_s3_stores_as_given_passes():
    check_metadata({}, what="s3.metadata")
    check_metadata({"team": "ingest", "source-path": "caf%C3%A9/a%20b.txt",
                    "Content_Tag.v2": "a value, with spaces\tand tabs"}, what="s3.metadata")
    check_metadata({"k": "x" * (MAX_METADATA_BYTES - 1)}, what="s3.metadata")  # at the limit


@pytest.mark.parametrize(("metadata", "says"), [
    ({"who": "José"}, ["'who'", "US-ASCII", "Jos%C3%A9"]),
    ({"wer": "ok", "qui": "Zoë"}, ["'qui'", "US-ASCII"]),
    ({"né": "x"}, ["'né'", "header name"]),
    ({"a b": "x"}, ["'a b'", "header name", "no spaces"]),
    ({"": "x"}, ["''", "header name"]),
    ({"k": "line\r\nX-Injected: 1"}, ["'k'", "control character"]),
    ({"Team": "a", "team": "b"}, ["'Team'", "'team'", "lower case"]),
    ({"k": "x" * MAX_METADATA_BYTES}, ["2049 bytes", "2048", "'k'"]),
    ({"a": "x" * 1500, "big": "y" * 600}, ["2104 bytes", "'a'"]),
])
def test_metadata_s3_cannot_store_as_given_is_refused_naming_the_key_and_rule(metadata, says):
    with pytest.raises(MetadataError) as caught:
        check_metadata(metadata, what="s3.metadata")
    message = str(caught.value)
    assert message.startswith("s3.metadata: ")
    for part in says:
        assert part in message
    assert isinstance(caught.value, ValueError)  # what config and message parsers catch


# ------------------------------------------------------- against the server
def make_config(tmp_path: Path, endpoint: str, bucket: str):
    return validate_config({
        "source": {"directory": str(tmp_path)},
        "s3": {"bucket": bucket, "endpoint_url": endpoint, "region": "us-east-1",
               "addressing_style": "path"},
        "transfer": {"multipart_threshold": "5MiB", "part_size": "5MiB"},
        "state_dir": str(tmp_path / "state"),
    })


async def test_non_ascii_metadata_is_refused_before_sending_for_small_and_large_files(
        tmp_path, s3_server, s3_env, bucket, s3, fault_proxy):
    """A raw UTF-8 value went out on the PUT path and was stored garbled, while
    the multipart path refused it: now neither sends anything."""
    files = {"small.txt": os.urandom(1000), "large.bin": os.urandom(6 * MiB)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    journal = Journal(tmp_path / "journal.sqlite3")
    async with services(make_config(tmp_path, fault_proxy.url, bucket),
                        journal=journal) as svc:
        for name in files:
            outcome = await svc.pipeline.process(tmp_path / name, name, {"who": "José"})
            assert outcome is Outcome.FAILED, name
    records = {name: journal.lookup(str(tmp_path / name)) for name in files}
    journal.close()
    for name, record in records.items():
        assert record.status == FAILED
        assert str(tmp_path / name) in record.error  # which file, which key, which rule
        assert '"who"' in record.error or "'who'" in record.error
        assert "ASCII" in record.error
    assert "not sent" in records["small.txt"].error
    assert fault_proxy.records(method="PUT") == []  # no PutObject, no UploadPart
    assert fault_proxy.records(method="POST") == []  # no CreateMultipartUpload
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

