"""A fleet of uploaders on one throttled prefix: aggregate goodput and throttling.

Starts SeaweedFS, a fault proxy in front of it that allows R writes/s per
prefix partition (answering 503 SlowDown beyond, like S3), and moto's server
for SQS. For N = 1, 2, 3 uploader processes (`uploader run`, `source.type:
sqs`), it enqueues the same number of small files (all keys on one prefix),
lets the fleet drain the queue, and reads the proxy's log:

- goodput: successful PUTs per second between the first and the last, as a
  fraction of R (target >= 0.9);
- throttled: SlowDown answers as a percentage of all PUT requests (target <= 2 %).

Each instance has its own adaptive limiter (as each AWS SDK client has); the
question is whether N independent limiters share one prefix's limit well.

    .venv/bin/python bench/fleet.py --rate 100 --objects 1500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402

from fault_proxy import FaultProxy  # noqa: E402
from moto_server import start_moto_server  # noqa: E402
from s3server import SeaweedS3  # noqa: E402

UPLOADER = str(Path(sys.executable).with_name("uploader"))


def make_files(root: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = root / f"f{i % 16:02d}" / f"obj-{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1024))
        paths.append(path)
    return paths


def feed_queue(sqs, url: str, paths: list[Path], *, keep: int = 200) -> threading.Thread:
    """Keep about `keep` messages waiting, like a steady producer.

    moto's ReceiveMessage scans the whole queue on every call (~0.2 ms per
    message held), so a deep queue would make moto, not S3, the bottleneck.
    """
    def feed() -> None:
        for start in range(0, len(paths), 10):
            while queue_depth(sqs, url) >= keep:
                time.sleep(0.05)
            sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": json.dumps({"path": str(p)})}
                for i, p in enumerate(paths[start:start + 10])])

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def queue_depth(sqs, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return sum(int(v) for v in attributes.values())


def write_config(path: Path, *, bucket: str, proxy: FaultProxy, region: str, root: Path,
                 queue_url: str, sqs_endpoint: str, state_dir: Path) -> None:
    path.write_text(yaml.safe_dump({
        "source": {"type": "sqs", "directory": str(root), "queue_url": queue_url,
                   "endpoint_url": sqs_endpoint, "wait_time_seconds": 1},
        "s3": {"bucket": bucket, "prefix": "fleet/", "endpoint_url": proxy.url,
               "region": region, "addressing_style": "path"},
        "transfer": {"concurrency": 32},
        "janitor": {"enabled": False},
        "metrics": {"listen": "127.0.0.1:0"},  # a free port each: several run side by side
        "state_dir": str(state_dir),
        "logging": {"level": "WARNING"},
    }))


def run_fleet(n: int, *, server: SeaweedS3, proxy: FaultProxy, moto, work: Path,
              objects: int) -> dict[str, float]:
    bucket = server.create_bucket(f"fleet-{n}-{uuid.uuid4().hex[:6]}")
    root = work / f"share-{n}"
    paths = make_files(root, objects)
    sqs = moto.client("sqs")
    queue_url = sqs.create_queue(QueueName=f"fleet-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    proxy.reset_log()
    processes = []
    for i in range(n):
        config = work / f"fleet-{n}-{i}.yaml"
        write_config(config, bucket=bucket, proxy=proxy, region=server.region, root=root,
                     queue_url=queue_url, sqs_endpoint=moto.endpoint_url,
                     state_dir=work / f"state-{n}-{i}")
        env = {**os.environ, **server.env()}
        processes.append(subprocess.Popen([UPLOADER, "run", "--config", str(config)], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    feeder = feed_queue(moto.client("sqs"), queue_url, paths)
    deadline = time.monotonic() + 20 * objects / proxy.write_rate_per_prefix + 60
    while (feeder.is_alive() or queue_depth(sqs, queue_url)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=60)
    puts = [r for r in proxy.records(method="PUT", bucket=bucket)]
    ok = [r for r in puts if r.ok]
    throttled = sum(1 for r in puts if r.fault == "throttle")
    seconds = max(r.t_end for r in ok) - min(r.t_start for r in puts)
    stored = sum(1 for page in server.boto3_client().get_paginator("list_objects_v2").paginate(
        Bucket=bucket) for _ in page.get("Contents", []))
    return {"processes": n, "objects": len(ok), "stored": stored, "seconds": seconds,
            "goodput": len(ok) / seconds, "throttled_pct": 100 * throttled / len(puts),
            "requests": len(puts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="R: PUT/s per prefix")
    parser.add_argument("--objects", type=int, default=1500)
    parser.add_argument("--fleet", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, SeaweedS3() as server:
        moto = start_moto_server()
        proxy = FaultProxy(server.endpoint_url).start()
        proxy.write_rate_per_prefix = args.rate
        try:
            results = [run_fleet(n, server=server, proxy=proxy, moto=moto, work=Path(tmp),
                                 objects=args.objects) for n in args.fleet]
        finally:
            proxy.stop()
            moto.stop()
    print(f"R = {args.rate:g} PUT/s on one prefix, {args.objects} objects of 1 KiB, "
          f"proxy burst {proxy.burst_seconds:g} s")
    print(f"{'processes':>9} {'objects':>8} {'stored':>7} {'seconds':>8} {'goodput/s':>10} "
          f"{'x R':>6} {'throttled %':>12}")
    for r in results:
        print(f"{r['processes']:>9} {r['objects']:>8} {r['stored']:>7} {r['seconds']:>8.1f} "
              f"{r['goodput']:>10.1f} {r['goodput'] / args.rate:>6.2f} "
              f"{r['throttled_pct']:>12.2f}")


if __name__ == "__main__":
    main()
