"""SIGHUP: the configuration is re-read and what can change live does; a bad file changes nothing."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import yaml

from daemon_harness import daemon_config, daemon_factory, wait_until  # noqa: F401
from daemon_harness import keys_in, object_bytes
from ops_harness import Scrape, endpoint, scrape, wait_for_metric

MiB = 1024 * 1024


def rewrite(path: Path, **changes: dict) -> None:
    config = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))


def reloads(page: Scrape, result: str) -> float:
    return page.value("uploader_config_reloads_total", 0, result=result)


@pytest.mark.timeout(60)
def test_sighup_changes_the_rate_limit_live_and_a_broken_file_is_rejected(
        daemon_config, daemon_factory, s3, bucket, tmp_path):
    config = daemon_config(rate_limit={"max_requests_per_second": 50},
                           transfer={"concurrency": 4}, janitor={"enabled": False})
    # An environment override applies at start and again at every reload.
    daemon = daemon_factory(config, env={"UPLOADER_RATE_LIMIT__MAX_BYTES_PER_SECOND": "100MiB"})
    base = endpoint(daemon)
    outbox = tmp_path / "outbox"
    (outbox / "first.txt").write_text("first")  # makes the partition exist in the limiter
    partition = f"{bucket}/incoming"
    page = wait_for_metric(base, lambda p: p.value("uploader_limiter_requests_per_second",
                                                   partition=partition) == 50,
                           what="the partition limited to 50/s")
    assert page.value("uploader_workers") == 4

    rewrite(config, rate_limit={"max_requests_per_second": 7}, transfer={
        "concurrency": 2, "part_size": "16MiB"})
    daemon.process.send_signal(signal.SIGHUP)
    page = wait_for_metric(base, lambda p: reloads(p, "applied") == 1, what="the reload")
    assert page.value("uploader_limiter_requests_per_second", partition=partition) == 7
    assert page.value("uploader_rate_limit_max_requests_per_second") == 7
    assert page.value("uploader_rate_limit_max_bytes_per_second") == 100 * MiB
    assert page.value("uploader_workers") == 2
    log = daemon.log()
    assert "rate_limit.max_requests_per_second 50.0 -> 7.0" in log
    assert "transfer.concurrency 4 -> 2" in log
    assert "transfer.part_size changed (5242880 -> 16777216) but needs a restart" in log

    for broken in ("rate_limit: [unclosed\n",  # not YAML
                   config.read_text().replace("max_requests_per_second: 7",
                                              "max_requests_per_second: -1")):  # not valid
        config.write_text(broken)
        rejected = reloads(scrape(base), "rejected")
        daemon.process.send_signal(signal.SIGHUP)
        page = wait_for_metric(base, lambda p: reloads(p, "rejected") == rejected + 1,
                               what="the broken file rejected")
        assert page.value("uploader_limiter_requests_per_second", partition=partition) == 7
        assert page.value("uploader_workers") == 2
    log = daemon.log()
    assert "configuration reload rejected, the settings in force stay" in log
    assert "invalid YAML at line" in log
    assert "rate_limit.max_requests_per_second: Input should be greater than 0" in log

    (outbox / "after.txt").write_text("still uploading")  # the daemon carries on
    wait_until(lambda: object_bytes(s3, bucket, "incoming/after.txt"), what="a later upload")
    assert daemon.terminate() == 0


@pytest.mark.timeout(60)
def test_sighup_widens_the_filter_and_newly_included_files_go_up(daemon_config, daemon_factory,
                                                                 s3, bucket, tmp_path):
    config = daemon_config(source={"include": ["**/*.txt"]}, janitor={"enabled": False})
    outbox = tmp_path / "outbox"
    (outbox / "notes.txt").write_text("included")
    (outbox / "table.csv").write_text("a,b\n1,2\n")
    daemon = daemon_factory(config)
    base = endpoint(daemon)
    wait_until(lambda: "incoming/notes.txt" in keys_in(s3, bucket), what="the .txt file")
    assert "incoming/table.csv" not in keys_in(s3, bucket)  # the start scan left it out

    rewrite(config, source={"include": ["**/*.txt", "**/*.csv"]}, logging={"level": "DEBUG"})
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "incoming/table.csv" in keys_in(s3, bucket), what="the .csv file")
    assert keys_in(s3, bucket) == {"incoming/notes.txt", "incoming/table.csv"}
    assert reloads(scrape(base), "applied") == 1
    assert "logging.level 'INFO' -> 'DEBUG'" in daemon.log()
    assert daemon.terminate() == 0


@pytest.mark.timeout(90)
def test_a_raised_concurrency_is_not_held_back_by_the_connection_pool(
        daemon_config, daemon_factory, fault_proxy, s3, bucket, tmp_path):
    """With `transfer.data_path: botocore` every PUT goes through the aioboto3 client,
    whose connection pool was sized for the concurrency at start (2 + 8 parts + 4): a
    reload to 30 was reported applied while at most 14 requests could be in flight.
    Each request takes 0.5 s more at the proxy, so what runs at once can be counted."""
    config = daemon_config(s3={"endpoint_url": fault_proxy.url},
                           transfer={"concurrency": 2, "data_path": "botocore"},
                           janitor={"enabled": False})
    daemon = daemon_factory(config)
    base = endpoint(daemon)
    fault_proxy.latency = 0.5
    rewrite(config, transfer={"concurrency": 30})
    daemon.process.send_signal(signal.SIGHUP)
    wait_for_metric(base, lambda p: reloads(p, "applied") == 1, what="the reload")
    outbox = tmp_path / "outbox"
    for i in range(60):
        (outbox / f"f{i:02d}.txt").write_text(f"file {i}")
    expected = {f"incoming/f{i:02d}.txt" for i in range(60)}
    wait_until(lambda: keys_in(s3, bucket) >= expected, timeout=60, what="every file")
    assert daemon.terminate() == 0
    puts = [r for r in fault_proxy.records(method="PUT") if r.ok]
    assert most_at_once(puts) > 14, most_at_once(puts)


def most_at_once(records) -> int:  # noqa: ANN001
    events = sorted([(r.t_start, 1) for r in records] + [(r.t_end, -1) for r in records])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


LAUNCHER = Path(__file__).with_name("hangup_launcher.py")


@pytest.mark.timeout(60)
def test_a_sighup_while_the_daemon_is_still_loading_its_code_neither_kills_nor_is_lost(
        daemon_config, daemon_factory, s3, bucket, tmp_path):
    """SIGHUP's default action ends a process; the reload handler is in only once the event
    loop runs, half a second or more after the start. A SIGHUP sent while the daemon was
    still importing killed it (exit -1)."""
    config = daemon_config(janitor={"enabled": False})
    daemon = daemon_factory(config, launcher=[
        sys.executable, str(LAUNCHER), "import:uploader.cli", "--"])
    base = endpoint(daemon)  # up and serving: it survived
    wait_for_metric(base, lambda p: reloads(p, "applied") == 1, what="the held SIGHUP's reload")
    (tmp_path / "outbox" / "after.txt").write_text("still uploading")
    wait_until(lambda: object_bytes(s3, bucket, "incoming/after.txt"), what="an upload")
    assert daemon.terminate() == 0


@pytest.mark.timeout(60)
def test_a_sighup_after_the_file_was_read_but_before_the_loop_runs_reloads_it(
        daemon_config, daemon_factory, s3, bucket, tmp_path):
    """An operator changes the file and sends SIGHUP while the daemon is starting, just after
    it read the file: the signal was ignored and the change never applied."""
    config = daemon_config(rate_limit={"max_requests_per_second": 50},
                           janitor={"enabled": False})
    changed = config.read_text().replace("max_requests_per_second: 50",
                                         "max_requests_per_second: 7")
    assert changed != config.read_text()
    daemon = daemon_factory(config, launcher=[
        sys.executable, str(LAUNCHER), "sqlite3.connect", f"{config}={changed}", "--"])
    base = endpoint(daemon)
    # One reload, or two: with the loop already running when the signal came, uvloop may
    # deliver it too once the handler is in (the second finds nothing changed).
    page = wait_for_metric(base, lambda p: reloads(p, "applied") >= 1, what="the reload")
    assert page.value("uploader_rate_limit_max_requests_per_second") == 7
    assert "rate_limit.max_requests_per_second 50.0 -> 7.0" in daemon.log()
    assert daemon.terminate() == 0
