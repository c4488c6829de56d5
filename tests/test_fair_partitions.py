"""One throttled prefix does not hold up the others (no head-of-line blocking in the pool).

Against the real server through the fault proxy, which allows only RATE PUT/s
on the `slow/` partition and leaves `fast/` alone. The files are queued
slow, fast, slow, fast, ... as a directory walk might find them, then the
rest of the fast ones. From one shared FIFO, every worker would in time be
waiting on `slow/` and the fast files would trickle out at its pace, the last
of them after most of the slow ones. The proxy's log says when each file
arrived, so the order is measured, not assumed.
"""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest

from test_fastpath import make_config
from uploader.journal import Journal
from uploader.wiring import services

RATE = 8.0  # PUT/s on slow/
SLOW, FAST = 64, 200  # slow/ alone takes SLOW / RATE = 8 s


@pytest.mark.timeout(90)
async def test_a_throttled_prefix_does_not_hold_up_the_others(tmp_path, s3_server, s3_env,
                                                              bucket, s3, fault_proxy):
    source = tmp_path / "src"
    slow = [f"slow/{i:03d}.bin" for i in range(SLOW)]
    fast = [f"fast/{i:03d}.bin" for i in range(FAST)]
    order = [*itertools.chain.from_iterable(zip(slow, fast)), *fast[SLOW:]]
    for relative in order:
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(os.urandom(1024))
    fault_proxy.burst_seconds = 0.25  # a burst of 2 PUTs, then RATE/s
    fault_proxy.write_rates = {f"{bucket}/slow": RATE}
    config = make_config(source, fault_proxy.url, bucket, transfer={"concurrency": 16},
                         retry={"max_attempts": 30})
    journal = Journal(tmp_path / "journal.sqlite3")
    most_set_aside = 0

    async def watch_set_aside() -> None:
        nonlocal most_set_aside
        while True:
            most_set_aside = max(most_set_aside, svc.pool.set_aside)
            await asyncio.sleep(0.01)

    async with services(config, journal=journal) as svc:
        svc.pool.start()
        watcher = asyncio.create_task(watch_set_aside())
        for relative in order:
            await svc.pool.submit(source / relative, relative)
        await svc.pool.join()
        watcher.cancel()
        await svc.pool.stop(grace_seconds=1)
    journal.close()

    arrived = {r.key: r.t_end for r in fault_proxy.records(method="PUT", ok=True)}
    assert set(arrived) == set(order), "every file arrives"
    assert fault_proxy.count(fault="throttle") > 0, "slow/ was throttled"
    assert most_set_aside > 0  # what `uploader_queue_set_aside` reports
    last_fast = max(arrived[key] for key in fast)
    slow_before_last_fast = sum(arrived[key] < last_fast for key in slow)
    # All fast files are in while most slow ones still wait their turn. Measured: 8-10
    # slow ones before the last fast one (~0.9 s in: the limiter learning RATE); from one
    # shared FIFO, 50 (~6 s in).
    assert slow_before_last_fast < SLOW // 2, slow_before_last_fast
