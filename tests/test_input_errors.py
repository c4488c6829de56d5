"""Bad input gets an error that names the problem (exit 2), never a traceback; nothing is lost."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import InvalidRegionError, ParamValidationError
from botocore.handlers import validate_bucket_name
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url, validate_region_name

from daemon_harness import ROOT_WITHOUT_READ_OVERRIDE, UPLOADER, keys_in, run_cli
from uploader.config import check_bucket_name, check_endpoint_url, check_region, load_config
from uploader.errors import ConfigError


def make_config(tmp_path: Path, name: str = "uploader.yaml", **overrides: Any) -> Path:
    """A valid daemon configuration in tmp_path, with `overrides` merged per section."""
    (tmp_path / "outbox").mkdir(exist_ok=True)
    (tmp_path / "outbox" / "precious.txt").write_text("keep me")
    raw: dict[str, Any] = {"source": {"directory": str(tmp_path / "outbox")},
                           "s3": {"bucket": "my-bucket", "endpoint_url": "http://127.0.0.1:9"},
                           "state_dir": str(tmp_path / "state"),
                           "metrics": {"enabled": False}, "janitor": {"enabled": False}}
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def assert_named(result: subprocess.CompletedProcess[str], message: str, *, code: int = 2) -> None:
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------ the configuration file
def test_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_bytes(b"\xff\xfesource: {}\n")
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        assert_named(run_cli(*command), f"{path}: the configuration file is not UTF-8")
    # `health` exits 0 or 1 only (Docker reserves 2)
    assert_named(run_cli("health", "--config", str(path)), "is not UTF-8", code=1)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"s3": {"endpoint_url": "127.0.0.1:9"}},
     "s3.endpoint_url: expected http:// or https://, a host and an optional port"),
    ({"s3": {"endpoint_url": "ftp://x"}}, "s3.endpoint_url: expected http:// or https://"),
    ({"s3": {"endpoint_url": "http://127.0.0.1:99999"}}, "s3.endpoint_url: expected http://"),
    ({"s3": {"endpoint_url": "http://bad_host:9000"}}, "'bad_host' is not a valid host name"),
    ({"source": {"endpoint_url": "localhost:9324"}}, "source.endpoint_url: expected http://"),
    ({"s3": {"region": "bad region!"}}, "s3.region: 'bad region!' is not a region name"),
    ({"source": {"region": "-x"}}, "source.region: '-x' is not a region name"),
    ({"s3": {"bucket": "bu cket"}},
     "s3.bucket: 'bu cket' is not a bucket name: only letters, digits, '.', '-' and '_' are "
     "allowed (found ' ')"),
    ({"s3": {"bucket": "bucket:x"}}, "s3.bucket: 'bucket:x' is not a bucket name"),
    ({"s3": {"bucket": "b" * 256}}, "3 to 255 characters"),
    ({"metrics": {"listen": "127.0.0.1:99999"}},
     "metrics.listen: port 99999 is out of range (0-65535)"),
    ({"metrics": {"listen": "[:::::]:80"}}, "metrics.listen: ':::::' is not a valid IP address"),
    ({"metrics": {"listen": "999.1.1.1:80"}}, "'999.1.1.1' is not a valid IP address"),
    ({"metrics": {"listen": "::1:9100"}}, "an IPv6 address goes in brackets"),
    ({"transfer": {"multipart_threshold": "6GiB"}},
     "transfer.multipart_threshold: at most 5GiB: S3 refuses a single PUT larger"),
    ({"transfer": {"concurrency": True}},
     "transfer.concurrency: expected a number, got a boolean (true)"),
    ({"retry": {"backoff_base_seconds": True}}, "retry.backoff_base_seconds: expected a number"),
    ({"transfer": {"part_size": 5242880.7}},
     "transfer.part_size: expected a whole number of bytes, got 5242880.7"),
])
def test_bad_values_exit_2_naming_the_key(tmp_path, overrides, message):
    path = make_config(tmp_path, **overrides)
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        assert_named(run_cli(*command), message)
    assert (tmp_path / "outbox" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("overrides", [
    {"s3": {"bucket": "My_Legacy.Bucket"}},  # legacy us-east-1 names: capitals, underscores
    {"s3": {"bucket": "b" * 255}},
    {"s3": {"endpoint_url": "http://[::1]:9000"}},
    {"s3": {"endpoint_url": "https://s3.eu-west-1.amazonaws.com"}},
    {"s3": {"endpoint_url": "http://minio.internal:9000/"}},
    {"s3": {"region": "eu-central-2"}},
    {"metrics": {"listen": "[::1]:0"}},
    {"metrics": {"listen": ":9100"}},
    {"metrics": {"listen": "localhost:65535"}},
    {"transfer": {"multipart_threshold": "5GiB", "part_size": "5.5MiB"}},
])
def test_good_values_still_load(tmp_path, overrides):
    load_config(make_config(tmp_path, **overrides), environ={})


@pytest.mark.parametrize("name", ["my-bucket", "My_Legacy.Bucket", "bu cket", "bucket:x", "a/b",
                                  "bucket.", "ab-", "x" * 255, "naïve", "a\nb"])
def test_bucket_names_follow_botocore(name):
    try:
        validate_bucket_name({"Bucket": name})
        botocore_accepts = True
    except ParamValidationError:
        botocore_accepts = False
    try:
        check_bucket_name(name)
        we_accept = True
    except ValueError:
        we_accept = False
    assert we_accept == botocore_accepts


@pytest.mark.parametrize("name", ["us-east-1", "eu-central-2", "bad region!", "-x", "x-",
                                  "12345", "a" * 64, "us_east_1"])
def test_region_names_follow_botocore(name):
    try:
        validate_region_name(name)
        botocore_accepts = True
    except InvalidRegionError:
        botocore_accepts = False
    try:
        check_region(name)
        we_accept = True
    except ValueError:
        we_accept = False
    assert we_accept == botocore_accepts


@pytest.mark.parametrize("url", ["http://127.0.0.1:8333", "https://s3.amazonaws.com",
                                 "http://[::1]:9000", "http://bad_host:1", "http://a..b",
                                 "http://-a.com", "http://a.com\n"])
def test_endpoints_we_accept_botocore_accepts(url):
    try:
        check_endpoint_url(url)
    except ValueError:
        return
    assert is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url)


def test_health_with_a_bad_listen_address_says_so(tmp_path):
    path = make_config(tmp_path, metrics={"enabled": True, "listen": "[:::::]:80"})
    assert_named(run_cli("health", "--config", str(path)), "metrics.listen:", code=1)


# ------------------------------------------------------------------ the profile
def test_unknown_profile_is_a_configuration_error(tmp_path):
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[profile other]\nregion = us-east-1\n")
    env = {"AWS_CONFIG_FILE": str(aws_config)}
    path = make_config(tmp_path, s3={"profile": "nosuch"})
    message = f"s3.profile: no AWS profile named 'nosuch' in {aws_config}"
    assert_named(run_cli("run", "--config", str(path), env=env), message)
    assert_named(run_cli("upload", "--config", str(path), str(tmp_path / "outbox"),
                         "s3://my-bucket/", env=env), message)
    queue = make_config(tmp_path, "sqs.yaml", s3={"profile": "nosuch"},
                        source={"type": "sqs", "queue_url": "http://127.0.0.1:9/q"})
    assert_named(run_cli("enqueue", "--config", str(queue), env=env), message)
    unprofiled = make_config(tmp_path, "plain.yaml")
    assert_named(run_cli("run", "--config", str(unprofiled), env={**env, "AWS_PROFILE": "gone"}),
                 "AWS_PROFILE (environment): no AWS profile named 'gone'")
    assert (tmp_path / "outbox" / "precious.txt").read_text() == "keep me"


# ---------------------------------------------------------------- the folders
@pytest.mark.parametrize(("overrides", "message"), [
    ({"state_dir": "{outbox}"},
     "state_dir: {outbox} is the same folder as source.directory; the journal's own files"),
    ({"state_dir": "{outbox}/"}, "state_dir: {outbox} is the same folder as source.directory"),
    ({"after_upload": "move", "move_to": "{outbox}"},
     "move_to: {outbox} is the same folder as source.directory; uploaded files would be moved "
     "onto themselves"),
    ({"after_upload": "move", "move_to": "{state}"},
     "move_to: {state} is the same folder as state_dir; a moved file could replace the journal"),
    # outbox/state/journal.sqlite3 would be moved onto the journal
    ({"after_upload": "move", "move_to": "{tmp}", "state_dir": "{tmp}/state"},
     "state_dir: {tmp}/state is inside move_to ({tmp}); a moved file could replace the "
     "journal"),
])
def test_daemon_folders_must_differ(tmp_path, overrides, message):
    names = {"outbox": str(tmp_path / "outbox"), "state": str(tmp_path / "state"),
             "tmp": str(tmp_path)}
    path = make_config(tmp_path, **{k: v.format(**names) for k, v in overrides.items()})
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        assert_named(run_cli(*command), message.format(**names))
    assert (tmp_path / "outbox" / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "outbox" / "journal.sqlite3").exists()


def test_folders_inside_the_watched_one_are_still_allowed(tmp_path):
    inside = tmp_path / "outbox" / ".state"
    load_config(make_config(tmp_path, state_dir=str(inside), after_upload="move",
                            move_to=str(tmp_path / "outbox" / "done")), environ={})


# ---------------------------------------------------------------- the one-shot
def test_upload_refuses_what_is_not_a_file_or_a_folder(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, message in ((str(fifo), f"{fifo}: not a regular file or a folder (a named pipe)"),
                          ("/dev/null", "/dev/null: not a regular file or a folder (a "
                           "character device)")):
        assert_named(run_cli("upload", path, "s3://my-bucket/"), message)
    (tmp_path / "cwd-file.txt").write_text("not to be uploaded")
    result = subprocess.run([UPLOADER, "upload", "", "s3://my-bucket/"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert_named(result, "an empty PATH argument")


@pytest.mark.parametrize(("args", "message"), [
    (["--endpoint-url", "127.0.0.1:9"], "--endpoint-url: expected http:// or https://"),
    (["--endpoint-url", "ftp://x"], "--endpoint-url: expected http:// or https://"),
    (["--region", "bad region!"], "--region: 'bad region!' is not a region name"),
])
def test_upload_options_are_checked_and_named(tmp_path, args, message):
    (tmp_path / "a.txt").write_text("a")
    assert_named(run_cli("upload", *args, str(tmp_path / "a.txt"), "s3://my-bucket/"), message)


@pytest.mark.parametrize(("destination", "message"), [
    ("s3://bu cket/", "'s3://bu cket/': 'bu cket' is not a bucket name"),
    ("s3://bucket:x/", "'s3://bucket:x/': 'bucket:x' is not a bucket name"),
    ("s3:///prefix", "'' is not a bucket name"),
])
def test_upload_destination_bucket_is_checked(tmp_path, destination, message):
    (tmp_path / "a.txt").write_text("a")
    assert_named(run_cli("upload", str(tmp_path / "a.txt"), destination), message)


@pytest.mark.timeout(60)
def test_a_folder_that_cannot_be_listed_fails_the_upload(tmp_path, s3_server, s3, bucket):
    folder = tmp_path / "photos"
    (folder / "locked").mkdir(parents=True)
    (folder / "ok.txt").write_text("ok")
    (folder / "locked" / "secret.txt").write_text("never listed")
    command = [UPLOADER, "upload", "--endpoint-url", s3_server.endpoint_url, str(folder),
               f"s3://{bucket}/"]
    if os.geteuid() == 0:  # root lists anything unless it drops the capability
        command = [*ROOT_WITHOUT_READ_OVERRIDE, *command]
    (folder / "locked").chmod(0)
    try:
        result = subprocess.run(command, env={**os.environ, **s3_server.env()},
                                capture_output=True, text=True, timeout=60, check=False)
    finally:
        (folder / "locked").chmod(0o755)
    assert result.returncode == 1, result.stderr
    assert f"cannot list {folder / 'locked'}" in result.stderr
    assert "1 folder(s) could not be listed" in result.stdout
    assert keys_in(s3, bucket) == {"ok.txt"}  # the rest still went up


# ------------------------------------------------------------------ the little things
def test_a_closed_pipe_ends_quietly(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head -1` does once it has its line
    try:
        result = subprocess.run([UPLOADER, "check-config", str(make_config(tmp_path))],
                                stdout=write_end, stderr=subprocess.PIPE, text=True,
                                timeout=60, check=False)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr


@pytest.mark.parametrize(("command", "help_text"), [
    ("status", "the daemon's YAML configuration (for its state_dir)"),
    ("retry-failed", "the daemon's YAML configuration (for its state_dir)"),
    ("health", "the daemon's YAML configuration (for metrics.listen)"),
    ("check-config", "FILE"),
])
def test_every_config_argument_is_explained(command, help_text):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert help_text in result.stdout


def test_upload_usage_names_its_arguments_once():
    result = run_cli("upload", "--help")
    usage = result.stdout.split("\n\n")[0]
    assert usage.count("s3://BUCKET[/PREFIX]") == 1 and "PATH..." in usage, usage


# ------------------------------------------------------------ the journal in state_dir
def test_a_state_dir_that_cannot_hold_the_journal_is_named(tmp_path):
    (tmp_path / "state").write_text("a file where the folder should be")
    config = make_config(tmp_path)
    assert_named(run_cli("run", "--config", str(config)), "state_dir: cannot open the journal")
    (tmp_path / "state").unlink()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "journal.sqlite3").write_bytes(b"not a database" * 100)
    for command in ("run", "status", "retry-failed"):
        assert_named(run_cli(command, "--config", str(config)),
                     "state_dir: cannot open the journal")
    assert (tmp_path / "outbox" / "precious.txt").read_text() == "keep me"


def test_retry_failed_says_where_an_sqs_daemons_failures_are(tmp_path):
    config = make_config(tmp_path, source={"type": "sqs",
                                           "queue_url": "http://127.0.0.1:9/queue/q"})
    assert_named(run_cli("retry-failed", "--config", str(config)),
                 "with source.type sqs the queue holds the work")


def test_a_malformed_endpoint_in_the_environment_is_named(tmp_path):
    """botocore reads AWS_ENDPOINT_URL when the configuration names no endpoint."""
    (tmp_path / "a.txt").write_text("x")
    result = run_cli("upload", str(tmp_path / "a.txt"), "s3://my-bucket/",
                     env={**os.environ, "AWS_ENDPOINT_URL": "127.0.0.1:9"})
    assert_named(result, "AWS_ENDPOINT_URL (environment): expected http:// or https://")


def test_an_endpoint_variable_botocore_does_not_read_is_not_checked(tmp_path, monkeypatch):
    from uploader.s3client import check_aws_settings

    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:9")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    config = load_config(make_config(tmp_path))  # s3.endpoint_url is set: botocore uses it
    check_aws_settings(config)
    config.s3.endpoint_url = None
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL"):
        check_aws_settings(config)
