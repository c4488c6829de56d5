"""The journal: every file's state, and every multipart upload's parts, in SQLite.

WAL mode with `synchronous=NORMAL`: a committed transaction survives the
process being killed (SIGKILL, OOM); after a power loss the last few commits
may be lost, which the restart path covers by checking the object in S3
(HEAD) before uploading again. The journal is touched only from the event
loop's thread; each call is a short transaction on a local file.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
    uploaded_at REAL
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
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    upload_id   TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    etag        TEXT NOT NULL,
    checksum    TEXT,
    PRIMARY KEY (upload_id, part_number)
);
"""

# File states. `uploading` is written when a transfer starts, so a crash leaves
# evidence that the object may or may not exist yet.
PENDING = "pending"
UPLOADING = "uploading"
UPLOADED = "uploaded"
FAILED = "failed"
SKIPPED = "skipped"
STATES = (PENDING, UPLOADING, UPLOADED, FAILED, SKIPPED)


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

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> "Journal":
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls(state_dir / "journal.sqlite3")

    def close(self) -> None:
        self._db.close()

    # -- files -------------------------------------------------------------

    def lookup(self, path: str) -> FileRecord | None:
        row = self._db.execute(
            "SELECT path, size, mtime_ns, key, status, etag, error, attempts, updated_at,"
            " uploaded_at FROM files WHERE path = ?", (path,)).fetchone()
        return FileRecord(*row) if row else None

    def set_state(self, path: str, *, size: int, mtime_ns: int, key: str, status: str,
                  etag: str | None = None, error: str | None = None) -> None:
        """Record a file's state; `attempts` counts transfers started."""
        now = time.time()
        self._db.execute(
            """INSERT INTO files (path, size, mtime_ns, key, status, etag, error, attempts,
                                  updated_at, uploaded_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(path) DO UPDATE SET
                 size = excluded.size, mtime_ns = excluded.mtime_ns, key = excluded.key,
                 status = excluded.status, etag = excluded.etag, error = excluded.error,
                 attempts = files.attempts + excluded.attempts,
                 updated_at = excluded.updated_at,
                 uploaded_at = COALESCE(excluded.uploaded_at, files.uploaded_at)""",
            (path, size, mtime_ns, key, status, etag, error, int(status == UPLOADING), now,
             now if status == UPLOADED else None))

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for status, count in self._db.execute(
                "SELECT status, COUNT(*) FROM files GROUP BY status"):
            counts[status] = count
        return counts

    def files_in_state(self, status: str) -> Iterator[FileRecord]:
        cursor = self._db.execute(
            "SELECT path, size, mtime_ns, key, status, etag, error, attempts, updated_at,"
            " uploaded_at FROM files WHERE status = ? ORDER BY path", (status,))
        for row in cursor:
            yield FileRecord(*row)

    def reset_failed(self) -> int:
        """Put failed files back in line; the next scan picks them up."""
        cursor = self._db.execute(
            "UPDATE files SET status = ?, error = NULL, updated_at = ? WHERE status = ?",
            (PENDING, time.time(), FAILED))
        return cursor.rowcount

    # -- multipart uploads -------------------------------------------------

    def start_upload(self, record: UploadRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.path, record.key, record.upload_id, record.size, record.mtime_ns,
             record.part_size, record.parts, record.checksum, record.created_at))

    def find_upload(self, path: str) -> UploadRecord | None:
        row = self._db.execute("SELECT * FROM uploads WHERE path = ?", (path,)).fetchone()
        return UploadRecord(*row) if row else None

    def uploads(self) -> list[UploadRecord]:
        return [UploadRecord(*row) for row in self._db.execute("SELECT * FROM uploads")]

    def known_upload_ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT upload_id FROM uploads")}

    def record_part(self, upload_id: str, part: PartRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?)",
            (upload_id, part.part_number, part.size, part.etag, part.checksum))

    def parts(self, upload_id: str) -> dict[int, PartRecord]:
        rows = self._db.execute(
            "SELECT part_number, size, etag, checksum FROM parts WHERE upload_id = ?",
            (upload_id,))
        return {row[0]: PartRecord(*row) for row in rows}

    def count_parts(self, upload_id: str) -> int:
        return self._db.execute(
            "SELECT COUNT(*) FROM parts WHERE upload_id = ?", (upload_id,)).fetchone()[0]

    def drop_upload(self, path: str) -> None:
        """Forget a multipart upload (completed or aborted) and its parts, atomically."""
        with self._transaction():
            row = self._db.execute(
                "SELECT upload_id FROM uploads WHERE path = ?", (path,)).fetchone()
            if row:
                self._db.execute("DELETE FROM parts WHERE upload_id = ?", (row[0],))
                self._db.execute("DELETE FROM uploads WHERE path = ?", (path,))

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
