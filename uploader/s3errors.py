"""The one boundary where library exceptions become the uploader's typed errors.

Everything that talks to S3 (the aioboto3 control plane, and any faster data
path) raises through `translate`, so the retry policy classifies one hierarchy.
"""

from __future__ import annotations

import asyncio

import aiohttp
import botocore.exceptions as bce
from botocore.retries.standard import ThrottledRetryableChecker

from uploader import clock_skew
from uploader.errors import (
    ConnectionFailure,
    PermanentError,
    ThrottleError,
    TransferError,
    TransientError,
)

THROTTLE_CODES = frozenset(ThrottledRetryableChecker._THROTTLED_ERROR_CODES)  # noqa: SLF001
THROTTLE_STATUSES = frozenset({429, 503})
TRANSIENT_STATUSES = frozenset({500, 502, 504})
TRANSIENT_CODES = frozenset({
    "InternalError", "RequestTimeout", "RequestTimeoutException", "ServiceUnavailable",
    "ExpiredToken", "TokenRefreshRequired", "IDPCommunicationError",
    "IncompleteBody",  # the body was cut off on the way; the next attempt sends it whole
    # Our clock is off (no NTP, a resumed VM): the refusal's Date corrects the
    # signing clock (`classify_http`), and the retry, signed anew, goes through.
    "RequestTimeTooSkewed",
    "OperationAborted",  # a conflicting operation was in progress; S3 says try again
    "ConditionalRequestConflict",  # see RESTART_CODES
})
#: Transient, but not resent as is (`uploader.retry`). Conditional writes
#: (If-None-Match) on one key raced, and a 409 to CompleteMultipartUpload ends
#: the upload (AWS: start it over), so a resend would only get NoSuchUpload. The
#: file is kept for later: a PUT is sent again (and meets a winner as 412
#: PreconditionFailed); a multipart upload is resumed, found gone, and the
#: winner's object is compared with the file before a new upload is created.
RESTART_CODES = frozenset({"ConditionalRequestConflict"})

_CONNECTION_ERRORS = (bce.EndpointConnectionError, bce.ConnectionClosedError,
                      bce.ReadTimeoutError, bce.ConnectTimeoutError, bce.ConnectionError,
                      bce.HTTPClientError, aiohttp.ClientError, asyncio.TimeoutError,
                      ConnectionError, TimeoutError)


def translate(exc: BaseException, *, what: str) -> TransferError:
    """Classify `exc` raised while doing `what` (e.g. "PUT s3://b/k")."""
    if isinstance(exc, TransferError):
        return exc
    if isinstance(exc, bce.ClientError):
        return _from_client_error(exc, what=what)
    if isinstance(exc, bce.HTTPClientError) and isinstance(exc.kwargs.get("error"), ValueError):
        # The HTTP client refused to build the request (e.g. a control character in
        # a header): nothing was sent, and it is refused again every time. Not a
        # connection failure, which would trip the circuit breaker for every file.
        return PermanentError(f"{what}: not sent: {_short(exc.kwargs['error'])}",
                              code="UnsendableRequest")
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return PermanentError(f"{what}: no usable AWS credentials ({exc}); set them in the "
                              "environment, a profile or a role", code="NoCredentials")
    if isinstance(exc, _CONNECTION_ERRORS):
        return ConnectionFailure(f"{what}: connection failed: {_short(exc)}",
                                 code=type(exc).__name__)
    return PermanentError(f"{what}: {type(exc).__name__}: {_short(exc)}",
                          code=type(exc).__name__)


def classify_http(*, status: int, code: str | None, message: str, what: str,
                  retry_after: float | None = None, bucket_region: str | None = None,
                  server_date: str | None = None) -> TransferError:
    """Classify an S3 error response by status and error code.

    `bucket_region`: S3's `x-amz-bucket-region` header, which a redirect (301
    PermanentRedirect: the bucket is in another region than `s3.region`) carries.
    `server_date`: the answer's `Date` header; a refusal for a skewed clock teaches
    the signer the server's time (`uploader.clock_skew`), so the retry goes through.
    """
    if code in clock_skew.SKEW_CODES:
        clock_skew.learn(server_date)
    elif status == 403 and clock_skew.learn(server_date, beyond=clock_skew.SUSPECT_SECONDS):
        code = "RequestTimeTooSkewed"  # a HEAD's refusal has no body to say so; its Date does
    code = code or f"HTTP{status}"
    text = f"{what}: {code} (HTTP {status}): {message}".rstrip(": ")
    if bucket_region:
        text += f"; the bucket is in {bucket_region}: set s3.region: {bucket_region}"
    if status == 307:
        # TemporaryRedirect: a new bucket's DNS is not everywhere yet; it will be.
        return TransientError(text, code=code, status=status, retry_after=retry_after)
    if code in THROTTLE_CODES or status in THROTTLE_STATUSES:
        return ThrottleError(text, code=code, status=status, retry_after=retry_after)
    if code in TRANSIENT_CODES or status in TRANSIENT_STATUSES:
        return TransientError(text, code=code, status=status, retry_after=retry_after)
    return PermanentError(text + _advice(code), code=code, status=status)


def _from_client_error(exc: bce.ClientError, *, what: str) -> TransferError:
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 0)
    headers = {k.lower(): v for k, v in (meta.get("HTTPHeaders") or {}).items()}
    return classify_http(status=status, code=error.get("Code") or None,
                         message=error.get("Message") or "", what=what,
                         retry_after=parse_retry_after(headers), server_date=headers.get("date"))


def parse_retry_after(headers: dict[str, str]) -> float | None:
    for name in ("x-amz-retry-after", "retry-after"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        # x-amz-retry-after is in milliseconds, Retry-After in seconds.
        return seconds / 1000 if name == "x-amz-retry-after" else seconds
    return None


def _advice(code: str) -> str:
    return {
        "NoSuchBucket": "; check s3.bucket and s3.region",
        "AccessDenied": "; check the credentials' permissions on the bucket",
        "InvalidAccessKeyId": "; check the AWS access key",
        "SignatureDoesNotMatch": "; check the AWS secret key",
    }.get(code, "")


def _short(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
