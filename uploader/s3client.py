"""Building the S3 clients: one per process, shared by every task.

The aioboto3 client carries the control plane (multipart create/complete/
abort, ListParts, HeadObject, listings); the data path (`uploader.s3.datapath`)
carries PutObject and UploadPart, over aiohttp or through the same client
(`transfer.data_path`). Both come from one aiobotocore session, so they sign
with the same credentials object and its refresh.

botocore's own retries are off (one attempt): retries live in `uploader.retry`
only, so attempts never multiply across layers.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aioboto3
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.configprovider import ConfiguredEndpointProvider
from botocore.exceptions import ProfileNotFound

from uploader import clock_skew
from uploader.config import Config, check_endpoint_url
from uploader.errors import ConfigError
from uploader.s3.datapath import DataPath, connection_pool_size, open_data_path


class ControlPlaneSession(aioboto3.Session):
    """aioboto3's session without its default handlers, which only add the high-level
    helpers (the clients' upload_file and download_file, resources) that the uploader
    never calls. Adding upload_file imports s3transfer and boto3's transfer manager:
    ~20 ms of CPU at every start, for a client class that only needs its API calls."""

    def _register_default_handlers(self) -> None:
        pass


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
        max_pool_connections=connection_pool_size(config),
        s3=s3_options,
        # Checksums are ours to choose (transfer.checksum); botocore's default
        # CRC32 trailers are rejected by several S3-compatible servers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def configured_endpoint(session: AioSession, service: str, explicit: str | None) -> str | None:
    """The endpoint a client of `service` will talk to: `explicit` (the configuration's),
    else the one botocore finds configured (AWS_ENDPOINT_URL_<SERVICE>, AWS_ENDPOINT_URL,
    the profile's `endpoint_url`), else None (AWS's own, always HTTPS)."""
    if explicit is not None:
        return explicit
    if session.get_config_variable("ignore_configured_endpoint_urls"):
        return None
    return ConfiguredEndpointProvider(full_config=session.full_config,
                                      scoped_config=session.get_scoped_config(),
                                      client_name=service).provide()


def tls_verification(endpoint_url: str | None) -> bool | None:
    """`verify` for a client: False for a plain-HTTP endpoint reached without a proxy.

    There is no certificate to check on plain HTTP, but aiobotocore builds a
    verifying TLS context anyway, loading the whole CA bundle (~20 ms of CPU at
    every start). None: botocore's default (verify, with its CA bundle).
    """
    plain_http = endpoint_url is not None and endpoint_url.lower().startswith("http://")
    proxied = any(os.environ.get(name) for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                                     "all_proxy"))
    return False if plain_http and not proxied else None




def check_aws_settings(config: Config) -> None:
    """Fail with the setting's name if what botocore would read is unusable: the AWS
    profile in use does not exist, or an endpoint in the environment is malformed.

    botocore raises from deep inside building a client (S3's or SQS's); checked
    first, the start stops with a configuration error instead.
    """
    _check_endpoint_variables(config)
    _check_profile(config)


def _check_endpoint_variables(config: Config) -> None:
    """The variables botocore reads for an endpoint the configuration leaves unset."""
    names = []
    if config.s3.endpoint_url is None:
        names += ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
    if config.source.type == "sqs" and config.source.endpoint_url is None:
        names += ["AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"]
    for name in dict.fromkeys(names):
        value = os.environ.get(name)
        if value:
            try:
                check_endpoint_url(value)
            except ValueError as exc:
                raise ConfigError(f"{name} (environment): {exc}") from None


# The session the start-up check built, kept for open_s3: building one registers
# botocore's ~230 handlers, ~15 ms of CPU at every start. Taken only under the same
# profile and AWS_* environment it was built in.
_checked_sessions: dict[tuple[str | None, frozenset[tuple[str, str]]], AioSession] = {}


def _session_key(profile: str | None) -> tuple[str | None, frozenset[tuple[str, str]]]:
    return profile, frozenset((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))


def _session(profile: str | None) -> AioSession:
    return _checked_sessions.pop(_session_key(profile), None) or AioSession(profile=profile)


def _check_profile(config: Config) -> None:
    session = AioSession(profile=config.s3.profile)
    try:
        session.get_scoped_config()
        _checked_sessions.clear()  # one start, one session
        _checked_sessions[_session_key(config.s3.profile)] = session
    except ProfileNotFound as exc:
        where = "s3.profile" if config.s3.profile else "AWS_PROFILE (environment)"
        files = " or ".join(str(session.get_config_variable(name))
                            for name in ("config_file", "credentials_file"))
        raise ConfigError(f"{where}: no AWS profile named {exc.kwargs['profile']!r} in "
                          f"{files}; add it there, or leave the profile unset for the "
                          "standard credential chain") from None


@dataclass(frozen=True)
class S3Access:
    client: Any  # the aioboto3 S3 client: the control plane
    data: DataPath  # PutObject and UploadPart


@contextlib.asynccontextmanager
async def open_s3(config: Config) -> AsyncIterator[S3Access]:
    """The control-plane client and the data path, closed in reverse order."""
    core = _session(config.s3.profile)
    async with _control_client(config, core) as client, \
            open_data_path(config, client=client, session=core) as data:
        yield S3Access(client=client, data=data)


@contextlib.asynccontextmanager
async def open_s3_client(config: Config) -> AsyncIterator[Any]:
    """The aioboto3 client alone (for callers that send no object data)."""
    async with _control_client(config, _session(config.s3.profile)) as client:
        yield client


def _control_client(config: Config, core: AioSession) -> Any:
    clock_skew.install()  # every client signs with the server's time once a skew is seen
    endpoint = configured_endpoint(core, "s3", config.s3.endpoint_url)
    return ControlPlaneSession(botocore_session=core).client(
        "s3", endpoint_url=config.s3.endpoint_url, region_name=config.s3.region,
        verify=tls_verification(endpoint), config=client_config(config))
