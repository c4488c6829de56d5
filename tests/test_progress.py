"""`uploader upload` progress: a live bar on a terminal, plain lines elsewhere, then the summary."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from daemon_harness import UPLOADER, keys_in, run_cli
from uploader.pipeline import Outcome
from uploader.progress import Progress, bar_line, plain_line

MiB = 1024 * 1024
SUMMARY = re.compile(r"uploaded (\d+) files \(([\d.]+) MiB, ([\d.]+) MiB/s, ([\d.]+) files/s\) "
                     r"in [\d.]+s; (\d+) already there, (\d+) failed, (\d+) skipped; "
                     r"(\d+) retries, (\d+) throttled")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_counts_rate_and_eta():
    clock = FakeClock()
    progress = Progress(clock=clock, window_seconds=5)
    snap = progress.snapshot()
    assert snap.fraction is None and snap.eta_seconds is None
    assert bar_line(snap, width=100).startswith("counting…  0 files  0.0 MiB")
    progress.set_totals(files=4, nbytes=8 * MiB)
    for i in range(2):
        path = Path(f"/f{i}")
        progress.submitted(path, 2 * MiB)
        clock.now += 1
        progress.on_outcome(path, Outcome.UPLOADED, None, 1.0)
    snap = progress.snapshot()
    assert snap.files_done == 2 and snap.bytes_done == 4 * MiB
    assert snap.bytes_per_second == 2 * MiB and snap.files_per_second == 1
    assert snap.fraction == 0.5 and snap.eta_seconds == 2
    line = bar_line(snap, width=120)
    assert line.startswith("[") and " 50%  2/4 files  4.0/8.0 MiB  2.0 MiB/s  1.0 files/s" \
        in line and line.endswith("ETA 0:02")
    assert len(bar_line(snap, width=40)) <= 40
    progress.submitted(Path("/bad"), MiB)
    clock.now += 1
    progress.on_outcome(Path("/bad"), Outcome.FAILED, None, 1.0)
    assert plain_line(progress.snapshot()).startswith("progress (62%): 3/4 files  5.0/8.0 MiB")
    assert "1 failed" in plain_line(progress.snapshot())


def run_in_pty(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal, as in an interactive shell."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(args, stdin=terminal, stdout=terminal, stderr=terminal, env=env,
                               close_fds=True)
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal side closed, the program is done
                break
            if not chunk:
                break
            output += chunk
        return process.wait(timeout=30), output.decode("utf-8", "replace")
    finally:
        process.kill()
        os.close(controller)


def make_tree(root: Path) -> int:
    total = 0
    for i in range(30):
        data = os.urandom(64 * 1024 * (1 + i % 4))
        (root / f"dir-{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"dir-{i % 3}" / f"file-{i:02d}.bin").write_bytes(data)
        total += len(data)
    return total


@pytest.mark.timeout(60)
def test_upload_shows_a_live_bar_on_a_terminal_then_the_summary(tmp_path, s3_server, s3, bucket):
    folder = tmp_path / "photos"
    total = make_tree(folder)
    env = {**os.environ, **s3_server.env(), "COLUMNS": "120", "TERM": "xterm"}
    code, output = run_in_pty([UPLOADER, "upload", "--endpoint-url", s3_server.endpoint_url,
                               str(folder), f"s3://{bucket}/backup/"], env)
    assert code == 0, output
    assert len(keys_in(s3, bucket)) == 30
    frames = [frame for frame in output.split("\r\x1b[K") if frame.startswith("[")]
    assert frames, f"no progress bar drawn: {output[:500]!r}"
    final = frames[-1].splitlines()[0]
    assert "100%  30/30 files" in final
    assert f"{total / MiB:.1f}/{total / MiB:.1f} MiB" in final and "MiB/s" in final
    assert "ETA 0:00" in final
    summary = SUMMARY.search(output)
    assert summary, output[-500:]
    assert summary.group(1) == "30" and float(summary.group(2)) == round(total / MiB, 1)
    assert summary.group(6) == "0"  # none failed; retries and throttles are counted
    assert float(summary.group(3)) > 0 and float(summary.group(4)) > 0


@pytest.mark.timeout(60)
def test_upload_without_a_terminal_writes_no_control_characters(tmp_path, s3_server, bucket):
    folder = tmp_path / "photos"
    make_tree(folder)
    result = run_cli("upload", "--endpoint-url", s3_server.endpoint_url, str(folder),
                     f"s3://{bucket}/backup/", env=s3_server.env())
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr
    assert SUMMARY.search(result.stdout.splitlines()[-1])


def test_display_draws_a_bar_in_place_on_a_terminal_and_lines_elsewhere():
    import io

    from uploader.progress import CLEAR_LINE, ProgressDisplay

    progress = Progress(clock=FakeClock())
    progress.set_totals(files=1, nbytes=10)
    lines = io.StringIO()
    ProgressDisplay(progress, lines, tty=False).draw()
    assert lines.getvalue() == plain_line(progress.snapshot()) + "\n"
    screen = io.StringIO()
    display = ProgressDisplay(progress, screen, tty=True)
    display.draw()
    display.clear()  # before a log line: the bar leaves its line
    display.finish()
    frames = screen.getvalue().split(CLEAR_LINE)
    assert frames[0] == "" and frames[1].startswith("[") and frames[2] == ""
    assert frames[3].startswith("[") and frames[3].endswith("\n")


def test_the_bar_fits_the_terminal_it_is_drawn_on(monkeypatch):
    """The bar goes to stderr; its width is stderr's terminal's, not stdout's (which may
    be a file or a wider terminal): a line longer than the screen wraps on every frame."""
    import fcntl
    import pty
    import struct
    import termios

    from uploader.progress import CLEAR_LINE, ProgressDisplay

    monkeypatch.setenv("COLUMNS", "200")  # what stdout's (or no) terminal would say
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
    with open(side, "w", closefd=True) as screen:
        progress = Progress(clock=FakeClock())
        progress.set_totals(files=12345, nbytes=10**12)
        ProgressDisplay(progress, screen).draw()
        drawn = os.read(main, 4096).decode()
    os.close(main)
    assert len(drawn.split(CLEAR_LINE)[-1]) < 40, drawn


def _listing(tmp_path: Path, files: int) -> list[Path]:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(files):
        (tree / f"f{i}").write_bytes(b"x" * (i + 1))
    return [tree]


class _NoPipeline:
    listeners: list = []


async def test_a_walk_that_ends_soon_gives_the_totals_without_a_second_walk(
        tmp_path, monkeypatch):
    """The totals come from the listing itself when it ends before the count would start."""
    from uploader import progress as progress_module
    from uploader.config import Config, SourceConfig

    counted: list[int] = []
    monkeypatch.setattr(progress_module, "count_files",
                        lambda *a: counted.append(1) or (99, 99))
    monkeypatch.setattr(progress_module, "COUNT_AFTER_SECONDS", 0.05)
    paths = _listing(tmp_path, 3)
    config = Config(source=SourceConfig(directory=paths[0]), s3={"bucket": "bucket"})
    async with progress_module.track_progress(_NoPipeline(), paths=paths, config=config,
                                              stream=None) as tracker:
        submit = tracker.submit(_ignore)
        for i, path in enumerate(sorted(paths[0].iterdir())):
            await submit(path, path.name, None)
        tracker.listing_done()
        await asyncio.sleep(0.2)
    assert (tracker.progress.files_total, tracker.progress.bytes_total) == (3, 6)
    assert counted == []


async def test_a_long_walk_is_counted_ahead_of_the_uploads(tmp_path, monkeypatch):
    from uploader import progress as progress_module
    from uploader.config import Config, SourceConfig

    monkeypatch.setattr(progress_module, "COUNT_AFTER_SECONDS", 0.05)
    paths = _listing(tmp_path, 4)
    config = Config(source=SourceConfig(directory=paths[0]), s3={"bucket": "bucket"})
    async with progress_module.track_progress(_NoPipeline(), paths=paths, config=config,
                                              stream=None) as tracker:
        await asyncio.sleep(0.5)  # still listing: nothing handed on yet
        assert (tracker.progress.files_total, tracker.progress.bytes_total) == (4, 10)


async def _ignore(*_args) -> None:
    return None
