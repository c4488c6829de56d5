"""`run_daemon` in-process: a failing source still gets the graceful stop."""

from __future__ import annotations

import pytest

from uploader import daemon
from uploader.config import validate_config


async def test_a_failing_source_still_stops_gracefully(tmp_path, s3_server, s3_env, bucket,
                                                       monkeypatch):
    """In-flight uploads get their grace period and the pool is stopped even when the
    source's task dies of an unexpected error (which is then raised, not swallowed)."""
    stops: list[float] = []

    async def failing_run(self) -> None:
        self.pool.start()
        raise RuntimeError("the source broke")

    real_stop = daemon._DirectoryRun.stop

    async def recording_stop(self, *, grace_seconds: float) -> None:
        stops.append(grace_seconds)
        await real_stop(self, grace_seconds=grace_seconds)

    monkeypatch.setattr(daemon._DirectoryRun, "run", failing_run)
    monkeypatch.setattr(daemon._DirectoryRun, "stop", recording_stop)
    (tmp_path / "outbox").mkdir()
    config = validate_config({
        "source": {"directory": str(tmp_path / "outbox")},
        "s3": {"bucket": bucket, "endpoint_url": s3_server.endpoint_url,
               "region": s3_server.region, "addressing_style": "path"},
        "state_dir": str(tmp_path / "state"), "shutdown_grace_seconds": 3,
        "metrics": {"listen": "127.0.0.1:0"}, "janitor": {"enabled": False}})
    with pytest.raises(RuntimeError, match="the source broke"):
        await daemon.run_daemon(config)
    assert stops == [3]
