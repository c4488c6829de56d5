"""Building the aioboto3 S3 client: one per process, shared by every task.

botocore's own retries are off (one attempt): retries live in `uploader.retry`
only, so attempts never multiply across layers.
"""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

import aioboto3
from aiobotocore.config import AioConfig

from uploader.config import Config


def client_config(config: Config) -> AioConfig:
    t = config.transfer
    s3_options: dict[str, Any] = {}
    if config.s3.addressing_style != "auto":
        s3_options["addressing_style"] = config.s3.addressing_style
    return AioConfig(
        region_name=config.s3.region,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=t.connect_timeout_seconds,
        read_timeout=t.read_timeout_seconds,
        max_pool_connections=t.concurrency + t.max_parts_in_flight + 4,
        s3=s3_options,
        # Checksums are ours to choose (transfer.checksum); botocore's default
        # CRC32 trailers are rejected by several S3-compatible servers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


@contextlib.asynccontextmanager
async def open_s3_client(config: Config) -> AsyncIterator[Any]:
    session = aioboto3.Session(profile_name=config.s3.profile)
    async with session.client("s3", endpoint_url=config.s3.endpoint_url,
                              region_name=config.s3.region,
                              config=client_config(config)) as client:
        yield client
