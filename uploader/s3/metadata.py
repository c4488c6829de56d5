"""S3 user metadata (`x-amz-meta-*`): what S3 can store as given. Pure, no I/O.

User metadata travels in HTTP request headers, so over S3's REST API each key
must be a header name and each value US-ASCII ("must conform to US-ASCII when
using REST"), and all of it together is limited to 2 KB (the UTF-8 bytes of
every key and value). A server takes a raw UTF-8 value without complaint and
stores whatever it makes of the bytes, so nothing else catches it.

`check_metadata` is called where metadata enters (the configuration, a queue
message) and again by the data path before a request is built, so no path can
publish metadata other than the one asked for.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Mapping

#: S3's limit on user metadata: keys (without `x-amz-meta-`) and values, in UTF-8 bytes.
MAX_METADATA_BYTES = 2048
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")  # printable US-ASCII, space, tab


class MetadataError(ValueError):
    """User metadata S3 cannot store as given; the message names the key and the rule."""


def check_metadata(metadata: Mapping[str, str], *, what: str) -> None:
    """Raise MetadataError unless S3 stores `metadata` exactly as given.

    `what` says where it comes from (e.g. "s3.metadata"); it starts the message.
    """
    seen: dict[str, str] = {}
    for key, value in metadata.items():
        _check_key(key, what=what)
        _check_value(key, value, what=what)
        # S3 stores keys in lower case: two that differ only in case are one header.
        other = seen.setdefault(key.lower(), key)
        if other != key:
            raise MetadataError(f"{what}: keys {other!r} and {key!r} are the same "
                                "x-amz-meta- header (S3 stores keys in lower case); keep one")
    _check_size(metadata, what=what)


def _check_key(key: str, *, what: str) -> None:
    if not _HEADER_NAME.fullmatch(key):
        raise MetadataError(
            f"{what}: key {key!r} cannot be sent as an x-amz-meta- header name; use only "
            "ASCII letters, digits and !#$%&'*+-.^_`|~ (no spaces)")


def _check_value(key: str, value: str, *, what: str) -> None:
    if not value.isascii():
        raise MetadataError(
            f"{what}: key {key!r}: the value {value!r} is not US-ASCII, which S3 requires "
            "of user metadata (x-amz-meta-* headers); percent-encode it, e.g. "
            f"{urllib.parse.quote(value, safe='')!r}")
    if not _HEADER_VALUE.fullmatch(value):
        raise MetadataError(f"{what}: key {key!r}: the value {value!r} holds a control "
                            "character, which no HTTP header can carry")


def _check_size(metadata: Mapping[str, str], *, what: str) -> None:
    sizes = {key: len(key.encode()) + len(value.encode()) for key, value in metadata.items()}
    total = sum(sizes.values())
    if total > MAX_METADATA_BYTES:
        largest = max(sizes, key=sizes.__getitem__)
        raise MetadataError(
            f"{what}: user metadata is {total} bytes (keys and values), over S3's limit of "
            f"{MAX_METADATA_BYTES}; the largest is {largest!r} ({sizes[largest]} bytes)")
