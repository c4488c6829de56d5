"""/metrics of a running daemon, scraped while files go up, and the Grafana dashboard on it."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest

from daemon_harness import daemon_config, daemon_factory, run_cli, wait_until  # noqa: F401
from daemon_harness import keys_in
from ops_harness import Scrape, endpoint, scrape, wait_for_metric
from uploader.metrics import top_partitions
from uploader.limiter import PartitionStats

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "uploader-dashboard.json"
MiB = 1024 * 1024


def write(outbox: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (outbox / name).write_bytes(data)


def uploaded(page: Scrape) -> float:
    return page.value("uploader_files_total", 0, outcome="uploaded")


@pytest.mark.timeout(90)
def test_counters_move_as_the_files_go(daemon_config, daemon_factory, fault_proxy, s3, bucket,
                                       tmp_path):
    config = daemon_config(s3={"endpoint_url": fault_proxy.url},
                           rate_limit={"max_requests_per_second": 500},
                           retry={"max_attempts": 2, "retry_later_seconds": 0.5},
                           janitor={"enabled": False})
    outbox = tmp_path / "outbox"
    daemon = daemon_factory(config)
    base = endpoint(daemon)
    before = scrape(base)
    assert uploaded(before) == 0 and before.value("uploader_bytes_uploaded_total") == 0
    assert before.value("uploader_breaker_state", state="closed") == 1
    assert before.value("uploader_queue_depth") == 0
    assert before.value("uploader_queue_set_aside") == 0
    assert before.value("uploader_checksum", algorithm="md5", basis="learning") == 1
    assert before.value("uploader_last_upload_timestamp_seconds") is None

    # Three small files, then a multipart one: the counters follow.
    small = {f"small-{i}.bin": os.urandom(1000 + i) for i in range(3)}
    write(outbox, small)
    page = wait_for_metric(base, lambda p: uploaded(p) == 3, what="3 uploads counted")
    assert page.value("uploader_bytes_uploaded_total") == sum(map(len, small.values()))
    assert page.value("uploader_upload_duration_seconds_count") == 3
    assert page.value("uploader_upload_size_bytes_count") == 3
    assert page.value("uploader_seconds_since_last_upload") is not None
    assert page.value("uploader_journal_writes_total") > 0
    assert page.value("uploader_journal_commits_total") > 0
    # SeaweedFS echoed the first PUT's x-amz-checksum-crc32c (transfer.checksum: auto).
    assert page.value("uploader_checksum", algorithm="crc32c", basis="echo") == 1
    assert page.value("uploader_checksum", algorithm="md5", basis="learning") is None
    assert page.value("uploader_limiter_requests_per_second",
                      partition=f"{bucket}/incoming") == 500
    write(outbox, {"big.bin": os.urandom(6 * MiB)})
    page = wait_for_metric(base, lambda p: uploaded(p) == 4, what="the multipart upload")
    assert page.value("uploader_parts_uploaded_total") == 2
    assert page.value("uploader_bytes_uploaded_total") == 6 * MiB + sum(map(len, small.values()))
    assert _bucket(page, "uploader_upload_size_bytes", 4 * MiB) == 3  # the small ones

    # Errors: the file is deferred, counted by reason, and goes up once they stop.
    fault_proxy.error_rate = 1.0
    write(outbox, {"unlucky.bin": b"x" * 10})
    page = wait_for_metric(base, lambda p: p.total("uploader_failures_total") >= 1,
                           what="a deferred file counted")
    assert set(_labels(page, "uploader_failures_total", "reason")) <= {
        "InternalError", "ServiceUnavailable"}
    assert page.total("uploader_retries_total") >= 1
    assert page.value("uploader_files_total", outcome="deferred") >= 1
    fault_proxy.clear_faults()
    wait_for_metric(base, lambda p: uploaded(p) == 5, what="the deferred file uploaded")

    # Throttling: SlowDown answers are counted, and the limiter cuts the partition's rate.
    fault_proxy.burst_seconds = 0.1
    fault_proxy.write_rate_per_prefix = 5
    write(outbox, {f"burst-{i}.bin": os.urandom(100) for i in range(8)})
    page = wait_for_metric(base, lambda p: uploaded(p) == 13, what="the burst uploaded")
    assert page.value("uploader_throttles_total") > 0
    assert page.value("uploader_retries_total", reason="SlowDown") > 0
    assert page.value("uploader_limiter_requests_per_second",
                      partition=f"{bucket}/incoming") < 500
    assert page.value("uploader_queue_depth") == 0 and page.value("uploader_uploads_in_flight") == 0
    assert page.value("uploader_journal_files", state="pending") == 0
    assert len(keys_in(s3, bucket)) == 13
    assert daemon.terminate() == 0


def _bucket(page: Scrape, histogram: str, le: float) -> float:
    return next(s.value for f in page.families for s in f.samples
                if s.name == f"{histogram}_bucket" and float(s.labels["le"]) == le)


def _labels(page: Scrape, name: str, label: str) -> list[str]:
    return [s.labels[label] for f in page.families for s in f.samples if s.name == name]


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    exprs += [variable["definition"] for variable in dashboard["templating"]["list"]
              if variable["type"] == "query"]
    assert exprs, "the dashboard queries nothing"
    return {name for expr in exprs
            for name in re.findall(r"\b((?:uploader|process)_[a-z0-9_]+)\b", expr)}


@pytest.mark.timeout(60)
def test_the_dashboard_queries_only_metrics_the_daemon_serves(daemon_config, daemon_factory,
                                                              tmp_path):
    config = daemon_config(rate_limit={"max_requests_per_second": 100,
                                       "max_bytes_per_second": "50MiB"})
    daemon = daemon_factory(config)
    base = endpoint(daemon)
    (tmp_path / "outbox" / "one.txt").write_text("one")
    page = wait_for_metric(base, lambda p: uploaded(p) == 1, what="one upload")
    missing = sorted(dashboard_metric_names() - page.names)
    assert not missing, f"the dashboard queries metrics /metrics does not have: {missing}"
    assert daemon.terminate() == 0


def test_dashboard_is_valid_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["title"] and dashboard["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


@pytest.mark.timeout(60)
def test_a_taken_metrics_port_stops_the_start_naming_the_key(daemon_config, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = daemon_config(metrics={"listen": f"127.0.0.1:{port}"})
        result = run_cli("run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert f"metrics.listen: cannot serve on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_partition_labels_stay_bounded():
    def stats(rate, throttles, waiting=0):
        return PartitionStats(rate=rate, w_max=None, success_rate=None, waiting=waiting,
                              in_flight=0, cuts=0, throttles=throttles, ignored_throttles=0,
                              last_cut_at=None)
    snapshot = {f"b/p{i:03d}": stats(float(i) if i % 2 else None, throttles=i, waiting=1)
                for i in range(100)}
    views = top_partitions(snapshot, limit=5)
    assert [v.name for v in views] == ["b/p099", "b/p097", "b/p095", "b/p093", "b/p091", "other"]
    other = views[-1]
    assert other.rate == sum(float(i) for i in range(1, 90, 2))
    assert other.waiting == 95
    assert top_partitions({}, limit=5) == []


@pytest.mark.timeout(90)
def test_rescans_pass_over_files_already_uploaded_but_not_over_changed_ones(
        daemon_config, daemon_factory, s3, bucket, tmp_path):
    """A rescan finds every file again; those journaled as uploaded, and the same file
    since, are passed over (not handed to the workers nor counted as handled again:
    at a million files, every rescan would otherwise count a million). One rewritten
    with its size and mtime put back while the daemon was down is not."""
    config = daemon_config(source={"rescan_interval_seconds": 0.3},
                           logging={"level": "DEBUG"}, janitor={"enabled": False})
    outbox = tmp_path / "outbox"
    write(outbox, {f"f{i:02d}.bin": os.urandom(100 + i) for i in range(20)})
    daemon = daemon_factory(config)
    base = endpoint(daemon)
    wait_for_metric(base, lambda p: uploaded(p) == 20, what="20 uploads")
    scans = daemon.log().count("scanned 20 files below")
    wait_until(lambda: daemon.log().count("scanned 20 files below") >= scans + 3,
               what="three rescans since")
    page = scrape(base)
    assert page.value("uploader_files_total", 0, outcome="already_uploaded") == 0
    assert uploaded(page) == 20
    assert daemon.terminate() == 0

    rewritten = outbox / "f05.bin"
    before = rewritten.stat()
    new_bytes = os.urandom(before.st_size)
    rewritten.write_bytes(new_bytes)
    os.utime(rewritten, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = daemon_factory(config)
    wait_until(lambda: s3.get_object(Bucket=bucket, Key="incoming/f05.bin")["Body"].read()
               == new_bytes, what="the rewritten file uploaded")
    page = scrape(endpoint(again))
    assert uploaded(page) == 1
    assert page.value("uploader_files_total", 0, outcome="already_uploaded") == 0
    assert again.terminate() == 0
