"""What every transfer shares: the clients, the retry policy, the part slots, the memory
budget, the journal."""

from __future__ import annotations

import asyncio
import mimetypes
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from uploader.checksum_choice import ChecksumChoice
from uploader.config import Config
from uploader.errors import PermanentError
from uploader.journal import Journal
from uploader.limiter import partition_for
from uploader.memory import MemoryBudget
from uploader.retry import RetryPolicy
from uploader.s3.datapath import BotocoreDataPath, DataPath
from uploader.s3.metadata import MetadataError, check_metadata
from uploader.transfer.job import FileJob

T = TypeVar("T")


@dataclass
class UploadResult:
    etag: str
    size: int
    parts: int = 0
    parts_sent: int = 0
    reused: bool = False  # found already in S3 after a crash; nothing was sent


@dataclass
class TransferContext:
    client: Any  # aioboto3: control requests (multipart create/complete/abort, lists, HEAD)
    data: DataPath  # PutObject and UploadPart (transfer.data_path)
    bucket: str
    retry: RetryPolicy
    journal: Journal
    checksums: ChecksumChoice  # for new uploads; a multipart upload keeps its own
    multipart_threshold: int
    part_size: int
    part_slots: asyncio.Semaphore
    parts_per_file: int
    memory: MemoryBudget  # bytes of file data held at once (transfer.max_memory)
    common_params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    spread_below: str = ""  # with keys.spread: hash, s3.prefix: the hash segment follows it

    @classmethod
    def build(cls, *, config: Config, client: Any, retry: RetryPolicy, journal: Journal,
              data: DataPath | None = None) -> "TransferContext":
        t, s3 = config.transfer, config.s3
        params: dict[str, Any] = {}
        if s3.storage_class:
            params["StorageClass"] = s3.storage_class
        if s3.server_side_encryption:
            params["ServerSideEncryption"] = s3.server_side_encryption
        if s3.sse_kms_key_id:
            params["SSEKMSKeyId"] = s3.sse_kms_key_id
        return cls(client=client, data=data or BotocoreDataPath(client), bucket=s3.bucket,
                   retry=retry, journal=journal,
                   checksums=ChecksumChoice(t.checksum, s3.endpoint_url),
                   multipart_threshold=t.multipart_threshold, part_size=t.part_size,
                   part_slots=asyncio.Semaphore(t.max_parts_in_flight),
                   parts_per_file=t.max_parts_in_flight,
                   memory=MemoryBudget(capacity=t.max_memory), common_params=params,
                   metadata=dict(s3.metadata),
                   spread_below=s3.prefix if config.keys.spread == "hash" else "")

    def object_params(self, job: FileJob) -> dict[str, Any]:
        """Parameters set when an object is created (PUT or CreateMultipartUpload)."""
        content_type, _ = mimetypes.guess_type(job.relative)
        params = dict(self.common_params)
        params["ContentType"] = content_type or "application/octet-stream"
        metadata = {**self.metadata, **job.metadata}
        if metadata:
            # Checked here, where every object's metadata is built (PUT and
            # CreateMultipartUpload, either data path): a raw UTF-8 header would be
            # stored garbled, and botocore's own check misses the other rules.
            try:
                check_metadata(metadata, what="user metadata")
            except MetadataError as exc:
                raise PermanentError(f"{self.describe(job, 'upload')}: not sent: {exc}",
                                     code="InvalidMetadata") from None
            params["Metadata"] = metadata
        return params

    async def call(self, operation: Callable[[], Awaitable[T]], *, key: str, what: str,
                   nbytes: int = 0) -> T:
        """Send one request on `key`'s rate-limiter partition, through the retry layer."""
        return await self.retry.call(operation, what=what, nbytes=nbytes,
                                     partition=self.partition_of(key))

    def partition_of(self, key: str) -> str:
        """The rate-limiter partition of the object `key` in our bucket."""
        return partition_for(self.bucket, key, below=self.spread_below)

    def describe(self, job: FileJob, operation: str) -> str:
        return f"{operation} s3://{self.bucket}/{job.key} ({job.path})"
