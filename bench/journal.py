"""Journal write cost: group commit (one commit per event-loop turn) vs a commit per write.

Simulates the daemon's journal traffic for small files: N workers each mark a
file `uploading`, wait until that is durable (as the pipeline does before
sending), then mark it `uploaded`. Prints writes, commits, and microseconds of
journal time per file for both modes.

    .venv/bin/python bench/journal.py --files 20000 --workers 16
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from uploader.journal import UPLOADED, UPLOADING, Journal


class CommitEachWrite(Journal):
    """The journal as it was before group commit: every write its own transaction."""

    def _written(self) -> None:
        self._commit_batch()


async def drive(journal: Journal, *, files: int, workers: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(files):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            path = f"/data/outbox/file-{i:07d}.bin"
            journal.set_state(path, size=i, mtime_ns=i, key=path, status=UPLOADING)
            await journal.durable()
            await asyncio.sleep(0)  # the upload itself
            journal.set_state(path, size=i, mtime_ns=i, key=path, status=UPLOADED, etag="e")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    await journal.durable()
    return time.perf_counter() - started


def run(kind: type[Journal], *, files: int, workers: int) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        journal = kind(Path(tmp) / "journal.sqlite3")
        seconds = asyncio.run(drive(journal, files=files, workers=workers))
        writes, commits = journal.writes, journal.commits
        journal.close()
    return writes, commits, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    print(f"sqlite {sqlite3.sqlite_version}, {args.files} files, {args.workers} workers")
    print(f"{'mode':<22}{'writes':>8}{'commits':>9}{'µs/file':>9}{'files/s':>10}")
    for name, kind in (("group commit", Journal), ("commit per write", CommitEachWrite)):
        writes, commits, seconds = run(kind, files=args.files, workers=args.workers)
        print(f"{name:<22}{writes:>8}{commits:>9}{seconds / args.files * 1e6:>9.1f}"
              f"{args.files / seconds:>10.0f}")


if __name__ == "__main__":
    main()
