"""Goodput under per-prefix throttling: the uploader vs boto3 (standard and adaptive retries).

Starts SeaweedFS and, in front of it, the fault proxy from tests/ allowing R
writes/s per prefix partition (a token bucket of R/s holding the proxy's
default burst; beyond it the proxy answers 503 SlowDown, as S3 does). Then it
uploads the same N files of 1 KiB with each client, interleaved per round:

1. uploader        `uploader upload` (the real CLI, a subprocess), 32 files at a
                   time, default settings (adaptive limiter on);
2. boto3 standard  `put_object` from 32 threads, retries mode "standard";
3. boto3 adaptive  the same with retries mode "adaptive" (client-side rate limiter).

boto3 runs in a subprocess of its own too, so no client shares the proxy's
process (and GIL) and skews its timing.

Every client run gets a fresh bucket, so the proxy's token bucket for its
partition starts full and untouched by earlier runs. One prefix: all keys are
`bench/<client>/obj-NNNNN.bin`, and the proxy's partition is the bucket plus
the key's first segment, so one partition (`<bucket>/bench`) per run.

Spreading: the uploader with `keys.spread: hash`, `keys.partitions: K` and an
EMPTY s3 prefix puts the hash segment first (`<h>/obj-NNNNN.bin`), which both
the proxy and the uploader's limiter (`partition_for`: bucket + first
segment) see as K partitions; capacity K*R. boto3 standard is run on the same
keys for comparison. The spread scenario uploads `--spread-objects` files
(default N*K, the same load per partition as the one-prefix runs).

Mixed: one prefix throttled, another free. Keys spread over 2 partitions
(`keys.spread: hash`, empty prefix, the same keys for boto3), and the proxy
throttles only partition `0` (R/s); partition `1` is free. A client whose
workers all end up waiting on the throttled partition sends the free
partition's files at the throttled pace (head-of-line blocking). Reported:
when the free partition's last file was in, and how many throttled ones were
in by then (`--mixed-objects`, default N).

Measured from the proxy's request log, per client run (PUT requests to the run's bucket):
  ok PUTs     PutObject answered 2xx by SeaweedFS
  requests    every PUT the proxy saw (first attempts and retries)
  throttled % 503 SlowDown answered by the proxy / requests
  seconds     first PUT request received -> last PUT response sent
  goodput     ok PUTs / seconds; "x cap": as a fraction of R (or K*R)
  steady      goodput after the first STEADY_SKIP_S seconds, when the proxy's
              initial burst credit (R * burst seconds) is long spent
  stored      objects listed in the bucket afterwards (directly, not via the proxy)
  client CPU  user + system CPU seconds of the client's process
  others' CPU CPU seconds the machine spent meanwhile on processes other than this
              script, its clients and SeaweedFS: "!!" when above a fifth of a CPU, i.e.
              the run competed with other work and its numbers are not comparable

A client that spends the initial burst and then sends exactly R scores
goodput = N / ((N - R*burst) / R), above 1.0 R (e.g. 1.11 R for N=2000,
R=200, 1 s of burst); "steady" has no such bonus.

    .venv/bin/python bench/throttling.py --rate 200 --objects 2000
    .venv/bin/python bench/throttling.py --repeat 3 --out bench/results/throttling.md --timeline
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402

from fault_proxy import FaultProxy  # noqa: E402
from s3server import SeaweedS3  # noqa: E402
from uploader.keys import KeyNamer  # noqa: E402

UPLOADER = str(Path(sys.executable).with_name("uploader"))
CONCURRENCY = 32
OBJECT_SIZE = 1024
BOTO3_MAX_ATTEMPTS = 10
STEADY_SKIP_S = 2.0
CLIENT_TIMEOUT_S = 600
ONE_PREFIX = "bench/"


@dataclass
class Run:
    """One client's upload of one set of files into its own fresh bucket."""

    scenario: str  # "one prefix" | "spread K"
    client: str  # "uploader" | "boto3 standard" | "boto3 adaptive"
    round: int
    bucket: str
    prefix: str  # s3 prefix of the keys ('' when spread)
    capacity: float  # R, or K*R
    objects: int
    partitions: int  # proxy partitions the keys should fall into: 1, or K
    client_report: str = ""  # the uploader's summary line / boto3's failure count
    client_cpu: float = 0.0  # CPU seconds (user + system) of the client's process
    other_cpu: float | None = None  # CPU seconds used meanwhile by processes not ours
    wall: float = 0.0  # seconds the client process ran (start-up included)
    ok_puts: int = 0
    requests: int = 0
    throttled: int = 0
    seconds: float = 0.0
    steady_goodput: float | None = None
    stored: int = 0
    per_partition: dict[str, int] | None = None
    timeline: list[tuple[int, int, int]] | None = None  # (second, ok, throttled)
    other_requests: dict[str, int] | None = None  # non-PUT requests to the bucket, by method
    throttled_segment: str | None = None  # mixed: the one partition the proxy throttles
    free_done_s: float | None = None  # mixed: when the free partition's last file was in
    held_by_then: int | None = None  # mixed: throttled partition's files in by that time
    held_total: int | None = None

    @property
    def goodput(self) -> float:
        return self.ok_puts / self.seconds if self.seconds > 0 else 0.0

    @property
    def throttled_pct(self) -> float:
        return 100.0 * self.throttled / self.requests if self.requests else 0.0

    @property
    def complete(self) -> bool:
        return self.stored == self.objects


# ------------------------------------------------------------------ set-up
def hermetic_environment() -> None:
    """Never pick up the developer's AWS settings (profiles, retry mode, ...)."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                      AWS_EC2_METADATA_DISABLED="true")


def make_files(root: Path, count: int) -> list[str]:
    """`count` files of OBJECT_SIZE random bytes, flat in `root`; their relative paths."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"obj-{i:05d}.bin" for i in range(count)]
    for name in names:
        (root / name).write_bytes(os.urandom(OBJECT_SIZE))
    return names


def fresh_bucket(server: SeaweedS3, client: str, round_: int) -> str:
    tag = client.replace("boto3 ", "b3-").replace(" ", "-")
    return server.create_bucket(f"thr-{tag}-{round_}-{uuid.uuid4().hex[:8]}")


class CpuMeter:
    """CPU seconds the whole machine spent vs what we (this process, our clients and
    SeaweedFS) spent, so a run disturbed by other work on the machine shows (Linux only)."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> tuple[float, float] | None:
        """(machine busy seconds, our seconds) so far; None where /proc is missing."""
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
            user, nice, system, _idle, _iowait, irq, softirq, steal = fields
            busy = (user + nice + system + irq + softirq + steal) / self.tick
            server = 0.0
            if self.server_pid:
                stat = Path(f"/proc/{self.server_pid}/stat").read_text()
                times = stat.rsplit(")", 1)[1].split()[11:15]  # utime stime cutime cstime
                server = sum(int(x) for x in times) / self.tick
        except (OSError, ValueError, IndexError):
            return None
        me = resource.getrusage(resource.RUSAGE_SELF)
        return busy, me.ru_utime + me.ru_stime + children_cpu() + server

    @staticmethod
    def others(before: tuple[float, float] | None, after: tuple[float, float] | None
               ) -> float | None:
        if before is None or after is None:
            return None
        return max(0.0, (after[0] - before[0]) - (after[1] - before[1]))


def children_cpu() -> float:
    """CPU seconds used so far by our finished child processes (the clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def client_env(server: SeaweedS3, proxy: FaultProxy) -> dict[str, str]:
    return {**os.environ, **server.env(proxy.url)}


# ---------------------------------------------------------------- clients
def run_uploader(server: SeaweedS3, proxy: FaultProxy, *, src: Path, bucket: str,
                 prefix: str, work: Path, spread_partitions: int | None = None) -> str:
    """`uploader upload` as a user runs it; returns its summary line."""
    settings: dict = {
        "s3": {"addressing_style": "path", "region": server.region},
        "transfer": {"concurrency": CONCURRENCY},
    }
    if spread_partitions:
        settings["keys"] = {"spread": "hash", "partitions": spread_partitions}
    config = work / f"uploader-{bucket}.yaml"
    config.write_text(yaml.safe_dump(settings))
    command = [UPLOADER, "upload", "--config", str(config), "--endpoint-url", proxy.url,
               str(src), f"s3://{bucket}/{prefix}"]
    done = subprocess.run(command, env=client_env(server, proxy), capture_output=True,
                          text=True, timeout=CLIENT_TIMEOUT_S)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        print(f"!! uploader exited {done.returncode}: {summary}\n{tail}", file=sys.stderr)
        return f"exit {done.returncode}: {summary}"
    return summary


def run_boto3(server: SeaweedS3, proxy: FaultProxy, *, mode: str, src: Path,
              names: list[str], keys: list[str], bucket: str) -> str:
    """boto3 in its own process (see boto3_worker); returns a short report."""
    job = {"mode": mode, "endpoint": proxy.url, "region": server.region, "bucket": bucket,
           "files": [str(src / n) for n in names], "keys": keys}
    done = subprocess.run([sys.executable, __file__, "--boto3-worker"], input=json.dumps(job),
                          env=client_env(server, proxy), capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT_S)
    if done.returncode != 0:
        print(f"!! boto3 worker exited {done.returncode}:\n{done.stderr[-3000:]}",
              file=sys.stderr)
        return f"worker exit {done.returncode}"
    report = json.loads(done.stdout)
    if report["failed"]:
        print(f"!! boto3 {mode}: {report['failed']} PUTs failed for good, e.g. "
              f"{report['errors'][:3]}", file=sys.stderr)
    return f"{report['failed']} failed"


def boto3_worker() -> None:
    """The boto3 client side (runs in a subprocess): put every file, 32 threads, one client."""
    import boto3
    from botocore.config import Config

    job = json.load(sys.stdin)
    client = boto3.session.Session().client(
        "s3", endpoint_url=job["endpoint"], region_name=job["region"],
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": job["mode"], "max_attempts": BOTO3_MAX_ATTEMPTS},
            max_pool_connections=CONCURRENCY,
            # as the uploader (and SeaweedFS-friendly): no CRC32 trailers
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ))

    def put(pair: tuple[str, str]) -> str | None:
        path, key = pair
        try:
            client.put_object(Bucket=job["bucket"], Key=key, Body=Path(path).read_bytes())
        except Exception as exc:  # noqa: BLE001 - counted and reported
            return f"{key}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        errors = [e for e in pool.map(put, zip(job["files"], job["keys"])) if e]
    json.dump({"failed": len(errors), "errors": errors[:10]}, sys.stdout)


# ------------------------------------------------------------ measurement
def measure(run: Run, proxy: FaultProxy, server: SeaweedS3) -> None:
    """Fill `run`'s numbers from the proxy's log and a listing of its bucket."""
    puts = proxy.records(bucket=run.bucket, method="PUT")
    run.other_requests = dict(collections.Counter(
        r.method for r in proxy.records(bucket=run.bucket) if r.method != "PUT"))
    ok = [r for r in puts if r.ok and r.is_put_object]
    run.requests = len(puts)
    run.ok_puts = len(ok)
    run.throttled = sum(1 for r in puts if r.fault == "throttle")
    if puts:
        first = min(r.t_start for r in puts)
        last = max(r.t_end for r in puts)
        run.seconds = last - first
        run.steady_goodput = steady_goodput(ok, first, last)
        run.timeline = timeline(puts, first)
    run.per_partition = dict(sorted(collections.Counter(r.partition for r in ok).items()))
    run.stored = count_stored(server, run.bucket, run.prefix)
    if run.throttled_segment is not None and ok:
        held = f"{run.bucket}/{run.throttled_segment}"
        free_done = max(r.t_end for r in ok if r.partition != held)
        run.free_done_s = free_done - min(r.t_start for r in puts)
        run.held_by_then = sum(1 for r in ok if r.partition == held and r.t_end <= free_done)
        run.held_total = sum(1 for r in ok if r.partition == held)


def steady_goodput(ok: list, first: float, last: float) -> float | None:
    start = first + STEADY_SKIP_S
    if last - start < STEADY_SKIP_S:  # too short a run to say
        return None
    return sum(1 for r in ok if r.t_end >= start) / (last - start)


def timeline(puts: list, first: float) -> list[tuple[int, int, int]]:
    """(second since first request, ok, throttled) per second of the run."""
    ok: collections.Counter[int] = collections.Counter()
    throttled: collections.Counter[int] = collections.Counter()
    for r in puts:
        second = int(r.t_end - first)
        if r.fault == "throttle":
            throttled[second] += 1
        elif r.ok:
            ok[second] += 1
    span = max([*ok, *throttled], default=-1) + 1
    return [(s, ok[s], throttled[s]) for s in range(span)]


def count_stored(server: SeaweedS3, bucket: str, prefix: str) -> int:
    client = server.boto3_client()  # straight to SeaweedFS: not in the proxy's log
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sum(len(page.get("Contents", [])) for page in pages)
    finally:
        client.close()


# -------------------------------------------------------------- scenarios
def one_client(client: str, *, scenario: str, round_: int, server: SeaweedS3,
               proxy: FaultProxy, meter: CpuMeter, src: Path, names: list[str], work: Path,
               prefix: str, capacity: float, spread: int | None = None,
               throttle_only: str | None = None) -> Run:
    """`throttle_only`: the proxy throttles only this key segment's partition (mixed)."""
    bucket = fresh_bucket(server, client, round_)
    run = Run(scenario=scenario, client=client, round=round_, bucket=bucket, prefix=prefix,
              capacity=capacity, objects=len(names), partitions=spread or 1,
              throttled_segment=throttle_only)
    if throttle_only is not None:
        proxy.write_rates = {f"{bucket}/{throttle_only}": capacity}
    print(f"  {scenario:<10} round {round_}  {client:<15} -> s3://{bucket}/{prefix}",
          flush=True)
    cpu_before, machine_before, started = children_cpu(), meter.sample(), time.monotonic()
    if client == "uploader":
        run.client_report = run_uploader(server, proxy, src=src, bucket=bucket, prefix=prefix,
                                         work=work, spread_partitions=spread)
    else:
        namer = KeyNamer(prefix=prefix, spread="hash" if spread else "none",
                         partitions=spread or 1)
        run.client_report = run_boto3(server, proxy, mode=client.split()[1], src=src,
                                      names=names, keys=[namer.key(n) for n in names],
                                      bucket=bucket)
    run.wall = time.monotonic() - started
    run.client_cpu = children_cpu() - cpu_before
    run.other_cpu = CpuMeter.others(machine_before, meter.sample())
    measure(run, proxy, server)
    return run


def one_prefix_rounds(args: argparse.Namespace, **env) -> list[Run]:
    runs = []
    for round_ in range(1, args.repeat + 1):
        for client in ("uploader", "boto3 standard", "boto3 adaptive"):
            runs.append(one_client(client, scenario="one prefix", round_=round_,
                                   prefix=ONE_PREFIX + client.replace(" ", "-") + "/",
                                   capacity=args.rate, **env))
    return runs


def mixed_rounds(args: argparse.Namespace, **env) -> list[Run]:
    runs = []
    for round_ in range(1, args.repeat + 1):
        for client in ("uploader", "boto3 standard", "boto3 adaptive"):
            runs.append(one_client(client, scenario="mixed", round_=round_, prefix="",
                                   capacity=args.rate, spread=2, throttle_only="0", **env))
    return runs


def spread_rounds(args: argparse.Namespace, **env) -> list[Run]:
    k = args.spread_partitions
    clients = ["uploader"] + ([] if args.no_spread_boto3 else ["boto3 standard"])
    runs = []
    for round_ in range(1, args.repeat + 1):
        for client in clients:
            runs.append(one_client(client, scenario=f"spread {k}", round_=round_, prefix="",
                                   capacity=k * args.rate, spread=k, **env))
    return runs


# ---------------------------------------------------------------- report
COLUMNS = ("scenario", "client", "round", "objects", "stored", "ok PUTs", "requests",
           "throttled %", "seconds", "goodput/s", "x cap", "steady x cap", "client CPU s",
           "others' CPU s")


def row(run: Run) -> tuple[str, ...]:
    steady = "-" if run.steady_goodput is None else f"{run.steady_goodput / run.capacity:.2f}"
    stored = f"{run.stored}" + ("" if run.complete else " !!")
    return (run.scenario, run.client, str(run.round), str(run.objects), stored,
            str(run.ok_puts), str(run.requests), f"{run.throttled_pct:.2f}",
            f"{run.seconds:.1f}", f"{run.goodput:.1f}", f"{run.goodput / run.capacity:.2f}",
            steady, f"{run.client_cpu:.1f}",
            "?" if run.other_cpu is None else f"{run.other_cpu:.1f}" + (" !!" if disturbed(run) else ""))


def disturbed(run: Run) -> bool:
    """Other work took more than a fifth of a CPU on average during the run."""
    return run.other_cpu is not None and run.other_cpu > 0.2 * run.wall


def text_table(runs: list[Run]) -> str:
    rows = [COLUMNS, *(row(r) for r in runs)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    left = {0, 1}  # text columns
    lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(runs: list[Run]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join(":--" if i < 2 else "--:" for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(row(r)) + " |" for r in runs]
    return "\n".join(lines)


def header(args: argparse.Namespace, burst: float) -> list[str]:
    n, r, k = args.objects, args.rate, args.spread_partitions
    ideal = n / max(n - r * burst, 1) if n > r * burst else float("inf")
    return [
        f"R = {r:g} PUT/s per prefix partition, proxy burst {burst:g} s "
        f"(token bucket of {r * burst:g}); objects of {OBJECT_SIZE} B; "
        f"{CONCURRENCY} concurrent requests per client; {os.cpu_count()} CPUs",
        f"one prefix: {n} objects, cap = R; spread {k}: {args.spread_objects} objects over "
        f"{k} partitions, cap = {k}*R = {k * r:g}",
        f"ideal one-prefix goodput (burst spent, then exactly R): {ideal:.2f} x R; "
        f"steady = goodput after the first {STEADY_SKIP_S:g} s; client CPU s = user+system "
        f"seconds of the client's process; others' CPU s = CPU used meanwhile by processes "
        f"other than this benchmark, its clients and SeaweedFS (!! = the run was disturbed)",
    ]


def details(runs: list[Run], *, show_timeline: bool) -> list[str]:
    lines = []
    for run in runs:
        lines.append(f"{run.scenario} / {run.client} / round {run.round}: {run.client_report}")
        if run.other_requests:
            lines.append(f"    other requests: {run.other_requests}")
        if run.per_partition and len(run.per_partition) > 1:
            biggest = max(run.per_partition.values())
            bound = run.objects * run.capacity / len(run.per_partition) / biggest
            parts = ", ".join(f"{p.split('/', 1)[1]}: {c}" for p, c in run.per_partition.items())
            lines.append(f"    ok PUTs per partition: {parts} (the busiest bounds goodput "
                         f"at ~{bound / run.capacity:.2f} x cap without burst credit)")
        if run.free_done_s is not None:
            lines.append(f"    free partition: its last file in after {run.free_done_s:.1f} s of "
                         f"{run.seconds:.1f} s, with {run.held_by_then} of the throttled "
                         f"partition's {run.held_total} in by then")
        if show_timeline and run.timeline:
            cells = " ".join(f"{ok}/{th}" for _, ok, th in run.timeline)
            lines.append(f"    per second (ok/throttled): {cells}")
    return lines


def disturbances(runs: list[Run]) -> list[str]:
    return [f"!! DISTURBED: {r.scenario} / {r.client} / round {r.round}: other processes used "
            f"{r.other_cpu:.1f} CPU s during the run ({r.wall:.1f} s): CPU-contended numbers"
            for r in runs if disturbed(r)]


def problems(runs: list[Run]) -> list[str]:
    """Loud lines for anything that makes a run's numbers wrong or its upload incomplete."""
    found = []
    for r in runs:
        name = f"{r.scenario} / {r.client} / round {r.round}"
        if not r.complete:
            found.append(f"!!! MISSING OBJECTS: {name}: {r.stored} of {r.objects} stored in "
                         f"s3://{r.bucket}/{r.prefix}")
        if len(r.per_partition or {}) != r.partitions:
            found.append(f"!!! PARTITIONS: {name}: ok PUTs fell into {len(r.per_partition or {})}"
                         f" proxy partitions, expected {r.partitions}: {r.per_partition}")
    return found


# ------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="R: PUT/s per prefix partition")
    parser.add_argument("--objects", type=int, default=2000, help="N: objects per one-prefix run")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all clients")
    parser.add_argument("--spread-partitions", type=int, default=4, help="K; 0 skips spreading")
    parser.add_argument("--spread-objects", type=int, default=None,
                        help="objects per spread run (default N*K)")
    parser.add_argument("--no-spread-boto3", action="store_true",
                        help="spread scenario: the uploader only")
    parser.add_argument("--mixed-objects", type=int, default=None,
                        help="objects in the mixed scenario (default N; 0 skips it)")
    parser.add_argument("--timeline", action="store_true",
                        help="also print ok/throttled PUTs per second of every run")
    parser.add_argument("--out", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args()
    if args.spread_objects is None:
        args.spread_objects = args.objects * max(args.spread_partitions, 1)
    if args.mixed_objects is None:
        args.mixed_objects = args.objects
    return args


def main() -> int:
    if sys.argv[1:] == ["--boto3-worker"]:
        boto3_worker()
        return 0
    args = parse_args()
    hermetic_environment()
    with tempfile.TemporaryDirectory(prefix="bench-throttling-") as tmp, SeaweedS3() as server:
        work = Path(tmp)
        proxy = FaultProxy(server.endpoint_url).start()
        proxy.write_rate_per_prefix = args.rate
        burst = proxy.burst_seconds
        try:
            print(f"SeaweedFS {server.endpoint_url}, fault proxy {proxy.url}, "
                  f"R = {args.rate:g}/s, burst {burst:g} s", flush=True)
            env = dict(server=server, proxy=proxy, work=work, meter=CpuMeter(server.pid))
            names = make_files(work / "one", args.objects)
            runs = one_prefix_rounds(args, src=work / "one", names=names, **env)
            if args.spread_partitions > 0:
                names = make_files(work / "spread", args.spread_objects)
                runs += spread_rounds(args, src=work / "spread", names=names, **env)
            if args.mixed_objects > 0:
                proxy.write_rate_per_prefix = None  # only the named partition is throttled
                names = make_files(work / "mixed", args.mixed_objects)
                runs += mixed_rounds(args, src=work / "mixed", names=names, **env)
        finally:
            proxy.stop()
        if proxy.internal_errors:
            print(f"!!! fault proxy internal errors: {proxy.internal_errors!r}")
    lines, failures = header(args, burst), problems(runs)
    notes = disturbances(runs) + failures
    print("\n" + "\n".join([*lines, "", text_table(runs), "",
                             *details(runs, show_timeline=args.timeline), *notes]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(["# Throttling benchmark", "", *(f"{x}  " for x in lines),
                                       "", markdown_table(runs), "", *notes]) + "\n")
        print(f"\nwritten to {args.out}")
    return 1 if failures or proxy.internal_errors else 0


if __name__ == "__main__":
    sys.exit(main())
