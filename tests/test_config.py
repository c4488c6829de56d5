"""Configuration: sizes, env overrides, and every bad input named precisely (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from daemon_harness import run_cli
from uploader.config import Config, load_config, parse_size, reference_markdown
from uploader.errors import ConfigError

VALID = {"source": {"directory": "/data/outbox"}, "s3": {"bucket": "my-bucket"}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "uploader.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("8MiB", 8 * 1024**2), ("512KiB", 512 * 1024), ("1GiB", 1024**3), ("1.5MiB", 1572864),
    ("10MB", 10_000_000), (4096, 4096), ("123", 123),
])
def test_sizes_accept_binary_and_decimal_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["8 parsecs", "MiB", "-1MiB", True])
def test_bad_sizes_are_rejected(text):
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(text)


def test_defaults_and_fixed_names(tmp_path):
    config = load_config(write(tmp_path, yaml.safe_dump(VALID)), environ={})
    assert config.transfer.multipart_threshold == 8 * 1024**2
    assert config.transfer.part_size == 8 * 1024**2
    assert config.after_upload == "keep"
    assert config.state_dir == Path("/var/lib/uploader")
    assert config.s3.endpoint_url is None


def test_environment_overrides_any_key(tmp_path):
    path = write(tmp_path, yaml.safe_dump(VALID))
    config = load_config(path, environ={
        "UPLOADER_S3__BUCKET": "other-bucket",
        "UPLOADER_TRANSFER__PART_SIZE": "16MiB",
        "UPLOADER_S3__ENDPOINT_URL": "http://127.0.0.1:9000",
        "UPLOADER_AFTER_UPLOAD": "delete",
        "UNRELATED": "x",
    })
    assert config.s3.bucket == "other-bucket"
    assert config.transfer.part_size == 16 * 1024**2
    assert config.s3.endpoint_url == "http://127.0.0.1:9000"
    assert config.after_upload == "delete"


def test_environment_override_errors_name_the_key(tmp_path):
    path = write(tmp_path, yaml.safe_dump(VALID))
    with pytest.raises(ConfigError, match=r"transfer\.concurrency"):
        load_config(path, environ={"UPLOADER_TRANSFER__CONCURRENCY": "many"})


@pytest.mark.parametrize(("text", "message"), [
    ("source: [unclosed\n", "invalid YAML at line"),
    ("source:\n  directory: /x\n  directroy: /y\ns3:\n  bucket: abc\n",
     "source.directroy: unknown key (expected one of: type, directory,"),
    ("source:\n  directory: /x\ns3:\n  bucket: abc\ntransfer:\n  concurrency: lots\n",
     "transfer.concurrency: Input should be a valid integer"),
    ("source:\n  directory: /x\ns3:\n  bucket: abc\ntransfer:\n  part_size: huge\n",
     "transfer.part_size: expected a size such as 8MiB, 512KiB or 1GiB, got 'huge'\n"),
    ("source:\n  directory: /x\ns3:\n  region: us-east-1\n",
     "s3.bucket: required key is missing"),
    ("source:\n  directory: /x\ns3:\n  bucket: abc\nafter_upload: move\n",
     "move_to is not set"),
    ("source:\n  directory: /x\ns3:\n  bucket: abc\nafter_upload: shred\n",
     "after_upload: Input should be 'keep', 'delete' or 'move'"),
    ("- just\n- a list\n", "expected a mapping of settings"),
    ("source:\n  directory: /x\ns3:\n  bucket: abc\n  metadata: {who: José}\n",
     "s3.metadata: user metadata: key 'who': the value 'José' is not US-ASCII"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path, text, message):
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "precious.txt").write_text("keep me")
    path = write(tmp_path, text.replace("/x", str(outbox)))
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
    assert (outbox / "precious.txt").read_text() == "keep me"  # nothing lost


def test_missing_config_file_is_named(tmp_path):
    result = run_cli("check-config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml: cannot read the configuration file" in result.stderr


def test_missing_source_directory_exits_2(tmp_path):
    config = {**VALID, "source": {"directory": str(tmp_path / "absent")},
              "state_dir": str(tmp_path / "state")}
    result = run_cli("run", "--config", str(write(tmp_path, yaml.safe_dump(config))))
    assert result.returncode == 2
    assert "source.directory:" in result.stderr and "absent" in result.stderr


def test_check_config_explains_every_key(tmp_path):
    result = run_cli("check-config", str(write(tmp_path, yaml.safe_dump(VALID))))
    assert result.returncode == 0, result.stderr
    assert "s3.bucket = 'my-bucket'" in result.stdout
    assert "transfer.part_size = 8388608" in result.stdout


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("uploader ")


def test_readme_reference_matches_the_schema():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert reference_markdown() in readme, (
        "README's configuration reference drifted from the schema; regenerate it with "
        "`python -m uploader.config README.md`")


def test_example_config_documents_every_key():
    example = Path(__file__).parent.parent / "config" / "uploader.yaml"
    text = example.read_text(encoding="utf-8")
    load_config(example, environ={})
    for section, model in Config.model_fields.items():
        assert f"{section}:" in text, section
        annotation = model.annotation
        for key in getattr(annotation, "model_fields", {}):
            assert f"  {key}:" in text, f"{section}.{key} is not in config/uploader.yaml"
