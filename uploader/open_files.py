"""The open-files limit (`ulimit -n`): each file in flight holds its file and a connection.

Linux gives a process a soft limit on open files, which it may raise up to a hard
one. systemd starts services at 1024 soft (524288 hard), and many containers at
1024 too: far short of what a `transfer.concurrency` of 500 or 1,000 needs. As
Go's runtime does for every Go program (s5cmd and rclone among them), the soft
limit is raised to the hard one at start. If even the hard limit is short, the
files in flight are capped at what fits, with a warning naming both numbers; a
file that still finds no free descriptor (something else took them) waits and
is tried again (`OutOfDescriptors`, a transient error), never failed.
"""

from __future__ import annotations

import functools
import logging
import resource

from uploader.config import Config

log = logging.getLogger(__name__)

#: Descriptors besides the files in flight: the interpreter, SQLite, the metrics
#: server, idle pooled connections, inotify, logs.
RESERVED = 64


def raise_soft_limit() -> None:
    """Raise the soft limit on open files to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. a sandbox that forbids it: keep the soft one
            pass


def descriptors_needed(concurrency: int, parts_in_flight: int) -> int:
    """At most: a file and a connection per file in flight, a connection per part."""
    return 2 * concurrency + parts_in_flight + RESERVED


def fitting_concurrency(config: Config) -> int:
    """`transfer.concurrency`, capped at what the open-files limit leaves room for."""
    wanted, parts = config.transfer.concurrency, config.transfer.max_parts_in_flight
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limit == resource.RLIM_INFINITY or descriptors_needed(wanted, parts) <= limit:
        return wanted
    fitting = max(1, (limit - RESERVED - parts) // 2)
    _warn_cut(wanted, descriptors_needed(wanted, parts), limit, fitting)
    return fitting


@functools.cache  # once per process (the worker pool and the SQS source both ask)
def _warn_cut(wanted: int, needed: int, limit: int, fitting: int) -> None:
    log.warning("transfer.concurrency %d may need up to %d open files, over this process's "
                "limit of %d (ulimit -n; a container's nofile limit): uploading %d files at "
                "a time; raise the limit for more", wanted, needed, limit, fitting)
