"""What makes a running daemon operable: the HTTP endpoint and SIGHUP reload.

`operations(...)` wraps the daemon's run once its services and source exist:

- an aiohttp server in the daemon's own loop on `metrics.listen` serving
  `/metrics` (Prometheus text), `/healthz` (liveness) and `/readyz`
  (readiness), see `uploader.metrics` and `uploader.health`;
- a SIGHUP handler and the task that reloads the configuration
  (`uploader.reload`).

A `metrics.listen` that cannot be bound stops the start with a ConfigError
naming the key (exit 2), rather than running blind. On exit the tasks are
cancelled and awaited, the signal handler removed and the server closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import AsyncIterator

from aiohttp import web

from uploader import hangup
from uploader.config import Config
from uploader.errors import ConfigError
from uploader.health import LoopMonitor, Readiness, split_listen
from uploader.metrics import CONTENT_TYPE, DaemonMetrics
from uploader.reload import LiveTargets, Reloader
from uploader.sources.directory import DirectorySource
from uploader.wiring import Services
from uploader.workers import Workforce

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def operations(config: Config, *, svc: Services, workers: Workforce,
                     watcher: DirectorySource | None,
                     config_path: Path | None) -> AsyncIterator[Reloader]:
    """`workers`: what hands files to the pipeline (the worker pool, or the SQS source)."""
    monitor = LoopMonitor()
    metrics = None
    if config.metrics.enabled:
        metrics = DaemonMetrics(svc=svc, settings=lambda: reloader.config, workers=workers,
                                loop_lag=monitor.lag,
                                source_problem=watcher.problem if watcher else None)
    reloader = Reloader(path=config_path or Path(), config=config,
                        targets=LiveTargets(limiter=svc.retry.limiter, pool=workers,
                                            watcher=watcher),
                        on_result=metrics.count_reload if metrics is not None else None)
    tasks = [asyncio.create_task(monitor.run(), name="loop-monitor")]
    loop = asyncio.get_running_loop()
    if config_path is not None:
        tasks.append(asyncio.create_task(reloader.run(), name="reload"))
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
        if hangup.take_held():  # came while starting: the file may have changed since read
            reloader.request()
    runner: web.AppRunner | None = None
    try:
        if metrics is not None:
            readiness = Readiness(client=svc.pipeline.ctx.client, bucket=config.s3.bucket,
                                  state_dir=config.state_dir, journal_path=svc.journal.path,
                                  source_problem=watcher.problem if watcher else None)
            runner = await _serve(config.metrics.listen, _app(metrics, monitor, readiness))
        yield reloader
    finally:
        if config_path is not None:
            loop.remove_signal_handler(signal.SIGHUP)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # asyncio restored the default: death
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if runner is not None:
            await runner.cleanup()
        if metrics is not None:
            metrics.close()


def _app(metrics: DaemonMetrics, monitor: LoopMonitor, readiness: Readiness) -> web.Application:
    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=await metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        alive, detail = monitor.check()
        return web.Response(text=("ok" if alive else "unhealthy") + f"\n{detail}\n",
                            status=200 if alive else 503)

    async def readyz(request: web.Request) -> web.Response:
        report = await readiness.check()
        return web.Response(text=report.text(), status=200 if report.ready else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def _serve(listen: str, app: web.Application) -> web.AppRunner:
    host, port = split_listen(listen)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host or None, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"metrics.listen: cannot serve on {listen}: "
                          f"{exc.strerror or exc}; choose another host:port, or set "
                          "metrics.enabled: false") from None
    for address in runner.addresses:
        host_text = f"[{address[0]}]" if ":" in address[0] else address[0]
        log.info("serving /metrics, /healthz and /readyz on http://%s:%d", host_text,
                 address[1])
    return runner
