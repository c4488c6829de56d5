"""Runs `uploader ARGS...` as its console script does, sending itself SIGHUP at a chosen point
of the start (a test launcher: `python hangup_launcher.py WHEN [REWRITE] -- ARGS...`).

WHEN is an audit event that marks the moment, seen from inside the process, so the signal
lands in the window under test on any machine, however slow:
  * `import:MODULE` - as MODULE starts importing (the daemon is still loading its code);
  * `sqlite3.connect` - as the journal opens (the configuration has been read, the event
    loop is not running yet). REWRITE, if given, is `PATH=TEXT`: PATH is rewritten to
    TEXT first, as an operator changes the file and sends SIGHUP.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def main() -> None:
    split = sys.argv.index("--")
    when, *rewrite = sys.argv[1:split]
    fired = False

    def hook(event: str, args: tuple) -> None:
        nonlocal fired
        if fired or not _is_the_moment(when, event, args):
            return
        fired = True
        for change in rewrite:
            path, text = change.split("=", 1)
            Path(path).write_text(text, encoding="utf-8")
        os.kill(os.getpid(), signal.SIGHUP)

    sys.addaudithook(hook)
    sys.argv = ["uploader", *sys.argv[split + 1:]]
    from uploader.entry import run

    run()


def _is_the_moment(when: str, event: str, args: tuple) -> bool:
    if when.startswith("import:"):
        return event == "import" and args[0] == when.removeprefix("import:")
    return event == when


if __name__ == "__main__":
    main()
