"""Integrity checksums sent with each PUT and part: pure functions.

`md5` goes in Content-MD5, which AWS and every S3-compatible server check.
The others use the `x-amz-checksum-*` headers as plain headers (never
aws-chunked trailers, which several S3-compatible servers reject).
`auto` (the default) is `crc32c` on AWS; elsewhere `md5` until the server shows it
verifies `crc32c` (`uploader.checksum_choice`).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Callable
from urllib.parse import urlsplit

AWS_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn")

# botocore's names for the request parameters that carry each checksum.
PARAMETER = {"md5": "ContentMD5", "crc32": "ChecksumCRC32", "crc32c": "ChecksumCRC32C",
             "sha256": "ChecksumSHA256"}
HEADER = {"md5": "Content-MD5", "crc32": "x-amz-checksum-crc32",
          "crc32c": "x-amz-checksum-crc32c", "sha256": "x-amz-checksum-sha256"}
ALGORITHM = {"crc32": "CRC32", "crc32c": "CRC32C", "sha256": "SHA256"}


def _crc32(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def _crc32c(data: bytes) -> bytes:
    import crc32c  # only when chosen: every import is paid at each start

    return crc32c.crc32c(data).to_bytes(4, "big")


_DIGESTS: dict[str, Callable[[bytes], bytes]] = {
    "md5": lambda data: hashlib.md5(data).digest(),
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "crc32": _crc32,
    "crc32c": _crc32c,
}


def resolve(setting: str, endpoint_url: str | None) -> str:
    """The algorithm `transfer.checksum` stands for with this endpoint, at start
    (`uploader.checksum_choice` may move `auto` to crc32c off AWS).

    `auto`: `crc32c` on AWS (no endpoint set, or an amazonaws.com one): every
    region verifies it, and it costs a fraction of MD5's CPU per byte
    (bench/throughput.py: 1.5 vs 2.8 CPU-s per GB). `md5` on any other server:
    Content-MD5 is the one check every S3-compatible server makes.
    """
    if setting != "auto":
        return setting
    return "crc32c" if is_aws(endpoint_url) else "md5"


def is_aws(endpoint_url: str | None) -> bool:
    if endpoint_url is None:
        return True
    host = (urlsplit(endpoint_url).hostname or "").lower()
    return host.endswith(AWS_DOMAINS)


def checksum_b64(algorithm: str, data: bytes) -> str | None:
    """The base64 checksum of `data`, or None for `none`."""
    if algorithm == "none":
        return None
    return base64.b64encode(_DIGESTS[algorithm](data)).decode("ascii")


def request_parameters(algorithm: str, data: bytes) -> dict[str, str]:
    """botocore parameters for PutObject/UploadPart carrying the checksum."""
    value = checksum_b64(algorithm, data)
    return {} if value is None else {PARAMETER[algorithm]: value}
