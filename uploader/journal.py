"""The journal: every file's state, and every multipart upload's parts, in SQLite.

WAL mode with `synchronous=NORMAL`: a committed transaction survives the
process being killed (SIGKILL, OOM); after a power loss the last few commits
may be lost, which the restart path covers by checking the object in S3
(HEAD) before uploading again. The journal is touched only from the event
loop's thread.

Group commit: inside an event loop, writes join an open transaction that is
committed once per loop iteration (`call_soon`), so the many writes workers
make in the same iteration cost one commit. A caller whose next step relies
on its write having reached the disk (a file marked `uploading` before its
PUT, a part recorded before it counts as done) awaits `durable()`, which
returns once that batch is committed; everyone waiting shares that commit.
Outside a loop (the CLI's `status`, `retry-failed`) every write commits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from uploader.errors import ConfigError
from uploader.state_lock import StateDirLock

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path        TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    key         TEXT NOT NULL,
    status      TEXT NOT NULL,
    etag        TEXT,
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    updated_at  REAL NOT NULL,
    uploaded_at REAL,
    inode       INTEGER,
    ctime_ns    INTEGER
);
CREATE INDEX IF NOT EXISTS files_by_status ON files(status);
CREATE TABLE IF NOT EXISTS uploads (
    path       TEXT PRIMARY KEY,
    key        TEXT NOT NULL,
    upload_id  TEXT NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    part_size  INTEGER NOT NULL,
    parts      INTEGER NOT NULL,
    checksum   TEXT NOT NULL,
    created_at REAL NOT NULL,
    inode      INTEGER,
    ctime_ns   INTEGER
);
CREATE INDEX IF NOT EXISTS uploads_by_id ON uploads(upload_id);
CREATE TABLE IF NOT EXISTS parts (
    upload_id   TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    etag        TEXT NOT NULL,
    checksum    TEXT,
    PRIMARY KEY (upload_id, part_number)
);
"""

# Columns added to tables that journals on disk already have: a journal written
# by an older version gets them on open (ALTER TABLE ADD COLUMN), NULL in old rows.
ADDED_COLUMNS = {
    "files": {"inode": "INTEGER", "ctime_ns": "INTEGER"},
    "uploads": {"inode": "INTEGER", "ctime_ns": "INTEGER"},
}

JOURNAL_FILE = "journal.sqlite3"  # in state_dir
FORGET_BATCH = 1000  # rows looked at per event-loop turn by forget_gone

# File states. `uploading` is written when a transfer starts, so a crash leaves
# evidence that the object may or may not exist yet.
PENDING = "pending"
UPLOADING = "uploading"
UPLOADED = "uploaded"
FAILED = "failed"
SKIPPED = "skipped"
ENQUEUED = "enqueued"  # `uploader enqueue`: published to the queue for the fleet
STATES = (PENDING, UPLOADING, UPLOADED, FAILED, SKIPPED, ENQUEUED)


@dataclass(frozen=True)
class FileRecord:
    path: str
    size: int
    mtime_ns: int
    key: str
    status: str
    etag: str | None
    error: str | None
    attempts: int
    updated_at: float
    uploaded_at: float | None
    # Which file had these bytes (inode, ctime): None in rows journaled before
    # these were, and for files never stat'ed (failed, skipped).
    inode: int | None = None
    ctime_ns: int | None = None

    def same_identity(self, inode: int, ctime_ns: int | None) -> bool:
        """Is the file now at the path the one this row recorded? Size and mtime survive
        cp -p, rsync -t and tar -x putting other bytes under the path; the inode (another
        file took the path) or the ctime (rewritten in place) does not. A row from
        before these were journaled (or a stat without ctime) is trusted as it is."""
        if self.inode is None or self.ctime_ns is None or ctime_ns is None:
            return True
        return (self.inode, self.ctime_ns) == (inode, ctime_ns)


FILE_COLUMNS = ", ".join(field.name for field in fields(FileRecord))


@dataclass(frozen=True)
class UploadRecord:
    path: str
    key: str
    upload_id: str
    size: int
    mtime_ns: int
    part_size: int
    parts: int
    checksum: str
    created_at: float
    # The file the parts are read from, as stat saw it before the upload was
    # created; None in rows journaled before these were (unknown).
    inode: int | None = None
    ctime_ns: int | None = None


# Named, not `SELECT *` or bare VALUES: the record decides the order, not the table.
UPLOAD_COLUMNS = ", ".join(field.name for field in fields(UploadRecord))
UPLOAD_PLACEHOLDERS = ", ".join("?" for _ in fields(UploadRecord))


@dataclass(frozen=True)
class PartRecord:
    part_number: int
    size: int
    etag: str
    checksum: str | None


class Journal:
    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._add_missing_columns()
        self._in_transaction = False
        self._batch: asyncio.Future[None] | None = None  # the commit the open batch awaits
        self._owner_lock: StateDirLock | None = None  # held from `in_state_dir` to `close`
        self.writes = 0
        self.commits = 0

    def _add_missing_columns(self) -> None:
        """Bring a journal written by an older version up to this SCHEMA."""
        if not self._missing_columns():
            return  # the usual case: no write, no lock
        # IMMEDIATE: two processes opening the same old journal (the daemon,
        # `uploader status`) must not both add a column; the second finds it.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for table, column, declaration in self._missing_columns():
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _missing_columns(self) -> list[tuple[str, str, str]]:
        missing = []
        for table, columns in ADDED_COLUMNS.items():
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            missing += [(table, column, declaration) for column, declaration in columns.items()
                        if column not in present]
        return missing

    @classmethod
    def in_state_dir(cls, state_dir: Path, *, create: bool = True,
                     owner: str | None = None) -> "Journal":
        """The journal in `state_dir` (made if missing, unless `create` is false).

        `owner` (e.g. "uploader run"): the state_dir is this process's alone until
        `close` (`StateDirLock`); ConfigError naming the holder if it is taken.
        Raises ConfigError naming state_dir when it cannot be opened: a read-only or
        full filesystem, a file where the folder should be, a corrupt journal.
        """
        path = state_dir / JOURNAL_FILE
        if not create and not path.exists():
            raise ConfigError(f"state_dir: no journal at {path}; has the daemon run with "
                              "this configuration?")
        lock = None
        try:
            if create:
                state_dir.mkdir(parents=True, exist_ok=True)
            if owner is not None:
                lock = StateDirLock.take(state_dir, owner=owner)
            journal = cls(path)
        except (OSError, sqlite3.Error) as exc:
            if lock is not None:
                lock.release()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(f"state_dir: cannot open the journal {path}: {reason}") from None
        journal._owner_lock = lock
        return journal

    def close(self) -> None:
        self._commit_batch()
        self._db.close()
        if self._owner_lock is not None:
            self._owner_lock.release()
            self._owner_lock = None

    # -- group commit ------------------------------------------------------

    async def durable(self) -> None:
        """Return once every write made so far is committed (shared by all waiters)."""
        if self._batch is not None:
            await asyncio.shield(self._batch)

    @property
    def uncommitted(self) -> bool:
        return self._in_transaction

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True
        self.writes += 1
        return self._db.execute(sql, params)

    def _written(self) -> None:
        """End of one logical write: commit now (no loop) or with this iteration's batch."""
        if self._batch is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._commit_batch()  # no loop: nothing to batch with
            return
        self._batch = loop.create_future()
        loop.call_soon(self._commit_batch)

    def _commit_batch(self) -> None:
        batch, self._batch = self._batch, None
        try:
            if self._in_transaction:
                self._in_transaction = False
                self._db.execute("COMMIT")
                self.commits += 1
        except sqlite3.Error as exc:
            log.error("journal commit failed: %s", exc)
            if batch is not None and not batch.done():
                batch.set_exception(exc)
                batch.add_done_callback(lambda f: f.exception())  # raised to waiters only
            return
        if batch is not None and not batch.done():
            batch.set_result(None)

    # -- files -------------------------------------------------------------

    def lookup(self, path: str) -> FileRecord | None:
        row = self._db.execute(f"SELECT {FILE_COLUMNS} FROM files WHERE path = ?",
                               (path,)).fetchone()
        return FileRecord(*row) if row else None

    def set_state(self, path: str, *, size: int, mtime_ns: int, key: str, status: str,
                  etag: str | None = None, error: str | None = None,
                  inode: int | None = None, ctime_ns: int | None = None) -> None:
        """Record a file's state; `attempts` counts transfers started."""
        now = time.time()
        self._write(
            """INSERT INTO files (path, size, mtime_ns, key, status, etag, error, attempts,
                                  updated_at, uploaded_at, inode, ctime_ns)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(path) DO UPDATE SET
                 size = excluded.size, mtime_ns = excluded.mtime_ns, key = excluded.key,
                 status = excluded.status, etag = excluded.etag, error = excluded.error,
                 attempts = files.attempts + excluded.attempts,
                 updated_at = excluded.updated_at,
                 uploaded_at = COALESCE(excluded.uploaded_at, files.uploaded_at),
                 inode = excluded.inode, ctime_ns = excluded.ctime_ns""",
            (path, size, mtime_ns, key, status, etag, error, int(status == UPLOADING), now,
             now if status == UPLOADED else None, inode, ctime_ns))
        self._written()

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for status, count in self._db.execute(
                "SELECT status, COUNT(*) FROM files GROUP BY status"):
            counts[status] = count
        return counts

    def files_in_state(self, status: str) -> Iterator[FileRecord]:
        cursor = self._db.execute(
            f"SELECT {FILE_COLUMNS} FROM files WHERE status = ? ORDER BY path", (status,))
        for row in cursor:
            yield FileRecord(*row)

    def reset_failed(self) -> int:
        """Put failed files back in line; the next scan picks them up."""
        cursor = self._write(
            "UPDATE files SET status = ?, error = NULL, updated_at = ? WHERE status = ?",
            (PENDING, time.time(), FAILED))
        self._written()
        return cursor.rowcount

    async def forget_gone(self, *, finished_before: float, batch: int = FORGET_BATCH) -> int:
        """Delete the rows of files finished (uploaded, skipped, enqueued) before
        `finished_before` whose file no longer exists; return how many.

        Nothing can be sent twice for a file that is gone (deleted or moved after its
        upload, as `after_upload` does), and kept for ever such rows grow the journal
        without bound. A file that comes back later is a new file. Done in batches of
        paths, each followed by a turn of the event loop (a stat per row).
        """
        forgotten, after = 0, ""
        while True:
            rows = self._db.execute(
                "SELECT path FROM files WHERE path > ? AND status IN (?, ?, ?)"
                " AND updated_at < ? ORDER BY path LIMIT ?",
                (after, UPLOADED, SKIPPED, ENQUEUED, finished_before, batch)).fetchall()
            gone = [path for (path,) in rows if not os.path.lexists(path)]
            for path in gone:
                self._write("DELETE FROM files WHERE path = ?", (path,))
            if gone:
                self._written()
            forgotten += len(gone)
            if len(rows) < batch:
                return forgotten
            after = rows[-1][0]
            await asyncio.sleep(0)

    # -- multipart uploads -------------------------------------------------

    def start_upload(self, record: UploadRecord) -> None:
        """Journal a new upload of a file, replacing the one it had, if any.

        The replaced upload's parts are deleted with it, in the same
        transaction: once its row is gone nothing would ever delete them. (A
        row is replaced when the old upload's abort failed; the janitor aborts
        that one on the server once it is old.)
        """
        self._write(
            "DELETE FROM parts WHERE upload_id IN"
            " (SELECT upload_id FROM uploads WHERE path = ? AND upload_id != ?)",
            (record.path, record.upload_id))
        self._write(
            f"INSERT OR REPLACE INTO uploads ({UPLOAD_COLUMNS}) VALUES ({UPLOAD_PLACEHOLDERS})",
            astuple(record))
        self._written()

    def find_upload(self, path: str) -> UploadRecord | None:
        row = self._db.execute(f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE path = ?",
                               (path,)).fetchone()
        return UploadRecord(*row) if row else None

    def uploads(self) -> list[UploadRecord]:
        return [UploadRecord(*row)
                for row in self._db.execute(f"SELECT {UPLOAD_COLUMNS} FROM uploads")]

    def knows_upload(self, upload_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM uploads WHERE upload_id = ?",
                                (upload_id,)).fetchone() is not None

    def record_part(self, upload_id: str, part: PartRecord) -> None:
        self._write(
            "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?)",
            (upload_id, part.part_number, part.size, part.etag, part.checksum))
        self._written()

    def parts(self, upload_id: str) -> dict[int, PartRecord]:
        rows = self._db.execute(
            "SELECT part_number, size, etag, checksum FROM parts WHERE upload_id = ?",
            (upload_id,))
        return {row[0]: PartRecord(*row) for row in rows}

    def count_parts(self, upload_id: str) -> int:
        return self._db.execute(
            "SELECT COUNT(*) FROM parts WHERE upload_id = ?", (upload_id,)).fetchone()[0]

    def drop_upload(self, path: str) -> None:
        """Forget a multipart upload (completed or aborted) and its parts.

        Both deletes land in the same batch, hence the same transaction.
        """
        row = self._db.execute("SELECT upload_id FROM uploads WHERE path = ?", (path,)).fetchone()
        if row:
            self._write("DELETE FROM parts WHERE upload_id = ?", (row[0],))
            self._write("DELETE FROM uploads WHERE path = ?", (path,))
            self._written()
