"""The `uploader` command: parse, build, run. Thin on purpose.

Exit codes: 0 success; 1 some files failed (one-shot) or a runtime error;
2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sqlite3
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Coroutine, Sequence

from uploader import hangup
from uploader.config import (
    Config,
    apply_env_overrides,
    check_endpoint_url,
    check_region,
    explain,
    load_config,
    read_config_file,
    validate_config,
)
from uploader.errors import ConfigError
from uploader.journal import FAILED, PENDING, Journal
from uploader.logs import setup_logging
from uploader.open_files import raise_soft_limit

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
CONFIG_HELP = "the YAML configuration"
log = logging.getLogger("uploader")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    raise_soft_limit()  # as high as allowed: each file in flight holds two descriptors
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"uploader: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except sqlite3.Error as exc:  # e.g. the journal is locked or its disk failed
        print(f"uploader: the journal: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader left (`uploader check-config FILE | head -1`): nothing more can be
        # said, and the exit must not try to flush stdout into the closed pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uploader", description="Upload every file of a directory to S3, and keep doing it.")
    parser.add_argument("--version", action="version", version=f"uploader {version('uploader')}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="the daemon: watch source.directory (or drain source.queue_url) and "
        "upload until stopped")
    run.add_argument("--config", required=True, type=Path, metavar="FILE", help=CONFIG_HELP)
    run.set_defaults(handler=_cmd_run)

    upload = commands.add_parser(
        "upload", help="upload files and folders once, then exit",
        usage="%(prog)s [-h] [--config FILE] [--endpoint-url URL] [--region REGION] "
        "PATH... s3://BUCKET[/PREFIX]")
    upload.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML settings (transfer, s3, filters)")
    upload.add_argument("--endpoint-url", metavar="URL", help="an S3-compatible endpoint")
    upload.add_argument("--region", help="the bucket's region")
    upload.add_argument(
        "paths", nargs="+", metavar="PATH... s3://BUCKET[/PREFIX]",
        help="files and folders, then where they go: a folder's files below PREFIX; a file "
        "given alone at PREFIX itself unless PREFIX is empty or ends in '/'")
    upload.set_defaults(handler=_cmd_upload)

    enqueue = commands.add_parser(
        "enqueue", help="watch source.directory and publish each settled file to "
        "source.queue_url for a fleet of `uploader run` (source.type: sqs) to upload")
    enqueue.add_argument("--config", required=True, type=Path, metavar="FILE",
                         help=CONFIG_HELP)
    enqueue.set_defaults(handler=_cmd_enqueue)

    check = commands.add_parser("check-config", help="validate a configuration and explain it")
    check.add_argument("config", type=Path, metavar="FILE", help=CONFIG_HELP)
    check.set_defaults(handler=_cmd_check_config)

    status = commands.add_parser("status", help="counts by state, uploads in progress, failures")
    status.add_argument("--config", required=True, type=Path, metavar="FILE",
                        help="the daemon's YAML configuration (for its state_dir)")
    status.set_defaults(handler=_cmd_status)

    retry = commands.add_parser("retry-failed", help="put failed files back in line")
    retry.add_argument("--config", required=True, type=Path, metavar="FILE",
                       help="the daemon's YAML configuration (for its state_dir)")
    retry.set_defaults(handler=_cmd_retry_failed)

    health = commands.add_parser(
        "health", help="ask the running daemon's /readyz (on metrics.listen) whether it is "
        "ready: exit 0 if so, 1 otherwise (for a container's HEALTHCHECK)")
    health.add_argument("--config", required=True, type=Path, metavar="FILE",
                        help="the daemon's YAML configuration (for metrics.listen)")
    health.set_defaults(handler=_cmd_health)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from uploader.daemon import run_daemon
    from uploader.s3client import check_aws_settings

    hangup.hold()
    config = load_config(args.config)
    check_aws_settings(config)
    setup_logging(level=config.logging.level, fmt=config.logging.format,
                  library_level=config.logging.library_level)
    return _run_async(lambda: run_daemon(config, config_path=args.config))


def _cmd_enqueue(args: argparse.Namespace) -> int:
    from uploader.daemon import stop_event
    from uploader.enqueue import run_enqueue
    from uploader.s3client import check_aws_settings

    hangup.hold()
    config = load_config(args.config)
    check_aws_settings(config)
    setup_logging(level=config.logging.level, fmt=config.logging.format)

    async def main() -> int:
        return await run_enqueue(config, stop_event())

    return _run_async(main)


def _cmd_upload(args: argparse.Namespace) -> int:
    from uploader.oneshot import S3Url, run_oneshot, source_paths
    from uploader.s3client import check_aws_settings

    if len(args.paths) < 2:
        raise ConfigError("upload needs at least one PATH and then s3://BUCKET[/PREFIX]")
    *texts, destination = args.paths
    url = S3Url.parse(destination)
    sources = source_paths(texts)
    prefix, file_name = url.target(sources)
    config = _oneshot_config(args, bucket=url.bucket, prefix=prefix, first=sources[0])
    check_aws_settings(config)
    setup_logging(level=config.logging.level, fmt=config.logging.format,
                  library_level=config.logging.library_level)
    summary = _run_async(lambda: run_oneshot(config, sources, progress=sys.stderr,
                                             file_name=file_name))
    print(summary.line())
    return EXIT_OK if summary.ok else EXIT_FAILED


def _oneshot_config(args: argparse.Namespace, *, bucket: str, prefix: str,
                    first: Path) -> Config:
    raw: dict[str, Any] = {}
    if args.config:
        raw = read_config_file(args.config)
    apply_env_overrides(raw, os.environ)
    raw.setdefault("source", {})["directory"] = str(first)
    s3 = raw.setdefault("s3", {})
    s3.update(bucket=bucket, prefix=prefix)
    if args.endpoint_url:
        s3["endpoint_url"] = _option("--endpoint-url", check_endpoint_url, args.endpoint_url)
    if args.region:
        s3["region"] = _option("--region", check_region, args.region)
    raw.setdefault("source", {})["settle_seconds"] = 0
    return validate_config(raw, origin="upload")


def _option(name: str, check: Callable[[str], str], value: str) -> str:
    """A command-line value checked as its setting is, the error naming the option."""
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{args.config}: valid\n")
    print(explain(config))
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    journal = _open_existing_journal(config)
    try:
        counts = journal.counts()
        print("files: " + ", ".join(f"{state} {count}" for state, count in counts.items()))
        for upload in journal.uploads():
            done = journal.count_parts(upload.upload_id)
            print(f"in progress: {upload.path} -> {upload.key}: {done}/{upload.parts} parts")
        for record in journal.files_in_state(PENDING):
            if record.error:  # deferred after a transient error, or changed while uploading
                print(f"waiting to retry: {record.path}: {record.error}")
        for record in journal.files_in_state(FAILED):
            print(f"failed: {record.path}: {record.error}")
    finally:
        journal.close()
    return EXIT_OK


def _cmd_retry_failed(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.source.type == "sqs":
        raise ConfigError(
            "retry-failed: with source.type sqs the queue holds the work, not the journal: "
            "a failed file's message went back to the queue and, after its "
            "maxReceiveCount, to the dead-letter queue; move it back from there (a DLQ "
            "redrive) to try the file again")
    journal = _open_existing_journal(config)
    try:
        count = journal.reset_failed()
    finally:
        journal.close()
    print(f"{count} failed file(s) put back in line; the running daemon takes them at its "
          "next rescan, or at its next start")
    return EXIT_OK


def _cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 or 1 only, even for a bad configuration: Docker reserves 2."""
    from uploader.health import check_ready

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"uploader health: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not config.metrics.enabled:
        print(f"uploader health: metrics.enabled is false in {args.config}, so the daemon "
              "serves no /readyz to ask", file=sys.stderr)
        return EXIT_FAILED
    ready, message = check_ready(config.metrics.listen)
    print(message, file=sys.stdout if ready else sys.stderr)
    return EXIT_OK if ready else EXIT_FAILED


def _open_existing_journal(config: Config) -> Journal:
    return Journal.in_state_dir(config.state_dir, create=False)


def _run_async(factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    # Every upload allocates a few hundred short-lived objects; at CPython's default
    # (a collection every 700 allocations) the cyclic GC took ~12% of the CPU of
    # many small uploads (bench/throughput.py), at 10,000 about 2%. (The console
    # command starts with it off, see `uploader.entry`.)
    gc.set_threshold(10_000, 50, 50)
    gc.enable()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(factory())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
