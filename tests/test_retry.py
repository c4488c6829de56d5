"""The retry layer's rules, exactly: what is retried, how long it waits, when it stops."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from uploader.errors import ConnectionFailure, PermanentError, ThrottleError, TransientError
from uploader.retry import RetryPolicy
from uploader.s3errors import translate


def client_error(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "msg"},
                        "ResponseMetadata": {"HTTPStatusCode": status,
                                             "HTTPHeaders": headers or {}}}, "PutObject")


@pytest.mark.parametrize(("exc", "kind"), [
    (client_error("SlowDown", 503), ThrottleError),
    (client_error("ServiceUnavailable", 503), ThrottleError),
    (client_error("503", 503), ThrottleError),  # a HEAD's 503 has no body
    (client_error("TooManyRequests", 429), ThrottleError),
    (client_error("InternalError", 500), TransientError),
    (client_error("502", 502), TransientError),
    (client_error("504", 504), TransientError),
    (client_error("RequestTimeout", 400), TransientError),
    (client_error("AccessDenied", 403), PermanentError),
    (client_error("NoSuchBucket", 404), PermanentError),
    (client_error("InvalidArgument", 400), PermanentError),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), ConnectionFailure),
    (ConnectionResetError(104, "Connection reset by peer"), ConnectionFailure),
])
def test_classification(exc, kind):
    translated = translate(exc, what="PUT s3://b/k")
    assert type(translated) is kind
    assert "PUT s3://b/k" in str(translated)


def test_retry_after_header_is_read():
    assert translate(client_error("SlowDown", 503, {"Retry-After": "3"}),
                     what="x").retry_after == 3.0
    assert translate(client_error("SlowDown", 503, {"x-amz-retry-after": "1500"}),
                     what="x").retry_after == 1.5


class Script:
    """An operation that fails with the given errors, then succeeds."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def policy(sleeps: list[float], **kwargs) -> RetryPolicy:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    defaults = {"max_attempts": 5, "base_seconds": 0.1, "cap_seconds": 1.0}
    return RetryPolicy(**{**defaults, **kwargs}, sleep=sleep, rng=lambda: 1.0)


async def test_transient_errors_are_retried_with_growing_capped_backoff():
    sleeps: list[float] = []
    operation = Script(client_error("SlowDown", 503), client_error("InternalError", 500),
                       ConnectionResetError(), client_error("502", 502))
    assert await policy(sleeps).call(operation, what="PUT") == "done"
    assert operation.calls == 5
    assert sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8])


async def test_permanent_errors_are_not_retried():
    sleeps: list[float] = []
    operation = Script(client_error("AccessDenied", 403))
    with pytest.raises(PermanentError, match="AccessDenied"):
        await policy(sleeps).call(operation, what="PUT")
    assert operation.calls == 1 and sleeps == []


async def test_attempts_are_bounded():
    sleeps: list[float] = []
    operation = Script(*[client_error("SlowDown", 503)] * 10)
    with pytest.raises(ThrottleError):
        await policy(sleeps, max_attempts=3).call(operation, what="PUT")
    assert operation.calls == 3 and len(sleeps) == 2


async def test_retry_after_is_honoured_but_capped():
    sleeps: list[float] = []
    operation = Script(client_error("SlowDown", 503, {"Retry-After": "0.7"}),
                       client_error("SlowDown", 503, {"Retry-After": "60"}))
    await policy(sleeps).call(operation, what="PUT")
    assert sleeps == pytest.approx([0.7, 1.0])
