"""Signing a data-path request: botocore's own SigV4 signer, the session's credentials.

No cryptography of ours: `S3SigV4Auth.add_auth` builds the canonical request
and the signature (~60 us a request). The credentials object is the one the
aioboto3 client signs with (the session's credential chain: environment,
profile, SSO, container and instance roles, assume-role); its refresh-aware
`get_frozen_credentials()` is called for every request, so temporary
credentials are renewed as they near expiry, exactly as on the control plane.

The payload hash (`X-Amz-Content-SHA256`) is given, never computed here from
the body: see `payload_hash` for the choice between UNSIGNED-PAYLOAD and the
body's SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
from typing import Any, Mapping

from botocore.auth import SIGNED_HEADERS_BLACKLIST, UNSIGNED_PAYLOAD, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import NoCredentialsError
from multidict import CIMultiDict

from uploader.s3.endpoint import BucketEndpoint

# Request parameters that carry a checksum of the body in a (signed) header.
CHECKSUM_PARAMETERS = frozenset({"ContentMD5", "ChecksumCRC32", "ChecksumCRC32C",
                                 "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256"})


def payload_hash(params: Mapping[str, Any], body: bytes | memoryview) -> str:
    """What goes in X-Amz-Content-SHA256 for a request with `params` and `body`.

    - `ChecksumSHA256` given (`transfer.checksum: sha256`): that very digest,
      in hex; the payload is signed at no extra cost.
    - another checksum given (Content-MD5 by default, or x-amz-checksum-crc32/
      crc32c): UNSIGNED-PAYLOAD. The checksum header is itself signed, so the
      signature still binds the body through it, and the server rejects a body
      that does not match. Hashing the body with SHA-256 as well would cost
      ~0.6 CPU-s per GB for nothing more (botocore makes the same choice on
      HTTPS; on plain HTTP it always hashes).
    - no checksum (`transfer.checksum: none`): the body's SHA-256, the only
      integrity check left.
    """
    sha256 = params.get("ChecksumSHA256")
    if sha256:
        return base64.b64decode(sha256).hex()
    if not CHECKSUM_PARAMETERS.isdisjoint(params):
        return UNSIGNED_PAYLOAD
    return hashlib.sha256(body).hexdigest()


class _Headers(CIMultiDict):  # type: ignore[misc]
    """A case-insensitive header map with the `get_all` botocore's signer reads.

    botocore keeps headers in `email.message.Message`, whose per-header policy
    work was half of the time spent signing a request (~25 us of ~47).
    """

    def get_all(self, key: str, failobj: Any = None) -> Any:
        return self.getall(key, failobj)


class _GivenPayloadAuth(S3SigV4Auth):
    """botocore's S3 SigV4 signer, told the payload hash instead of reading the body.

    Two costs are taken out, not the algorithm: the headers live in `_Headers`
    (see there), and the signing key, which changes only with the secret, the
    day, the region and the service, is derived once (by botocore's own HMAC
    steps) instead of four HMACs per request.
    """

    _signing_keys: dict[tuple[str, str, str, str], bytes] = {}

    def payload(self, request: AWSRequest) -> str:
        return request.context["payload_hash"]

    def headers_to_sign(self, request: AWSRequest) -> _Headers:
        # botocore's selection (every header but its blacklist, lower-cased; the
        # Host is always given here), kept in a `_Headers`.
        return _Headers((name.lower(), value) for name, value in request.headers.items()
                        if name.lower() not in SIGNED_HEADERS_BLACKLIST)

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        scope = (self.credentials.secret_key, request.context["timestamp"][0:8],
                 self._region_name, self._service_name)
        key = self._signing_keys.get(scope)
        if key is None:
            secret, day, region, service = scope
            key = self._sign(f"AWS4{secret}".encode(), day)
            for part in (region, service, "aws4_request"):
                key = self._sign(key, part)
            self._signing_keys.clear()  # one live key: rotated secrets don't pile up
            self._signing_keys[scope] = key
        return self._sign(key, string_to_sign, hex=True)


class RequestSigner:
    """Signs data-path requests for one endpoint with a refreshable credentials object."""

    def __init__(self, *, credentials: Any, endpoint: BucketEndpoint) -> None:
        self.credentials = credentials  # botocore/aiobotocore Credentials, or None
        self.region = endpoint.region
        self.signing_name = endpoint.signing_name
        # Given, so the signer does not parse it out of every URL (and aiohttp sends it as is).
        self.host = endpoint.host

    async def frozen_credentials(self) -> Any:
        if self.credentials is None:
            raise NoCredentialsError()
        frozen = self.credentials.get_frozen_credentials()  # refreshes when near expiry
        if inspect.isawaitable(frozen):  # aiobotocore's are coroutines
            frozen = await frozen
        return frozen

    async def sign(self, *, method: str, url: str, headers: Mapping[str, str],
                   payload_hash: str) -> dict[str, str]:
        """`headers` plus Host, X-Amz-Date, X-Amz-Content-SHA256, the token and Authorization."""
        request = AWSRequest(method=method, url=url)
        request.headers = _Headers(headers)
        request.headers["Host"] = self.host
        request.context["payload_hash"] = payload_hash
        auth = _GivenPayloadAuth(await self.frozen_credentials(), self.signing_name, self.region)
        auth.add_auth(request)
        return dict(request.headers.items())
