"""LogDigest: a kind's first line at once, the rest summed up per interval, none lost."""

from __future__ import annotations

import asyncio
import logging

import pytest

from uploader.log_digest import LogDigest

INTERVAL = 0.2


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


@pytest.fixture
def digest(caplog: pytest.LogCaptureFixture) -> LogDigest:
    caplog.set_level(logging.DEBUG, logger="digest-test")
    return LogDigest(logging.getLogger("digest-test"), interval=INTERVAL)


async def test_the_first_line_of_a_kind_is_logged_at_once_and_repeats_are_summed_up(
        digest, caplog):
    for i in range(5):
        digest.log(logging.WARNING, "SlowDown", "upload deferred: %s", f"file {i}",
                   extra={"file": f"/d/{i}"})
    digest.log(logging.WARNING, "RequestTimeout", "upload deferred: %s", "file 9")
    assert lines(caplog) == ["upload deferred: file 0", "upload deferred: file 9"]
    assert lines(caplog, logging.DEBUG) == [f"upload deferred: file {i}" for i in range(1, 5)]
    await asyncio.sleep(INTERVAL * 1.5)
    summary = [r for r in caplog.records if r.levelno == logging.WARNING][2:]
    assert [r.getMessage() for r in summary] == [
        "4 more like this in the last 0.2 s, the latest: upload deferred: file 4"]
    assert summary[0].repeats == 4 and summary[0].file == "/d/4"  # the latest's context


async def test_a_kind_that_goes_on_gets_a_summary_per_interval_and_one_that_stops_starts_over(
        caplog):
    # Intervals end at 0.5, 1.0 and 1.5 s; every step comes half way through one, so a
    # loaded machine's late wake-ups (up to 0.25 s) do not change the order.
    caplog.set_level(logging.DEBUG, logger="digest-test")
    digest = LogDigest(logging.getLogger("digest-test"), interval=0.5)
    digest.log(logging.ERROR, "journal", "cannot write %d", 0)
    digest.log(logging.ERROR, "journal", "cannot write %d", 1)
    await asyncio.sleep(0.75)  # first summary (0.5 s): 1
    digest.log(logging.ERROR, "journal", "cannot write %d", 2)
    digest.log(logging.ERROR, "journal", "cannot write %d", 3)
    await asyncio.sleep(1.5)  # second summary (1.0 s): 2; then a quiet interval (1.5 s)
    digest.log(logging.ERROR, "journal", "cannot write %d", 4)  # starts over: in full
    assert [m.split(",")[0] for m in lines(caplog, logging.ERROR)] == [
        "cannot write 0", "1 more like this in the last 0.5 s", "2 more like this in the last 0.5 s",
        "cannot write 4"]
    digest.close()


async def test_close_says_what_is_still_counted(digest, caplog):
    for i in range(3):
        digest.log(logging.WARNING, "NoSuchBucket", "deferred %d", i)
    digest.close()
    assert lines(caplog) == ["deferred 0", "2 more like this in the last 0.2 s, the latest: "
                             "deferred 2"]
    await asyncio.sleep(INTERVAL * 1.5)  # the timer was cancelled: nothing is said twice
    assert len(lines(caplog)) == 2


def test_an_interval_of_zero_logs_every_line(caplog):
    caplog.set_level(logging.DEBUG, logger="digest-test")
    digest = LogDigest(logging.getLogger("digest-test"), interval=0)
    for i in range(3):  # no event loop needed: nothing is scheduled
        digest.log(logging.WARNING, "SlowDown", "deferred %d", i)
    assert lines(caplog) == ["deferred 0", "deferred 1", "deferred 2"]
