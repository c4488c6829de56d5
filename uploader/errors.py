"""The uploader's typed errors.

Library exceptions (botocore, aiohttp, OSError) are translated into these at one
boundary (`uploader.s3errors`), so the retry policy, the journal and the log only
ever see this small hierarchy.
"""

from __future__ import annotations


class UploaderError(Exception):
    """Base of every error the uploader raises on purpose."""


class ConfigError(UploaderError):
    """The configuration is invalid; the message names the key and what is expected."""


class SourceError(UploaderError):
    """A local file cannot be uploaded as it is (unreadable, vanished, changed)."""


class SourceVanished(SourceError):
    """The file disappeared before or during its upload."""


class SourceChanged(SourceError):
    """The file changed while it was being uploaded; it goes back to settling."""


class SourceUnreadable(SourceError):
    """The file exists but cannot be read (permissions, I/O error)."""


class InvalidFileName(SourceError):
    """The file's name is not UTF-8, which S3 keys (and the journal) require."""


class TransferError(UploaderError):
    """An S3 request failed. `code` is S3's error code or a short local reason."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.retry_after = retry_after


class TransientError(TransferError):
    """Worth retrying: 500/502/503/504, resets, timeouts."""


class ConnectionFailure(TransientError):
    """The endpoint could not be reached or dropped the connection."""


class BucketMissing(TransientError):
    """The bucket does not exist (yet): files wait for it, none fails for it; the bucket
    is asked about again as they come back (`uploader.bucket_check`)."""


class OutOfDescriptors(TransientError):
    """The process has no free file descriptor (EMFILE, ENFILE): a local shortage that
    ends as uploads finish, not a fault of the file (`uploader.open_files`)."""


class SourceAway(TransientError):
    """The file's filesystem failed in a way that passes (a network or FUSE filesystem whose
    server or backend is away, a stale NFS handle): the file is tried again later, not
    failed (`uploader.transfer.job.unreadable`)."""


class EndpointDown(TransientError):
    """The endpoint failed the circuit breaker's probes for as long as a run that must
    end waits (`uploader upload`): the request is not sent, nor retried."""


class ThrottleError(TransientError):
    """The server asked us to slow down (SlowDown, 503, 429, throttling codes)."""


class PermanentError(TransferError):
    """Retrying will not help: 400, 403, 404 NoSuchBucket, bad credentials."""


class ChecksumRefused(PermanentError):
    """The server refused the x-amz-checksum-crc32c header of a part that carried it
    unasked (`transfer.checksum: auto`): its upload starts over with Content-MD5."""


class VerificationError(UploaderError):
    """The object in S3 does not match what was sent (size or checksum)."""
