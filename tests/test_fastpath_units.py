"""The aiohttp data path's pure parts, without a server: URLs, headers, signing, errors."""

from __future__ import annotations

import base64
import datetime
import hashlib

import aioboto3
import botocore.session
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioRefreshableCredentials
from botocore.auth import UNSIGNED_PAYLOAD
from botocore.exceptions import NoCredentialsError

from uploader.errors import PermanentError, ThrottleError, TransientError
from uploader.s3.endpoint import BucketEndpoint, part_query, quote_key, resolve_endpoint
from uploader.s3.signing import RequestSigner, payload_hash
from uploader.s3.wire import HeaderMap, error_from_response, parse_error_document

KEY = "dir one/a+b=c~d é&.txt"
ENCODED_KEY = "dir%20one/a%2Bb%3Dc~d%20%C3%A9%26.txt"


async def endpoint_for(*, endpoint_url, style, region, bucket) -> BucketEndpoint:
    session = aioboto3.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
    s3_options = {} if style == "auto" else {"addressing_style": style}
    async with session.client("s3", endpoint_url=endpoint_url, region_name=region,
                              config=AioConfig(s3=s3_options)) as client:
        return await resolve_endpoint(client, bucket)


@pytest.mark.parametrize("endpoint_url, style, region, bucket, expected", [
    # A custom endpoint, path style (SeaweedFS, MinIO): the bucket in the path.
    ("http://127.0.0.1:8333", "path", "us-east-1", "data",
     "http://127.0.0.1:8333/data/"),
    # botocore's auto on an IP address endpoint is path style too.
    ("http://127.0.0.1:8333", "auto", "us-east-1", "data", "http://127.0.0.1:8333/data/"),
    # A custom endpoint forced to virtual hosting: the bucket in the host name.
    ("https://minio.example.com:9000", "virtual", "eu-central-1", "data",
     "https://data.minio.example.com:9000/"),
    # AWS: virtual-hosted in the bucket's region ...
    (None, "auto", "eu-west-1", "my-bucket", "https://my-bucket.s3.eu-west-1.amazonaws.com/"),
    (None, "virtual", "ap-southeast-2", "my-bucket",
     "https://my-bucket.s3.ap-southeast-2.amazonaws.com/"),
    # ... path style when asked, or when the name cannot be a TLS host name (dots).
    (None, "path", "us-west-2", "my-bucket", "https://s3.us-west-2.amazonaws.com/my-bucket/"),
    (None, "auto", "eu-west-1", "my.dotted.bucket",
     "https://s3.eu-west-1.amazonaws.com/my.dotted.bucket/"),
])
async def test_object_urls_follow_the_addressing_style(endpoint_url, style, region, bucket,
                                                       expected):
    endpoint = await endpoint_for(endpoint_url=endpoint_url, style=style, region=region,
                                  bucket=bucket)
    assert endpoint.base == expected
    assert endpoint.region == region
    assert endpoint.object_url(KEY) == expected + ENCODED_KEY


async def test_a_part_url_carries_the_encoded_upload_id():
    endpoint = await endpoint_for(endpoint_url=None, style="virtual", region="eu-west-1",
                                  bucket="bkt-1")
    url = endpoint.part_url("k/x y", upload_id="VXBsb2+Fk/w=.id_~", part_number=7)
    assert url == ("https://bkt-1.s3.eu-west-1.amazonaws.com/k/x%20y"
                   "?partNumber=7&uploadId=VXBsb2%2BFk%2Fw%3D.id_~")
    assert part_query(upload_id="a b", part_number=1) == "partNumber=1&uploadId=a%20b"
    assert quote_key("/lead//double") == "/lead//double"


def test_parameters_become_the_headers_botocore_would_send():
    model = botocore.session.get_session().get_service_model("s3")
    put = HeaderMap(model.operation_model("PutObject"))
    headers = put.headers({
        "ContentType": "text/plain", "StorageClass": "STANDARD_IA",
        "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "key-1",
        "Metadata": {"source-path": "a%2Fb", "team": "x"},
        "ContentMD5": "1B2M2Y8AsgTpgAmY7PhCfg==", "ChecksumCRC32C": "AAAAAA==",
    })
    assert headers == {
        "Content-Type": "text/plain", "x-amz-storage-class": "STANDARD_IA",
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "key-1",
        "x-amz-meta-source-path": "a%2Fb", "x-amz-meta-team": "x",
        "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==", "x-amz-checksum-crc32c": "AAAAAA==",
    }
    part = HeaderMap(model.operation_model("UploadPart"))
    assert part.headers({"ChecksumSHA256": "abc="}) == {"x-amz-checksum-sha256": "abc="}
    with pytest.raises(ValueError, match="StorageClass"):
        part.headers({"StorageClass": "GLACIER"})  # not an UploadPart header


def test_the_payload_is_signed_unless_a_checksum_header_binds_it():
    body = b"some bytes"
    sha = hashlib.sha256(body)
    assert payload_hash({"ContentMD5": "x"}, body) == UNSIGNED_PAYLOAD
    assert payload_hash({"ChecksumCRC32C": "x"}, body) == UNSIGNED_PAYLOAD
    # sha256 checksum: the same digest signs the payload, nothing hashed twice.
    assert payload_hash({"ChecksumSHA256": base64.b64encode(sha.digest()).decode()},
                        body) == sha.hexdigest()
    # No checksum at all: the body's SHA-256 is the only integrity check.
    assert payload_hash({"ContentType": "text/plain"}, body) == sha.hexdigest()


def _endpoint() -> BucketEndpoint:
    return BucketEndpoint(base="https://b.s3.eu-west-1.amazonaws.com/", region="eu-west-1")


async def test_every_request_asks_the_credentials_for_fresh_keys():
    """A refreshable credentials object near expiry is refreshed before signing, and the
    request is signed with the new keys and token (assume-role, SSO, instance roles)."""
    issued = []

    async def refresh():
        issued.append(len(issued) + 1)
        n = issued[-1]
        # Always inside the refresh window: every use asks for new keys.
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=60)
        return {"access_key": f"AKID{n:04d}", "secret_key": f"secret-{n}",
                "token": f"token-{n}", "expiry_time": expiry.isoformat()}

    credentials = AioRefreshableCredentials.create_from_metadata(
        await refresh(), refresh_using=refresh, method="test")
    signer = RequestSigner(credentials=credentials, endpoint=_endpoint())
    first = await signer.sign(method="PUT", url=_endpoint().object_url("k"), headers={},
                              payload_hash=UNSIGNED_PAYLOAD)
    second = await signer.sign(method="PUT", url=_endpoint().object_url("k"), headers={},
                               payload_hash=UNSIGNED_PAYLOAD)
    assert len(issued) >= 3  # the initial keys, then a refresh for each request
    assert "Credential=AKID0002/" in first["Authorization"]
    assert first["X-Amz-Security-Token"] == "token-2"
    assert "Credential=AKID0003/" in second["Authorization"]
    assert second["X-Amz-Security-Token"] == "token-3"
    assert "/eu-west-1/s3/aws4_request" in second["Authorization"]
    assert second["X-Amz-Content-SHA256"] == UNSIGNED_PAYLOAD


async def test_signed_headers_cover_the_checksum_and_metadata():
    from botocore.credentials import Credentials

    signer = RequestSigner(credentials=Credentials("AKID", "secret"), endpoint=_endpoint())
    signed = await signer.sign(method="PUT", url=_endpoint().object_url("k"),
                               headers={"Content-MD5": "abc", "x-amz-meta-team": "x"},
                               payload_hash=UNSIGNED_PAYLOAD)
    assert ("SignedHeaders=content-md5;host;x-amz-content-sha256;x-amz-date;x-amz-meta-team"
            in signed["Authorization"])


@pytest.mark.parametrize("when", [datetime.datetime(2026, 11, 23, 23, 59, 59),
                                  datetime.datetime(2026, 11, 24, 0, 0, 1)])
@pytest.mark.parametrize("secret, token", [("secret", None), ("other-secret", "tok")])
async def test_the_signature_is_exactly_botocores(monkeypatch, when, secret, token):
    """The leaner header map and the cached signing key change no byte of the result:
    the same request signed by botocore's own S3SigV4Auth at the same instant, across a
    day boundary (a new signing key), another secret and a session token."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: when)
    credentials = Credentials("AKID", secret, token)
    url = _endpoint().part_url(KEY, upload_id="up/id+1", part_number=7)
    headers = {"Content-MD5": "abc==", "Content-Type": "text/plain",
               "x-amz-meta-Team": "  a   b ", "Content-Length": "5",
               "x-amz-storage-class": "STANDARD_IA"}
    ours = await RequestSigner(credentials=credentials, endpoint=_endpoint()).sign(
        method="PUT", url=url, headers=headers, payload_hash=UNSIGNED_PAYLOAD)

    reference = AWSRequest(method="PUT", url=url, headers={"Host": _endpoint().host, **headers})
    reference.context["payload_signing_enabled"] = False  # botocore's UNSIGNED-PAYLOAD
    S3SigV4Auth(credentials, "s3", "eu-west-1").add_auth(reference)
    assert ours == dict(reference.headers.items())
    assert ours["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/"
                                            f"{when:%Y%m%d}/eu-west-1/s3/aws4_request")


async def test_no_credentials_is_the_typed_error_the_retry_layer_knows():
    signer = RequestSigner(credentials=None, endpoint=_endpoint())
    with pytest.raises(NoCredentialsError):
        await signer.sign(method="PUT", url=_endpoint().object_url("k"), headers={},
                          payload_hash=UNSIGNED_PAYLOAD)


def test_error_documents_are_classified_like_botocore_errors():
    slow = error_from_response(
        status=503, reason="Slow Down", headers={"Retry-After": "3"}, what="PUT s3://b/k",
        body=b"<?xml version='1.0'?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")
    assert isinstance(slow, ThrottleError)
    assert (slow.code, slow.status, slow.retry_after) == ("SlowDown", 503, 3.0)
    assert "PUT s3://b/k: SlowDown (HTTP 503): Please reduce" in str(slow)
    amz = error_from_response(status=500, reason="Internal Server Error",
                              headers={"x-amz-retry-after": "1500"}, body=b"", what="PUT")
    assert isinstance(amz, TransientError) and amz.retry_after == 1.5
    denied = error_from_response(
        status=403, reason="Forbidden", headers={}, what="PUT s3://b/k",
        body=b'<Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Code>'
             b'SignatureDoesNotMatch</Code><Message>no</Message></Error>')
    assert isinstance(denied, PermanentError) and denied.code == "SignatureDoesNotMatch"
    assert "check the AWS secret key" in str(denied)
    assert parse_error_document(b"<html>proxy error</html>") == (None, "")
    assert parse_error_document(b"not xml at all") == (None, "not xml at all")
