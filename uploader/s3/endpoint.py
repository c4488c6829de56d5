"""Where an object's bytes go: the URL and the signing region, as botocore resolves them.

botocore's endpoint rules decide the URL of a request from the region, a
custom `endpoint_url`, the addressing style (`path`, `virtual`, or `auto`:
virtual-hosted when the bucket name allows it, path-style on custom endpoints
and IP addresses), FIPS, dual-stack and acceleration settings, and the signing
region that goes with it. Rather than re-implement those rules, we ask the
aioboto3 client once per bucket: a PutObject for a probe key is stopped at
botocore's `before-call` hook, after the endpoint is resolved and before
anything is signed or sent. Everything up to the key is the bucket's base URL;
an object's URL is that base plus the key, percent-encoded as botocore
encodes it, so both paths address and sign exactly the same resource.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.auth import _host_from_url
from botocore.utils import percent_encode, percent_encode_sequence

PROBE_KEY = "uploader-endpoint-probe"
_HOOK = "before-call.s3.PutObject"


@dataclass(frozen=True)
class BucketEndpoint:
    """One bucket's base URL (everything before the key) and how to sign for it."""

    base: str  # e.g. http://127.0.0.1:8333/bucket/ or https://bucket.s3.eu-west-1.amazonaws.com/
    region: str
    signing_name: str = "s3"

    @property
    def host(self) -> str:
        """The Host header, as botocore's signer derives it (no default port)."""
        return _host_from_url(self.base)

    def object_url(self, key: str) -> str:
        return self.base + quote_key(key)

    def part_url(self, key: str, *, upload_id: str, part_number: int) -> str:
        return f"{self.object_url(key)}?{part_query(upload_id=upload_id, part_number=part_number)}"


def quote_key(key: str) -> str:
    """A key in a URL path, as botocore serializes S3's greedy `{Key+}` label."""
    return percent_encode(key, safe="/~")


def part_query(*, upload_id: str, part_number: int) -> str:
    """UploadPart's query string, encoded as botocore encodes it (SigV4 signs it verbatim)."""
    return percent_encode_sequence([("partNumber", part_number), ("uploadId", upload_id)])


def endpoint_from_url(url: str, *, region: str, signing_name: str = "s3") -> BucketEndpoint:
    """The endpoint of a resolved PutObject URL for `PROBE_KEY`."""
    if not url.endswith("/" + PROBE_KEY):
        raise ValueError(f"unexpected PutObject URL from botocore: {url!r}")
    return BucketEndpoint(base=url[: -len(PROBE_KEY)], region=region, signing_name=signing_name)


class _Resolved(Exception):
    """Carries botocore's resolved request out of the `before-call` hook (nothing is sent)."""

    def __init__(self, url: str, signing: dict[str, Any]) -> None:
        super().__init__(url)
        self.url = url
        self.signing = signing


async def resolve_endpoint(client: Any, bucket: str) -> BucketEndpoint:
    """Ask the aioboto3 `client` where a PutObject to `bucket` goes (no request is sent)."""

    def stop(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if params.get("url", "").endswith("/" + PROBE_KEY):
            raise _Resolved(params["url"], context.get("signing") or {})

    unique_id = f"uploader-endpoint-probe-{id(stop)}"
    client.meta.events.register_first(_HOOK, stop, unique_id=unique_id)
    try:
        await client.put_object(Bucket=bucket, Key=PROBE_KEY, Body=b"")
    except _Resolved as resolved:
        return endpoint_from_url(resolved.url,
                                 region=resolved.signing.get("region") or client.meta.region_name,
                                 signing_name=resolved.signing.get("signing_name") or "s3")
    finally:
        client.meta.events.unregister(_HOOK, unique_id=unique_id)
    raise RuntimeError("botocore sent the endpoint probe instead of stopping at before-call")
