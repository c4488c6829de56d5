"""S3's wire format for the data path: request headers in, error responses out.

Request parameters keep botocore's names (`ContentType`, `StorageClass`,
`Metadata`, `ContentMD5`, `ChecksumCRC32C`, ...), so the transfer code builds
the same parameters for both data paths. `HeaderMap` turns them into HTTP
headers with botocore's own service model (each member's `location: header`
and header name, `Metadata` as `x-amz-meta-*`), so any header PutObject or
UploadPart accepts is written as botocore would write it. (User metadata is
checked where it is built, `TransferContext.object_params`.)

Error responses (S3's XML `<Error><Code/><Message/></Error>`, Retry-After and
x-amz-retry-after headers) become the uploader's typed errors through
`uploader.s3errors.classify_http`, the same classification the control
plane's botocore errors get.
"""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ElementTree
from typing import Any, Mapping

from uploader.errors import TransferError
from uploader.s3errors import classify_http, parse_retry_after

MAX_ERROR_BODY = 64 * 1024  # S3 error documents are a few hundred bytes


class HeaderMap:
    """botocore request parameters -> HTTP headers, for one operation."""

    def __init__(self, operation_model: Any) -> None:
        self.operation = operation_model.name
        self._single: dict[str, tuple[str, str]] = {}  # parameter -> (header, shape type)
        self._prefixed: dict[str, str] = {}  # parameter -> header prefix (Metadata)
        for name, shape in operation_model.input_shape.members.items():
            location = shape.serialization.get("location")
            if location == "header":
                self._single[name] = (shape.serialization.get("name", name), shape.type_name)
            elif location == "headers":
                self._prefixed[name] = shape.serialization.get("name", "")

    def headers(self, params: Mapping[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in params.items():
            if value is None:
                continue
            if name in self._single:
                header, type_name = self._single[name]
                out[header] = value if type(value) is str else _header_value(value, type_name)
            elif name in self._prefixed:
                prefix = self._prefixed[name]
                for key, item in value.items():
                    out[prefix + key] = str(item)
            else:
                raise ValueError(f"{self.operation}: {name} is not sent as a header")
        return out


def _header_value(value: Any, type_name: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.datetime):  # botocore's default for header timestamps
        return value.astimezone(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
    if type_name in ("string", "integer", "long") and isinstance(value, (str, int)):
        return str(value)
    raise TypeError(f"cannot send a {type_name} header from {value!r}")


def parse_error_document(body: bytes) -> tuple[str | None, str]:
    """(Code, Message) of an S3 XML error document; (None, "") if it is not one."""
    if not body.strip():
        return None, ""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None, body[:200].decode("utf-8", "replace").strip()
    code = _child_text(root, "Code")
    message = _child_text(root, "Message") or ""
    return code or None, message


def _child_text(root: ElementTree.Element, name: str) -> str | None:
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == name:  # with or without a namespace
            return (element.text or "").strip()
    return None


def error_from_response(*, status: int, reason: str, headers: Mapping[str, str], body: bytes,
                        what: str) -> TransferError:
    """The typed error for a non-2xx answer to `what` (e.g. "PUT s3://b/k (/path)")."""
    code, message = parse_error_document(body)
    lowered = {name.lower(): value for name, value in headers.items()}
    return classify_http(status=status, code=code, message=message or reason, what=what,
                         retry_after=parse_retry_after(lowered),
                         bucket_region=lowered.get("x-amz-bucket-region") if 300 <= status < 400
                         else None, server_date=lowered.get("date"))
