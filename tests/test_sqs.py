"""A fleet of `uploader run` processes draining one SQS queue, exactly once.

SQS is moto's server (the real SQS API over HTTP); S3 is SeaweedFS behind the
fault proxy, which counts every completed upload per key.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
import uuid
from pathlib import Path

import aioboto3
import pytest
import yaml

from daemon_harness import daemon_config, daemon_factory, run_cli, wait_until  # noqa: F401
from daemon_harness import journal_rows, keys_in, object_bytes
from fault_proxy import FaultProxy
from ops_harness import endpoint, scrape, wait_for_metric
from uploader.sources.sqs import MessageError, _Heartbeats, _PathLocks, parse_message

MiB = 1024 * 1024


# ----------------------------------------------------------------- messages
def test_messages_are_parsed_and_bad_ones_named():
    job = parse_message(json.dumps({"path": "/share/a/b.csv", "metadata": {"team": "x"}}),
                        root=Path("/share"))
    assert (job.path, job.relative, job.metadata) == (Path("/share/a/b.csv"), "a/b.csv",
                                                       {"team": "x"})
    # Outside the root: the whole path, never the name alone (/a/x and /b/x would collide).
    assert parse_message('{"path": "/elsewhere/c.txt"}',
                         root=Path("/share")).relative == "elsewhere/c.txt"
    assert parse_message('{"path": "/a/c.txt"}', root=None).relative == "a/c.txt"
    assert parse_message('{"path": "/x/c.txt", "key": "k/n.txt"}', root=None).relative == "k/n.txt"
    # The key also names the file under move_to (after_upload: move): never outside it.
    assert parse_message('{"path": "/x/c.txt", "key": "/k/n.txt"}', root=None).relative == "k/n.txt"
    for body, reason in [("not json", "not JSON"), ("[1]", "expected a JSON object"),
                         ("{}", '"path" is missing'), ('{"path": "rel/x"}', "must be absolute"),
                         ('{"path": "/x", "key": ""}', '"key" must be'),
                         ('{"path": "/x", "metadata": {"a": 1}}', '"metadata" must be'),
                         ('{"path": "/x", "colour": "red"}', "unknown field"),
                         ('{"path": "/x", "key": "../../etc/x"}', '"key" must not contain'),
                         ('{"path": "/x", "key": "a/./b"}', '"key" must not contain'),
                         ('{"path": "/x/\\ud800.csv"}', '"path" is not valid Unicode'),
                         ('{"path": "/x", "key": "\\udce9"}', '"key" is not valid Unicode'),
                         ('{"path": "/x", "metadata": {"who": "Jos\u00e9"}}', "not US-ASCII")]:
        with pytest.raises(MessageError, match=reason):
            parse_message(body, root=None)


# ----------------------------------------------------------------- fixtures
class Queue:
    def __init__(self, sqs, *, max_receive_count: int = 5) -> None:
        self.sqs = sqs
        name = f"q-{uuid.uuid4().hex[:10]}"
        self.dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
        self.url = sqs.create_queue(QueueName=name, Attributes={
            "RedrivePolicy": json.dumps(redrive), "VisibilityTimeout": "30"})["QueueUrl"]

    def send(self, bodies: list[str]) -> None:
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": body}
                       for i, body in enumerate(bodies[start:start + 10])]
            self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)

    def depth(self, url: str | None = None) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url or self.url, AttributeNames=["ApproximateNumberOfMessages",
                                                      "ApproximateNumberOfMessagesNotVisible"])
        return sum(int(v) for v in attributes["Attributes"].values())


@pytest.fixture
def queue(moto_server):
    return Queue(moto_server.client("sqs"), max_receive_count=2)


@pytest.fixture
def sqs_config(daemon_config, moto_server, fault_proxy, queue, tmp_path):
    (tmp_path / "outbox").mkdir(exist_ok=True)  # the shared filesystem's root

    def make(**source):
        return daemon_config(
            s3={"endpoint_url": fault_proxy.url},
            source={"type": "sqs", "queue_url": queue.url,
                    "endpoint_url": moto_server.endpoint_url, "wait_time_seconds": 1,
                    "visibility_timeout_seconds": 5, **source},
            # moto's SQS serialises every call and scans the whole queue in each; with
            # 5 s visibility, 3 processes holding 64 messages each (the default) spend the
            # timeout on heartbeats alone. 16 in hand each keeps the fleet tests about
            # exactly-once, not about moto's speed.
            transfer={"concurrency": 16},
            retry={"retry_later_seconds": 2})
    return make


def share_files(root: Path, count: int) -> dict[Path, bytes]:
    files = {}
    for i in range(count):
        path = root / f"batch-{i % 7}" / f"file-{i:04d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(64 + i % 500)
        path.write_bytes(data)
        files[path] = data
    return files


# -------------------------------------------------------------------- fleet
@pytest.mark.timeout(240)
def test_three_uploaders_drain_a_queue_exactly_once_despite_a_sigkill(
        sqs_config, daemon_factory, queue, fault_proxy, s3, bucket, tmp_path):
    root = tmp_path / "outbox"  # the "shared filesystem": source.directory
    # 400 files: moto's SQS scans the whole queue in every call (a send or a receive takes
    # ~0.2 ms per message queued), so its cost grows with the square of the queue's depth.
    # With 1,000 a receive took ~0.8 s and the drain alone ~30 s, more under load.
    files = share_files(root, 400)
    queue.send([json.dumps({"path": str(path)}) for path in files])
    # 10 s, not 5: on moto (every SQS call serialised, scanning the whole queue) a heartbeat
    # can come late under load, a message then reappears to a second process and, at the
    # third receive, goes to the DLQ although its file was uploaded exactly once.
    config = sqs_config(visibility_timeout_seconds=10)
    fleet = [daemon_factory(config, env={"UPLOADER_STATE_DIR": str(tmp_path / f"state-{n}")})
             for n in range(3)]  # each instance its own state_dir: one would refuse the others

    fault_proxy.wait_for(120, timeout=120, where=lambda r: r.is_put_object and r.ok)
    fleet[0].process.kill()  # its messages in hand reappear after the visibility timeout
    fleet[0].process.wait(timeout=30)

    expected = {f"incoming/{path.relative_to(root).as_posix()}": data
                for path, data in files.items()}
    try:
        wait_until(lambda: keys_in(s3, bucket) >= set(expected), timeout=150,
                   what="every file from the queue")
    except AssertionError as exc:
        raise AssertionError(_fleet_state(exc, expected, keys_in(s3, bucket), queue,
                                          fleet)) from None
    wait_until(lambda: queue.depth() == 0, timeout=60, what="the queue to be empty")
    for daemon in fleet[1:]:
        assert daemon.terminate() == 0

    assert keys_in(s3, bucket) == set(expected)
    twice = {k: n for k in expected if (n := fault_proxy.completed_uploads(k)) != 1}
    assert not twice, f"uploaded other than exactly once: {twice}"
    for key, data in expected.items():
        assert object_bytes(s3, bucket, key) == data, key
    assert queue.depth(queue.dlq_url) == 0
    shared = [d for d in fleet[1:] if "uploaded" in d.log()]
    assert len(shared) == 2, "both surviving uploaders took part"


def _fleet_state(exc: AssertionError, expected: dict[str, bytes], present: set[str],
                 queue: Queue, fleet: list) -> str:
    """What a stalled fleet was doing: missing keys, where the messages are, and every
    warning or error each instance logged."""
    missing = sorted(set(expected) - present)
    lines = [str(exc), f"{len(missing)} key(s) missing, e.g. {missing[:5]}",
             f"queue depth {queue.depth()}, dead-letter queue depth {queue.depth(queue.dlq_url)}"]
    for n, daemon in enumerate(fleet):
        noisy = [line for line in daemon.log().splitlines()
                 if " WARNING " in line or " ERROR " in line]
        lines.append(f"instance {n}: {len(noisy)} warning/error line(s)")
        lines.extend(noisy[-20:])
    return "\n".join(lines)


def test_poison_messages_end_in_the_dead_letter_queue_without_stalling(
        sqs_config, daemon_factory, queue, s3, bucket, tmp_path):
    good = tmp_path / "outbox" / "good.txt"
    good.write_bytes(b"fine")
    queue.send(["this is not json", json.dumps({"path": str(tmp_path / "outbox" / "gone.txt")}),
                json.dumps({"path": str(good)})])
    daemon = daemon_factory(sqs_config())
    wait_until(lambda: queue.depth(queue.dlq_url) == 2, timeout=60,
               what="both poison messages in the dead-letter queue")
    wait_until(lambda: queue.depth() == 0, what="the good message handled")
    assert daemon.terminate() == 0
    assert object_bytes(s3, bucket, "incoming/good.txt") == b"fine"
    log = daemon.log()
    assert "rejected message" in log and "not JSON" in log
    assert "gone.txt" in log and "dead-letter queue" in log


def test_a_duplicate_message_does_not_upload_twice(sqs_config, daemon_factory, queue,
                                                   fault_proxy, s3, bucket, tmp_path):
    path = tmp_path / "outbox" / "once.bin"
    path.write_bytes(os.urandom(1000))
    body = json.dumps({"path": str(path), "metadata": {"origin": "test"}})
    queue.send([body, body])
    daemon = daemon_factory(sqs_config())
    wait_until(lambda: queue.depth() == 0, what="both messages handled")
    assert daemon.terminate() == 0, daemon.log()
    # Later, a third copy reaches a fresh instance with its own empty journal.
    queue.send([body])
    other = daemon_factory(sqs_config(), env={"UPLOADER_STATE_DIR": str(tmp_path / "state-2")})
    wait_until(lambda: queue.depth() == 0, what="the late duplicate handled")
    assert other.terminate() == 0, other.log()
    logs = f"first instance:\n{daemon.log()}\nsecond instance:\n{other.log()}"
    assert fault_proxy.completed_uploads("incoming/once.bin") == 1, logs
    head = s3.head_object(Bucket=bucket, Key="incoming/once.bin")
    assert head["Metadata"]["origin"] == "test"
    assert "already in S3" in other.log(), logs


def test_a_long_upload_keeps_its_message_with_heartbeats(
        sqs_config, daemon_factory, queue, fault_proxy, moto_server, s3, bucket, tmp_path):
    """Visibility 5 s; the upload takes longer. Without heartbeats a second uploader
    would receive the message and the file would be handled twice."""
    sqs_proxy = FaultProxy(moto_server.endpoint_url).start()
    try:
        path = tmp_path / "outbox" / "slow.bin"
        data = os.urandom(3 * 5 * MiB)
        path.write_bytes(data)
        fault_proxy.latency = 2.5  # each of 3 parts (one at a time) + create + complete
        config = sqs_config(endpoint_url=sqs_proxy.url)
        first = daemon_factory(config, env={"UPLOADER_TRANSFER__MAX_PARTS_IN_FLIGHT": "1"})
        queue.send([json.dumps({"path": str(path)})])
        fault_proxy.wait_for(1, timeout=30, method="POST", query_has="uploads")
        second = daemon_factory(config, env={"UPLOADER_STATE_DIR": str(tmp_path / "state-2")})
        wait_until(lambda: queue.depth() == 0, timeout=90, what="the message handled")
        for daemon in (first, second):
            assert daemon.terminate() == 0
        heartbeats = sqs_proxy.count(where=lambda r: sqs_action(r) == "ChangeMessageVisibilityBatch")
    finally:
        sqs_proxy.stop()
    assert heartbeats >= 2
    assert fault_proxy.completed_uploads("incoming/slow.bin") == 1
    assert fault_proxy.count(method="POST", query_has="uploads") == 1, "one multipart upload"
    assert "slow.bin" not in second.log()
    assert object_bytes(s3, bucket, "incoming/slow.bin") == data


def sqs_action(record) -> str:
    """The SQS action of a request seen by the proxy (JSON protocol: X-Amz-Target)."""
    return record.headers.get("x-amz-target", "").rpartition(".")[2]


@pytest.mark.timeout(90)
def test_messages_in_hand_share_their_heartbeats(
        sqs_config, daemon_factory, queue, fault_proxy, moto_server, s3, bucket, tmp_path):
    """12 messages in hand, every S3 request 3 s late (the bucket check, a HEAD and a PUT:
    each upload ~10 s), visibility 5 s: each third of it, their extensions go in 2
    batches, not 12 calls."""
    sqs_proxy = FaultProxy(moto_server.endpoint_url).start()
    try:
        files = share_files(tmp_path / "outbox", 12)
        fault_proxy.latency = 3
        queue.send([json.dumps({"path": str(path)}) for path in files])
        daemon = daemon_factory(sqs_config(endpoint_url=sqs_proxy.url))
        wait_until(lambda: queue.depth() == 0, timeout=60, what="every message handled")
        assert daemon.terminate() == 0
        records = sqs_proxy.records()
    finally:
        sqs_proxy.stop()
    actions = [sqs_action(r) for r in records]
    assert "ChangeMessageVisibility" not in actions, "one call per message"
    beats = sorted(r.t_start for r in records if sqs_action(r) == "ChangeMessageVisibilityBatch")
    rounds = [[t for t in beats if start <= t < start + 0.5]
              for n, start in enumerate(beats) if n == 0 or start - beats[n - 1] >= 0.5]
    # Measured: a round every ~1.7 s for the ~12 s the uploads take, 2 batches each.
    assert len(rounds) >= 3, beats
    assert all(len(batches) <= 2 for batches in rounds), beats
    for path in files:
        key = f"incoming/{path.relative_to(tmp_path / 'outbox').as_posix()}"
        assert fault_proxy.completed_uploads(key) == 1, key
    assert "could not extend" not in daemon.log()


# ------------------------------------------------------------------ enqueue
def test_enqueue_publishes_settled_files_once(daemon_config, daemon_factory, moto_server,
                                              queue, tmp_path):
    config = daemon_config(source={"queue_url": queue.url,
                                   "endpoint_url": moto_server.endpoint_url})
    outbox = tmp_path / "outbox"
    (outbox / "sub").mkdir()
    (outbox / "a.txt").write_bytes(b"a")
    (outbox / "sub" / "b.txt").write_bytes(b"b")
    (outbox / ".hidden").write_bytes(b"never")
    with open(os.fsencode(outbox) + b"/latin-1-\xe9.txt", "wb") as handle:
        handle.write(b"no S3 key can name it")  # logged, and the others still go

    enqueuer = daemon_factory(config, subcommand="enqueue", env=moto_server.env())
    wait_until(lambda: queue.depth() == 2, what="two messages")
    enqueuer.process.send_signal(signal.SIGHUP)  # log rotation: must not kill it
    time.sleep(0.5)
    assert enqueuer.process.poll() is None, enqueuer.log()
    assert "latin-1-\\xe9.txt: the file name is not valid UTF-8" in enqueuer.log()
    assert enqueuer.terminate() == 0
    rows = journal_rows(tmp_path / "state")
    assert {status for status, _, _ in rows.values()} == {"enqueued"}

    (outbox / "c.txt").write_bytes(b"c")
    # Other bytes under a.txt with its size and mtime kept (cp -p, rsync -t): a new version.
    mtime_ns = (outbox / "a.txt").stat().st_mtime_ns
    (outbox / "a.new").write_bytes(b"A")
    os.utime(outbox / "a.new", ns=(mtime_ns, mtime_ns))
    (outbox / "a.new").rename(outbox / "a.txt")
    enqueuer = daemon_factory(config, subcommand="enqueue", env=moto_server.env())
    enqueuer.wait_for_log("enqueued")
    wait_until(lambda: queue.depth() == 4, what="the new file and a.txt's new version")
    assert enqueuer.terminate() == 0
    bodies = []
    while messages := queue.sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10,
                                                WaitTimeSeconds=0).get("Messages"):
        bodies += [json.loads(m["Body"]) for m in messages]
    assert sorted(b["key"] for b in bodies) == ["a.txt", "a.txt", "c.txt", "sub/b.txt"]
    assert {b["path"] for b in bodies} == {str(outbox / k) for k in ("a.txt", "c.txt",
                                                                     "sub/b.txt")}


def test_a_queue_that_does_not_exist_is_a_configuration_error(sqs_config, moto_server):
    config = sqs_config(queue_url=f"{moto_server.endpoint_url}/123456789012/no-such-queue")
    result = run_cli("run", "--config", str(config), env=moto_server.env())
    assert result.returncode == 2
    assert "source.queue_url" in result.stderr and "no-such-queue" in result.stderr


@pytest.mark.timeout(150)
def test_a_throttled_prefix_does_not_take_every_message_slot(
        daemon_config, daemon_factory, moto_server, queue, fault_proxy, s3, bucket, tmp_path):
    """`slow/` allows 8 PUT/s (fault proxy), `fast/` is free; their messages are queued
    interleaved, 16 in hand at most. Held in their slots, the slow ones would in time fill
    every slot and the fast ones would trickle out at slow/'s pace; waiting aside, they
    give their slots to the fast ones. The proxy's log says when each file arrived."""
    root = tmp_path / "outbox"
    slow = [root / "slow" / f"{i:03d}.dat" for i in range(64)]
    fast = [root / "fast" / f"{i:03d}.dat" for i in range(64)]
    for path in slow + fast:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(256))
    order = [*itertools.chain.from_iterable(zip(slow, fast)), *fast[len(slow):]]
    fault_proxy.burst_seconds = 0.25  # a burst of 2 PUTs, then 8/s
    fault_proxy.write_rates = {f"{bucket}/slow": 8.0}
    queue.send([json.dumps({"path": str(path)}) for path in order])
    config = daemon_config(
        s3={"endpoint_url": fault_proxy.url, "prefix": ""},
        source={"type": "sqs", "queue_url": queue.url, "endpoint_url": moto_server.endpoint_url,
                "wait_time_seconds": 1, "visibility_timeout_seconds": 10},
        transfer={"concurrency": 16}, retry={"max_attempts": 30, "retry_later_seconds": 2})
    daemon = daemon_factory(config)
    wait_for_metric(endpoint(daemon), lambda p: p.value("uploader_queue_set_aside") > 0,
                    what="messages of slow/ waiting aside, on /metrics")
    expected = {path.relative_to(root).as_posix() for path in order}
    wait_until(lambda: keys_in(s3, bucket) >= expected, timeout=120, what="every file")
    assert daemon.terminate() == 0

    arrived = {r.key: r.t_end for r in fault_proxy.records(method="PUT", ok=True)}
    assert set(arrived) == expected
    last_fast = max(arrived[path.relative_to(root).as_posix()] for path in fast)
    slow_before = sum(arrived[path.relative_to(root).as_posix()] < last_fast for path in slow)
    # Measured: 9-10 slow files in before the last fast one (~1 s in, the limiter learning
    # slow/'s rate); with the slow messages keeping their slots, 49 (~6 s in).
    assert slow_before < len(slow) // 2, slow_before


# ---------------------------------------------------- metrics and reload
@pytest.mark.timeout(120)
def test_metrics_show_the_messages_being_uploaded_and_a_reload_resizes_the_slots(
        sqs_config, daemon_factory, queue, fault_proxy, s3, bucket, tmp_path):
    """With SQS there is no worker pool: the gauges and `transfer.concurrency` reloads
    must reach the SQS source. Each request takes 0.3 s more (the proxy), so uploads
    stay in flight long enough to be seen."""
    files = share_files(tmp_path / "outbox", 120)
    fault_proxy.latency = 0.3
    queue.send([json.dumps({"path": str(path)}) for path in files])
    config = sqs_config()
    settings = yaml.safe_load(config.read_text())
    settings["transfer"]["concurrency"] = 3
    config.write_text(yaml.safe_dump(settings))
    daemon = daemon_factory(config)
    base = endpoint(daemon)

    page = wait_for_metric(base, lambda p: p.value("uploader_uploads_in_flight") == 3,
                           what="3 uploads in flight")
    assert page.value("uploader_workers") == 3
    assert page.value("uploader_deferred_files") == 0
    seen = [scrape(base).value("uploader_uploads_in_flight") for _ in range(20)]
    assert max(seen) <= 3, seen

    settings["transfer"]["concurrency"] = 12
    config.write_text(yaml.safe_dump(settings))
    daemon.process.send_signal(signal.SIGHUP)
    page = wait_for_metric(base, lambda p: p.value("uploader_uploads_in_flight") > 3,
                           what="more uploads in flight after the reload")
    assert page.value("uploader_workers") == 12
    assert "transfer.concurrency 3 -> 12" in daemon.log()
    expected = {f"incoming/{path.relative_to(tmp_path / 'outbox').as_posix()}" for path in files}
    wait_until(lambda: keys_in(s3, bucket) >= expected, timeout=90, what="every file")
    assert daemon.terminate() == 0


@pytest.mark.asyncio
async def test_messages_waiting_for_a_duplicate_are_counted():
    locks = _PathLocks()
    release = asyncio.Event()
    inside: list[str] = []

    async def holder(name: str) -> None:
        async with locks.hold(Path("/share") / name):
            inside.append(name)
            await release.wait()

    tasks = [asyncio.create_task(holder(name)) for name in ("a", "b", "a")]
    await asyncio.sleep(0.01)
    assert inside == ["a", "b"] and locks.waiting == 1  # the duplicate of a waits
    tasks[2].cancel()
    await asyncio.gather(tasks[2], return_exceptions=True)
    assert locks.waiting == 0  # a cancelled waiter is not counted any more
    release.set()
    await asyncio.gather(*tasks[:2])


async def test_heartbeats_keep_messages_hidden_and_name_the_ones_sqs_refuses(
        moto_server, queue, caplog):
    """Real receipts from moto with a 3 s visibility, and one receipt SQS does not know:
    4.5 s later the 12 real ones are still hidden, the bad one is logged, none is lost."""
    queue.send([json.dumps({"path": f"/x/{n}"}) for n in range(12)])
    session = aioboto3.Session(**moto_server.credentials())
    async with session.client("sqs", endpoint_url=moto_server.endpoint_url) as client:
        receipts = []
        while len(receipts) < 12:
            response = await client.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10,
                                                    VisibilityTimeout=3)
            receipts += [m["ReceiptHandle"] for m in response.get("Messages", [])]
        heartbeats = _Heartbeats(client, queue.url, visibility=3)
        for receipt in [*receipts, "not-a-receipt"]:
            heartbeats.hold(receipt)
        await asyncio.sleep(4.5)
        assert visible(queue) == 0, "a message came back while held"
        assert heartbeats.extended >= 24  # two rounds of 12
        await heartbeats.drop("not-a-receipt")
        for receipt in receipts:
            await heartbeats.drop(receipt)
        await heartbeats.close()
    assert "could not extend a message's visibility" in caplog.text
    wait_until(lambda: visible(queue) == 12, timeout=10, what="the messages back once dropped")


async def test_a_message_let_go_is_not_hidden_again_by_an_extension_on_its_way(
        moto_server, queue):
    """A message in hand (visibility 3 s) whose extension reaches SQS 2 s late (held by a
    proxy) is let go meanwhile and deferred for 60 s, as `SqsSource._handle` does: `drop`
    waits for the extension, so the deferral lands last and the message stays hidden. Were
    the deferral sent first, the extension would bring it back 3 s after it landed."""
    queue.send([json.dumps({"path": "/x/a"})])
    sqs_proxy = FaultProxy(moto_server.endpoint_url).start()
    try:
        sqs_proxy.delay(2, where=lambda r: sqs_action(r) == "ChangeMessageVisibilityBatch")
        session = aioboto3.Session(**moto_server.credentials())
        async with session.client("sqs", endpoint_url=sqs_proxy.url) as client:
            response = await client.receive_message(QueueUrl=queue.url, VisibilityTimeout=3)
            receipt = response["Messages"][0]["ReceiptHandle"]
            heartbeats = _Heartbeats(client, queue.url, visibility=3)
            heartbeats.hold(receipt)
            await asyncio.sleep(1.5)  # the extension went at 1 s; the proxy holds it till 3 s
            await heartbeats.drop(receipt)
            await client.change_message_visibility(QueueUrl=queue.url, ReceiptHandle=receipt,
                                                   VisibilityTimeout=60)
            while not (extensions := [r for r in sqs_proxy.records()
                                      if sqs_action(r) == "ChangeMessageVisibilityBatch"]):
                await asyncio.sleep(0.05)  # the extension's answer (the test's timeout bounds it)
            await heartbeats.close()
        deferral = next(r for r in sqs_proxy.records()
                        if sqs_action(r) == "ChangeMessageVisibility")
    finally:
        sqs_proxy.stop()
    assert len(extensions) == 1 and extensions[0].status == 200
    assert deferral.t_start >= extensions[0].t_end, "the deferral went before the extension"
    time.sleep(max(0.0, extensions[0].t_end + 3.5 - time.monotonic()))  # past a 3 s extension
    assert visible(queue) == 0, "the late extension cut the 60 s deferral short"


@pytest.mark.timeout(90)
def test_messages_unfinished_at_shutdown_are_handed_back_at_once(
        sqs_config, daemon_factory, queue, fault_proxy, tmp_path):
    """Every S3 request hangs (30 s latency), the grace period is 1 s: the three messages in
    hand are handed back to the queue at the stop, not after their 60 s visibility."""
    files = share_files(tmp_path / "outbox", 3)
    fault_proxy.latency = 30
    queue.send([json.dumps({"path": str(path)}) for path in files])
    config = sqs_config(visibility_timeout_seconds=60)
    settings = yaml.safe_load(config.read_text())
    settings["shutdown_grace_seconds"] = 1
    config.write_text(yaml.safe_dump(settings))
    daemon = daemon_factory(config)
    wait_for_metric(endpoint(daemon), lambda p: p.value("uploader_uploads_in_flight") == 3,
                    what="3 uploads hanging")
    assert visible(queue) == 0
    assert daemon.terminate() == 0
    assert visible(queue) == 3
    assert "handed 3 unfinished message(s) back to the queue" in daemon.log()


def visible(queue: Queue) -> int:
    attributes = queue.sqs.get_queue_attributes(QueueUrl=queue.url,
                                                AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])
