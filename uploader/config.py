"""The configuration schema: one YAML file, validated at load.

Every field is documented here once, in its `description`; `uploader
check-config` and the README's reference are generated from this schema.
Unknown keys are rejected by name. Sizes are written `8MiB`, `512KiB`, `1GiB`.

Any key can be overridden from the environment: `UPLOADER_` followed by the
key's path in upper case with `__` between levels, e.g.
`UPLOADER_S3__BUCKET=my-bucket` or `UPLOADER_TRANSFER__PART_SIZE=16MiB`. The value
is read as a YAML scalar, so `UPLOADER_S3__ENDPOINT_URL=null` works.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from uploader.errors import ConfigError
from uploader.s3.metadata import check_metadata

ENV_PREFIX = "UPLOADER_"
ENV_NESTING = "__"

_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
          "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any) -> int:
    """`8MiB` -> 8388608. Plain numbers are bytes, and must be whole."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 8MiB, got a boolean ({str(value).lower()})")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"expected a size such as 8MiB, 512KiB or 1GiB, got {value!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    if _UNITS[unit] == 1 and not number.is_integer():
        # A fraction of a byte is a typo, not a size: say so rather than truncate it.
        raise ValueError(f"expected a whole number of bytes, got {value!r}")
    return int(number * _UNITS[unit])


def _not_a_boolean(value: Any) -> Any:
    # pydantic reads YAML's `true` as 1 in a number field; a count of `true` is a mistake.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got a boolean ({str(value).lower()})")
    return value


Size = Annotated[int, BeforeValidator(parse_size)]
Integer = Annotated[int, BeforeValidator(_not_a_boolean)]
Number = Annotated[float, BeforeValidator(_not_a_boolean)]
MAX_PUT_BYTES = 5 * 1024**3  # S3 refuses a single PUT (and a part) larger than 5 GiB
MAX_CONCURRENCY = 1024  # transfer.concurrency's ceiling (a reload may raise it up to this)


# ----------------------------------------------------------- names and addresses
# botocore's own rules, copied so that loading a configuration does not import
# botocore; tests/test_input_errors.py checks that they still agree with it.
_BUCKET = re.compile(r"^[a-zA-Z0-9.\-_]{1,255}$")  # botocore.handlers.VALID_BUCKET
_REGION = re.compile(r"^(?![0-9]+$)(?!-)[a-zA-Z0-9-]{,63}(?<!-)$")  # utils.validate_region_name
_HOST_LABEL = re.compile(r"^(?!-)[a-zA-Z0-9-]{1,63}(?<!-)$")  # utils.is_valid_endpoint_url
_PORT = re.compile(r"^[0-9]{1,5}$")


def check_bucket_name(name: str) -> str:
    """Legacy buckets may hold capitals and `_` and run to 255 characters: not refused."""
    bad = sorted({c for c in name if not re.fullmatch(r"[a-zA-Z0-9._-]", c)})
    if bad:
        raise ValueError(f"{name!r} is not a bucket name: only letters, digits, '.', '-' and "
                         f"'_' are allowed (found {', '.join(repr(c) for c in bad)})")
    if not 3 <= len(name) <= 255 or not _BUCKET.match(name):
        raise ValueError(f"{name!r} is not a bucket name: 3 to 255 characters (63 for "
                         "buckets created since 2018)")
    return name


def check_region(name: str) -> str:
    if not name or not _REGION.match(name):
        raise ValueError(f"{name!r} is not a region name: letters, digits and '-' "
                         "(not first or last), e.g. us-east-1")
    return name


def check_host(host: str) -> str:
    """An IP address or a host name (labels of letters, digits and '-')."""
    if ":" in host or re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IP address") from None
        return host
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{host!r} is not a valid host name: dot-separated labels of letters, "
                         "digits and '-' (not first or last)")
    return host


def check_endpoint_url(url: str) -> str:
    expected = ("expected http:// or https://, a host and an optional port, e.g. "
                f"http://127.0.0.1:8333; got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when not a number in 0-65535
    except ValueError as exc:
        raise ValueError(f"{expected} ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname \
            or any(c.isspace() for c in url):
        raise ValueError(expected)
    if port == 0:
        raise ValueError(f"{expected} (port 0 cannot be connected to)")
    try:
        check_host(parts.hostname)
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    return url


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:9100`) -> (host, port); an empty host means all."""
    host, colon, port = listen.rpartition(":")
    if not colon or not _PORT.match(port):
        raise ValueError(f"expected host:port, e.g. 127.0.0.1:9100 or [::1]:9100; got {listen!r}")
    if int(port) > 65535:
        raise ValueError(f"port {port} is out of range (0-65535) in {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"only an IPv6 address goes in brackets, got {listen!r}")
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets, e.g. [::1]:9100; got {listen!r}")
    if host:
        try:
            check_host(host)
        except ValueError as exc:
            raise ValueError(f"{exc} in {listen!r}") from None
    return host, int(port)


def _check_listen(listen: str) -> str:
    parse_listen(listen)
    return listen


BucketName = Annotated[str, AfterValidator(check_bucket_name)]
Region = Annotated[str, AfterValidator(check_region)]
EndpointUrl = Annotated[str, AfterValidator(check_endpoint_url)]
Listen = Annotated[str, AfterValidator(_check_listen)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(Section):
    type: Literal["directory", "sqs"] = Field(
        "directory", description="Where files come from. `directory`: a watched local "
        "directory. `sqs`: messages on an SQS queue naming files on a shared filesystem "
        "(a fleet of uploaders drains one queue; `uploader enqueue` fills it).")
    directory: Path | None = Field(
        None, description="The directory to watch, recursively (required for `type: "
        "directory`). With `sqs`: the shared root that object keys are relative to.")
    queue_url: str | None = Field(
        None, description="With `type: sqs` (required) and for `uploader enqueue`: the queue's "
        "URL. Messages are JSON: `{\"path\": ..., \"key\": optional, \"metadata\": optional}`.")
    endpoint_url: EndpointUrl | None = Field(
        None, description="An SQS-compatible endpoint (e.g. ElasticMQ); `null` = AWS.")
    region: Region | None = Field(None, description="The queue's region; `null` = `s3.region`.")
    wait_time_seconds: Integer = Field(
        20, ge=0, le=20, description="SQS long polling: how long one receive waits for messages.")
    visibility_timeout_seconds: Integer = Field(
        120, ge=5, le=43200, description="How long a received message stays hidden from other "
        "uploaders; extended every third of it while its upload runs (heartbeat). After a "
        "crash, the message reappears this long after the last heartbeat.")
    include: list[str] = Field(
        default_factory=lambda: ["**"],
        description="Glob patterns on the path relative to `directory`; only matching files "
        "are uploaded. A pattern matches the whole path from the root: `*.csv` is `x.csv` but "
        "not `a/x.csv`, `**/*.csv` both (a leading `/` changes nothing). `**` matches any "
        "number of folders; `*` anything but `/`, `?` one such character, `[a-z]` one of a "
        "class (`[!...]` or `[^...]` negated; `[[]` is a literal `[`); `{csv,gz}` "
        "alternatives (not nested); a trailing `/` everything below that folder. An unclosed "
        "`[` or `{` is a config error.")
    exclude: list[str] = Field(
        default_factory=list,
        description="Glob patterns on the relative path, as for `include`; matching files are "
        "never uploaded, e.g. `tmp/` or `**/*.{bak,old}`. Exclude wins over include, and a "
        "folder whose every file is excluded (a pattern ending in `/` or `/**`) is not "
        "entered at all.")

    @field_validator("include", "exclude")
    @classmethod
    def _valid_globs(cls, patterns: list[str]) -> list[str]:
        from uploader.filters import glob_to_regex  # not at the top: filters imports this module

        for pattern in patterns:
            glob_to_regex(pattern)  # a GlobError is a ValueError naming the pattern
        return patterns
    ignore_hidden: bool = Field(
        True, description="Ignore files and folders whose name starts with `.`.")
    ignore_temporary: bool = Field(
        True, description="Ignore editor and download temporaries: `*.tmp`, `*.temp`, `*.part`, "
        "`*.partial`, `*.crdownload`, `*.swp`, `*~`, `#*#`.")
    settle_seconds: Number = Field(
        2.0, ge=0, description="A file is taken only after it was closed (or moved in) and then "
        "stayed unchanged (size and mtime) for this long.")
    rescan_interval_seconds: Number = Field(
        300.0, gt=0, description="A full rescan of the directory runs at start and then this "
        "often, catching files whose events were missed (inotify queue overflow).")
    follow_symlinks: bool = Field(
        False, description="Upload the targets of symbolic links (otherwise links are skipped).")


class S3Config(Section):
    bucket: BucketName = Field(description="The target bucket.")
    prefix: str = Field(
        "", description="Prepended to every object key, e.g. `incoming/`. The key is "
        "`prefix` + the path relative to `source.directory` with `/` separators.")
    region: Region = Field("us-east-1", description="The bucket's region.")
    endpoint_url: EndpointUrl | None = Field(
        None, description="An S3-compatible endpoint, e.g. `http://127.0.0.1:8333`. "
        "`null` means AWS.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="`path` puts the bucket in the path (most S3-compatible servers), "
        "`virtual` in the host name, `auto` lets botocore choose.")
    storage_class: str | None = Field(
        None, description="e.g. `STANDARD_IA`, `INTELLIGENT_TIERING`; `null` = bucket default.")
    server_side_encryption: Literal["AES256", "aws:kms"] | None = Field(
        None, description="SSE-S3 (`AES256`) or SSE-KMS (`aws:kms`); `null` = bucket default.")
    sse_kms_key_id: str | None = Field(
        None, description="The KMS key for `aws:kms`; `null` = the AWS managed key.")
    metadata: dict[str, str] = Field(
        default_factory=dict, description="User metadata (`x-amz-meta-*`) set on every object: "
        "US-ASCII values, keys that are valid header names, at most 2 KB in all (S3's rules).")

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        check_metadata(value, what="user metadata")  # a MetadataError is a ValueError
        return value
    profile: str | None = Field(
        None, description="An AWS profile name; `null` = the standard credential chain "
        "(environment, profile, container and instance roles).")


class TransferConfig(Section):
    multipart_threshold: Size = Field(
        8 * 1024**2, ge=0, description="Files of at least this size are sent as multipart "
        "uploads; smaller ones with a single PUT (so at most 5GiB, the largest PUT S3 takes).")
    part_size: Size = Field(
        8 * 1024**2, ge=5 * 1024**2, le=5 * 1024**3,
        description="Size of each multipart part (5MiB..5GiB); raised automatically so no "
        "upload needs more than 10,000 parts.")
    concurrency: Integer = Field(
        64, ge=1, le=MAX_CONCURRENCY, description="Files uploaded at the same time (memory stays within "
        "`max_memory` whatever the number).")
    max_parts_in_flight: Integer = Field(
        8, ge=1, le=1024, description="Multipart parts sent at the same time, over all files; "
        "each holds one part in memory (within `max_memory`).")
    # 64 MiB, as much as the default parts in flight (8 x 8 MiB); boto3's transfer manager
    # holds ~80. More only adds fresh pages to fault in and zero: on bench/'s 200 x 1 MiB at
    # concurrency 256, 256 MiB took 7-13% longer and 3-23% more CPU than 64 (medians of two
    # sets of interleaved runs; RSS 285 vs 160 MB). Files over 78 GiB (parts past 8 MiB)
    # get fewer parts in flight: the README says to raise it for them.
    max_memory: Size = Field(
        64 * 1024**2, ge=1024**2, description="File bytes held in memory at once over all "
        "uploads: PUT bodies and multipart parts being read or sent. Parts and files wait "
        "for room, so memory stays bounded whatever the file sizes; a single part (or PUT) "
        "larger than this is sent alone. Raise it with `max_parts_in_flight`: each part in "
        "flight holds `part_size`.")
    data_path: Literal["aiohttp", "botocore"] = Field(
        "aiohttp", description="How object bytes are sent (PutObject, UploadPart). `aiohttp`: "
        "a lean HTTP path signed by botocore's own SigV4 signer with the same credentials "
        "chain, several times less CPU per request. `botocore`: everything through aioboto3 "
        "(a fallback). Control requests (multipart create/complete/abort, listings, HEAD) "
        "always use aioboto3.")
    checksum: Literal["auto", "md5", "crc32", "crc32c", "sha256", "none"] = Field(
        "auto", description="Integrity check sent with every PUT and part so the server "
        "rejects corrupted bytes. `md5` (Content-MD5) works on AWS and every S3-compatible "
        "server; `crc32`/`crc32c`/`sha256` use the newer `x-amz-checksum-*` headers. `auto`: "
        "`crc32c` on AWS (`s3.endpoint_url` unset or on amazonaws.com; a fraction of MD5's "
        "CPU); on any other endpoint `md5`, until the first PUT's or part's answer shows the "
        "server verifies `crc32c` (it echoes `x-amz-checksum-crc32c`), then `crc32c` for new "
        "uploads; a server that refuses the header gets `md5` and loses no file.")
    connect_timeout_seconds: Number = Field(10.0, gt=0, description="TCP connect timeout.")
    read_timeout_seconds: Number = Field(
        60.0, gt=0, description="Time allowed without progress on a response.")

    @field_validator("multipart_threshold")
    @classmethod
    def _one_put_at_most_5gib(cls, value: int) -> int:
        if value > MAX_PUT_BYTES:
            raise ValueError(f"at most 5GiB: S3 refuses a single PUT larger than that, so "
                             f"larger files must go as multipart uploads (got {value} bytes)")
        return value


class KeysConfig(Section):
    spread: Literal["none", "hash"] = Field(
        "none", description="`hash` puts a leading segment derived from the relative path "
        "before the key (`prefix` + `<hh>/` + path), so a burst of writes spreads over "
        "`partitions` S3 prefixes from the first second; the original path is stored in the "
        "object's metadata (`x-amz-meta-source-path`). `none`: the key is `prefix` + path.")
    partitions: Integer = Field(
        16, ge=1, le=4096, description="With `spread: hash`: how many leading segments. "
        "Segment = the first 8 hex digits of SHA-256(relative path) as a number, modulo "
        "`partitions`, written as lower-case hex padded to the width of `partitions - 1`.")


class RetryConfig(Section):
    max_attempts: Integer = Field(
        8, ge=1, description="Attempts per request (a PUT or one part); after the last, the "
        "file is retried later (transient errors) or marked failed (permanent ones).")
    backoff_base_seconds: Number = Field(
        0.1, gt=0, description="First retry waits up to this long (full jitter), doubling.")
    backoff_max_seconds: Number = Field(
        20.0, gt=0, description="Cap on a single retry's wait (and on a server's Retry-After).")
    budget_capacity: Integer = Field(
        500, ge=0, description="Retry budget shared by all requests (as the AWS SDKs' standard "
        "mode): each retry takes tokens, each success gives one back; when empty, requests "
        "are not retried and their files wait for `retry_later_seconds`.")
    budget_retry_cost: Integer = Field(5, ge=0, description="Tokens a retry after an error costs.")
    budget_timeout_cost: Integer = Field(
        10, ge=0, description="Tokens a retry after a timeout or connection failure costs.")
    retry_later_seconds: Number = Field(
        30.0, gt=0, description="A file whose upload failed with a transient error (retries "
        "exhausted) is put back in line after this long; it is not marked failed.")


class BreakerConfig(Section):
    failure_threshold: Integer = Field(
        5, ge=1, description="Consecutive failures (connection errors, timeouts, 5xx other "
        "than throttling) that open the circuit breaker: requests then wait, queued, instead "
        "of being sent.")
    open_seconds: Number = Field(
        5.0, gt=0, description="How long the breaker stays open before one probe request is "
        "let through; success closes it, failure reopens it for twice as long.")
    max_open_seconds: Number = Field(
        60.0, gt=0, description="Longest open period while an outage lasts. `uploader "
        "upload`, which must end, gives up after `retry.max_attempts` failed probes in a row "
        "(about 5 minutes with the defaults): the files left fail; the daemon waits on.")


class RateLimitConfig(Section):
    adaptive: bool = Field(
        True, description="Slow down per S3 prefix on throttling (503 SlowDown, 429) and "
        "grow back smoothly; `false` sends as fast as concurrency allows.")
    max_requests_per_second: Number | None = Field(
        None, gt=0, description="Fixed ceiling on requests/s to each prefix partition; `null` = "
        "none.")
    max_bytes_per_second: Size | None = Field(
        None, gt=0, description="Fixed ceiling on upload bytes/s over all requests, e.g. "
        "`50MiB`; `null` = none.")



class JanitorConfig(Section):
    enabled: bool = Field(
        True, description="Abort abandoned multipart uploads under `s3.prefix` (ones the "
        "journal does not know), at start and every `interval_seconds`.")
    interval_seconds: Number = Field(3600.0, gt=0, description="How often the janitor runs.")
    abort_after_seconds: Number = Field(
        86400.0, gt=0, description="Only uploads started at least this long ago are aborted, "
        "so uploads another instance or tool is still writing are left alone.")
    forget_after_seconds: Number = Field(
        7 * 86400.0, gt=0, description="The journal's rows of files finished (uploaded, "
        "skipped, enqueued) at least this long ago whose file is gone (deleted or moved after "
        "upload) are deleted at each janitor run, so the journal does not grow for ever.")

class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level.")
    format: Literal["text", "json"] = Field(
        "text", description="`json`: one JSON object per line (for containers); `text`: for people.")
    library_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the AWS SDK's and HTTP libraries' own logs (botocore, "
        "aiobotocore, aiohttp), never more verbose than `level`; `DEBUG` shows every request. "
        "Credentials, signatures and presigned URLs are redacted from every log line.")
    repeats_summary_seconds: Number = Field(
        60.0, ge=0, description="The daemon's repeated lines, a file deferred (put back in "
        "line after a transient error) or not journaled, by reason: the first is logged at "
        "once, the rest are counted and summed up in one line per this many seconds (each is "
        "still logged at DEBUG). `0` logs every one.")


class MetricsConfig(Section):
    enabled: bool = Field(
        True, description="Serve Prometheus metrics (`/metrics`), liveness (`/healthz`) and "
        "readiness (`/readyz`: the bucket answers HeadBucket with these credentials, the "
        "journal is writable and the watched folder is there) over HTTP on `listen`. "
        "`uploader health` asks `/readyz`.")
    listen: Listen = Field(
        "127.0.0.1:9100",
        description="`host:port` to serve on; `0.0.0.0:9100` for every interface (in a "
        "container). Port `0` picks a free port (logged at start).")
    top_partitions: Integer = Field(
        10, ge=1, le=1000, description="The limiter's rate is exported per S3 partition for "
        "this many partitions (the most throttled first); the rest are summed under "
        "`partition=\"other\"`, so the number of series stays bounded.")


class Config(Section):
    source: SourceConfig = Field(description="What to upload.")
    s3: S3Config = Field(description="Where to upload it.")
    transfer: TransferConfig = Field(
        default_factory=TransferConfig, description="How to upload it.")
    keys: KeysConfig = Field(default_factory=KeysConfig, description="How keys are named.")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retries.")
    breaker: BreakerConfig = Field(
        default_factory=BreakerConfig, description="The circuit breaker per endpoint.")
    rate_limit: RateLimitConfig = Field(
        default_factory=RateLimitConfig, description="The request-rate limiter.")
    janitor: JanitorConfig = Field(
        default_factory=JanitorConfig, description="Cleaning up abandoned multipart uploads.")
    state_dir: Path = Field(
        Path("/var/lib/uploader"),
        description="Holds the journal (`journal.sqlite3`), which records every file's state.")
    state_dir_lock_wait_seconds: Number = Field(
        60.0, ge=0, description="`uploader run`/`enqueue` finding `state_dir` held by another "
        "instance (in a rolling update on a shared volume, the old one still finishing its "
        "uploads) wait this long for it to stop, then exit 2 naming it; `0`: at once.")
    after_upload: Literal["keep", "delete", "move"] = Field(
        "keep", description="What happens to a source file once its object is verified in S3.")
    move_to: Path | None = Field(
        None, description="With `after_upload: move`: the folder files are moved to, keeping "
        "their relative path; not `source.directory` nor `state_dir`, nor a folder holding "
        "`state_dir`.")
    shutdown_grace_seconds: Number = Field(
        30.0, ge=0, description="On SIGTERM/SIGINT, in-flight uploads get this long to finish; "
        "then they are parked (multipart uploads resume at the next start).")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Metrics, health and readiness over HTTP.")

    @model_validator(mode="after")
    def _move_needs_target(self) -> "Config":
        if self.after_upload == "move" and self.move_to is None:
            raise ValueError("after_upload is 'move' but move_to is not set; "
                             "give the folder files are moved to")
        return self

    @model_validator(mode="after")
    def _source_is_complete(self) -> "Config":
        if self.source.type == "directory" and self.source.directory is None:
            raise ValueError("source.directory: required when source.type is 'directory'")
        if self.source.type == "sqs" and not self.source.queue_url:
            raise ValueError("source.queue_url: required when source.type is 'sqs'")
        return self


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate. Raises ConfigError."""
    raw = read_config_file(Path(path))
    apply_env_overrides(raw, os.environ if environ is None else environ)
    config = validate_config(raw, origin=str(path))
    check_folders(config, origin=str(path))
    return config


def check_folders(config: Config, *, origin: str) -> None:
    """The daemon's folders must differ (a one-shot upload has a journal in memory only).

    Folders *inside* the watched tree are skipped (daemon._dirs_inside); the same
    folder is not: the walk starts there, and a moved file lands where it was. Nor is a
    state_dir inside move_to, where moved files land by their paths.
    """
    folders = [("source.directory", config.source.directory), ("state_dir", config.state_dir)]
    if config.after_upload == "move":
        folders.append(("move_to", config.move_to))
    seen: dict[Path, str] = {}
    for key, folder in folders:
        if folder is None:
            continue
        where = folder.resolve()
        if where in seen:
            why = _SAME_FOLDER[frozenset((key, seen[where]))]
            raise ConfigError(f"{origin}: invalid configuration:\n  {key}: {folder} is the "
                              f"same folder as {seen[where]}; {why}")
        seen[where] = key
    move_to = config.move_to if config.after_upload == "move" else None
    if move_to is not None and config.state_dir.resolve().is_relative_to(move_to.resolve()):
        # A file whose path below source.directory names the journal would land on it.
        raise ConfigError(f"{origin}: invalid configuration:\n  state_dir: {config.state_dir} "
                          f"is inside move_to ({move_to}); a moved file could replace the "
                          "journal. Give move_to and state_dir a folder each")


_SAME_FOLDER = {
    frozenset(("state_dir", "source.directory")):
        "the journal's own files would be uploaded. Give state_dir a folder of its own",
    frozenset(("move_to", "source.directory")):
        "uploaded files would be moved onto themselves. Give move_to a folder outside "
        "source.directory",
    frozenset(("move_to", "state_dir")):
        "a moved file could replace the journal. Give move_to and state_dir a folder each",
}


def validate_config(raw: dict[str, Any], *, origin: str = "<config>") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe_error(err) for err in exc.errors()]
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(lines)) from None


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 text (byte "
                          f"0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as "
                          "UTF-8") from None
    import yaml  # here: ~14 ms at every start, and `uploader upload` often reads no file

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, "
                          f"got {type(data).__name__}")
    return data


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """UPLOADER_S3__BUCKET=x sets raw['s3']['bucket'] = 'x' (value parsed as YAML)."""
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split(ENV_NESTING)]
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        import yaml  # only with an override to read (see read_config_file)

        try:
            node[path[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[path[-1]] = value


def _describe_error(err: Mapping[str, Any]) -> str:
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key{_allowed_keys_hint(err['loc'])}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "value_error":  # ours: the message says what it got (and, at the top, the key)
        message = err["msg"].removeprefix("Value error, ")
        return message if key == "(top level)" else f"{key}: {message}"
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


def _allowed_keys_hint(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    return " (expected one of: " + ", ".join(model.model_fields) + ")"


def explain(config: Config) -> str:
    """A readable account of the effective settings, for `uploader check-config`."""
    lines: list[str] = []
    _explain_model(config, prefix="", lines=lines)
    return "\n".join(lines)


def _explain_model(model: BaseModel, *, prefix: str, lines: list[str]) -> None:
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _explain_model(value, prefix=f"{prefix}{name}.", lines=lines)
            continue
        lines.append(f"{prefix}{name} = {value!r}")
        lines.append(f"    {field.description}")


def reference_markdown() -> str:
    """The configuration reference in Markdown, generated from the schema."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    _reference_rows(Config, prefix="", rows=rows)
    return "\n".join(rows)


def _reference_rows(model: type[BaseModel], *, prefix: str, rows: list[str]) -> None:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _reference_rows(annotation, prefix=f"{prefix}{name}.", rows=rows)
            continue
        default = "required" if field.is_required() else f"`{_default_text(field)}`"
        rows.append(f"| `{prefix}{name}` | {default} | {field.description} |")


def _default_text(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def update_reference(markdown: str) -> str:
    """`markdown` with its configuration reference table replaced by the current one."""
    lines = markdown.split("\n")
    start = lines.index("| key | default | meaning |")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[start:end] = reference_markdown().split("\n")
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m uploader.config            print the reference
    # python -m uploader.config README.md  rewrite the reference table in README.md
    import sys

    if len(sys.argv) > 1:
        readme = Path(sys.argv[1])
        readme.write_text(update_reference(readme.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(reference_markdown())
