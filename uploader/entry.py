"""The `uploader` console command: `uploader.cli.main` with a quick start and a quick exit.

A one-shot upload of a few thousand small files spends as much CPU starting
and stopping the interpreter as uploading, so two costs that buy nothing in a
command-line run are skipped (measured with bench/throughput.py's one-file run,
~500 ms of CPU in all):

- the cyclic garbage collector during imports (~40 ms): importing aiohttp,
  botocore and pydantic allocates some 10^5 long-lived objects and no
  garbage, and every collection walks them again. `uploader.cli` turns the
  collector back on (with a higher threshold) before any work starts;
- interpreter teardown (~70 ms): clearing ~700 modules and a final
  collection. Once `main` has returned, everything of ours is closed (the
  journal, sockets, the event loop), so the process flushes its output and
  logs and leaves with `os._exit`.

An exception from `main` takes the normal way out, traceback and all.

The daemon's commands hold SIGHUP from their first line (`uploader.hangup`): its default
action would end a process still importing.
"""

from __future__ import annotations

import gc
import logging
import os
import sys


LONG_RUNNING_COMMANDS = {"run", "enqueue"}


def run() -> None:
    if _command(sys.argv[1:]) in LONG_RUNNING_COMMANDS:
        from uploader import hangup

        hangup.hold()
    gc.disable()
    from uploader.cli import main

    code = main()
    _leave(code)


def _command(argv: list[str]) -> str | None:
    """The subcommand, before argparse is even imported: the first word that is no option
    (the only options before it are --help and --version, which take no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _leave(code: int) -> None:
    logging.shutdown()  # flushes and closes every handler, as at a normal exit
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can be said
    os._exit(code)
