"""Resuming a multipart upload after a crash, at its edges, against a real S3 server.

The crash is in-process: the journal raises right after a write (the write is
committed, the process goes no further), as if the process had died there.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from uploader.config import validate_config
from uploader.journal import Journal, PartRecord, UploadRecord
from uploader.pipeline import Outcome
from uploader.wiring import services

MiB = 1024 * 1024
PART = 5 * MiB
KEY = "in/big.bin"
# The `uploads` table as versions before the file's identity was journaled made it.
OLD_UPLOADS_COLUMNS = "path, key, upload_id, size, mtime_ns, part_size, parts, checksum, created_at"


class Crash(Exception):
    """The process dies here."""


def make_config(tmp_path: Path, endpoint: str, bucket: str, *, region: str):
    return validate_config({
        "source": {"directory": str(tmp_path)},
        "s3": {"bucket": bucket, "endpoint_url": endpoint, "region": region,
               "addressing_style": "path", "prefix": "in/"},
        # One part at a time: the part journaled before the crash is part 1.
        "transfer": {"multipart_threshold": "5MiB", "part_size": "5MiB",
                     "max_parts_in_flight": 1},
        "state_dir": str(tmp_path / "state"),
    })


def crash_after(journal: Journal, method: str) -> None:
    """Make the journal's `method` write, then crash (on this journal object only)."""
    original: Callable[..., Any] = getattr(journal, method)

    def write_then_crash(*args: Any) -> None:
        original(*args)
        raise Crash(method)

    setattr(journal, method, write_then_crash)


async def upload_until_crash(tmp_path: Path, s3_server, bucket: str, path: Path,
                             method: str) -> None:
    """The first run: the upload starts and the process dies after `method`."""
    journal = Journal(tmp_path / "journal.sqlite3")
    crash_after(journal, method)
    config = make_config(tmp_path, s3_server.endpoint_url, bucket, region=s3_server.region)
    async with services(config, journal=journal) as svc:
        with pytest.raises(Crash):
            await svc.pipeline.process(path, "big.bin")
    journal.close()


async def restart(tmp_path: Path, s3_server, bucket: str, path: Path) -> Outcome:
    """The next start: the same file is processed again with the journal left behind."""
    journal = Journal(tmp_path / "journal.sqlite3")
    config = make_config(tmp_path, s3_server.endpoint_url, bucket, region=s3_server.region)
    try:
        async with services(config, journal=journal) as svc:
            outcome = await svc.pipeline.process(path, "big.bin")
        assert journal.find_upload(str(path)) is None
    finally:
        journal.close()
    return outcome


def replace_keeping_size_and_mtime(path: Path, data: bytes, *, in_place: bool) -> None:
    """What cp -p (in place: the same inode), rsync -t or tar -x (a new file) do."""
    st = path.stat()
    if in_place:
        with path.open("r+b") as handle:
            handle.write(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        new = path.with_name(path.name + ".tmp")
        new.write_bytes(data)
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        new.rename(path)
    now = path.stat()
    assert (now.st_size, now.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert (now.st_ino == st.st_ino) is in_place


@pytest.mark.parametrize("in_place", [False, True], ids=["renamed-over", "rewritten-in-place"])
async def test_a_file_replaced_with_the_same_size_and_mtime_is_not_resumed(
        tmp_path, s3_server, s3_env, bucket, s3, in_place):
    """Crash after part 1 of 3, then other bytes under the path with size and mtime kept.

    Resuming would publish part 1 of the old bytes with parts 2-3 of the new:
    the old upload is aborted and the new bytes go up whole.
    """
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(2 * PART + 1))
    await upload_until_crash(tmp_path, s3_server, bucket, path, "record_part")
    new = os.urandom(2 * PART + 1)
    replace_keeping_size_and_mtime(path, new, in_place=in_place)

    assert await restart(tmp_path, s3_server, bucket, path) is Outcome.UPLOADED
    assert s3.get_object(Bucket=bucket, Key=KEY)["Body"].read() == new
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_a_parked_upload_from_an_older_journal_is_not_trusted_once_the_file_changed(
        tmp_path, s3_server, s3_env, bucket, s3):
    """A journal written before the file's identity was: it opens (the columns are
    added), and its upload is resumed only if the file still holds the bytes its
    journaled parts were sent from."""
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(2 * PART + 1))
    await upload_until_crash(tmp_path, s3_server, bucket, path, "record_part")
    with sqlite3.connect(tmp_path / "journal.sqlite3") as db:  # back to the old table
        db.executescript(f"""
            CREATE TABLE old_uploads AS SELECT {OLD_UPLOADS_COLUMNS} FROM uploads;
            DROP TABLE uploads;
            ALTER TABLE old_uploads RENAME TO uploads;""")
    db.close()
    new = os.urandom(2 * PART + 1)
    replace_keeping_size_and_mtime(path, new, in_place=True)

    journal = Journal(tmp_path / "journal.sqlite3")
    upload = journal.find_upload(str(path))
    journal.close()
    assert upload is not None and upload.inode is None and upload.ctime_ns is None
    assert await restart(tmp_path, s3_server, bucket, path) is Outcome.UPLOADED
    assert s3.get_object(Bucket=bucket, Key=KEY)["Body"].read() == new


async def test_an_upload_gone_from_the_server_before_any_part_starts_over(
        tmp_path, s3_server, s3_env, bucket, s3):
    """Crash right after CreateMultipartUpload; the upload then expires on the server.

    No part is journaled, yet the restart must notice (UploadPart would get a
    permanent NoSuchUpload) and upload the file under a new UploadId.
    """
    path = tmp_path / "big.bin"
    data = os.urandom(2 * PART + 1)
    path.write_bytes(data)
    await upload_until_crash(tmp_path, s3_server, bucket, path, "start_upload")
    journal = Journal(tmp_path / "journal.sqlite3")
    upload = journal.find_upload(str(path))
    assert upload is not None and journal.count_parts(upload.upload_id) == 0
    journal.close()
    s3.abort_multipart_upload(Bucket=bucket, Key=KEY, UploadId=upload.upload_id)

    assert await restart(tmp_path, s3_server, bucket, path) is Outcome.UPLOADED
    assert s3.get_object(Bucket=bucket, Key=KEY)["Body"].read() == data
    journal = Journal(tmp_path / "journal.sqlite3")
    assert journal.lookup(str(path)).status == "uploaded"
    journal.close()


def test_a_replaced_upload_takes_its_parts_with_it(tmp_path):
    """A new upload of a file replaces the old one's row (its abort failed): the old
    one's parts must not stay in the journal forever."""
    journal = Journal(tmp_path / "journal.sqlite3")

    def upload(upload_id: str) -> UploadRecord:
        return UploadRecord(path="/data/big", key="big", upload_id=upload_id, size=30,
                            mtime_ns=1, part_size=10, parts=3, checksum="md5",
                            created_at=time.time())

    journal.start_upload(upload("OLD"))
    journal.record_part("OLD", PartRecord(1, 10, "etag1", None))
    journal.start_upload(upload("NEW"))
    journal.record_part("NEW", PartRecord(1, 10, "etag2", None))
    journal.start_upload(upload("NEW"))  # the same upload again keeps its parts
    assert journal.find_upload("/data/big").upload_id == "NEW"
    assert journal.count_parts("OLD") == 0
    assert journal.parts("NEW") == {1: PartRecord(1, 10, "etag2", None)}
    journal.close()
