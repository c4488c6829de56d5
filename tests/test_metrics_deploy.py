"""deploy/: the compose try-out is consistent with the image, the config schema and itself.

No Docker engine runs here; these checks catch what would break `docker compose up`
on our side: an UPLOADER_* variable the schema rejects, a mounted file that is
missing, a scrape target that is not the metrics port, a bucket nobody creates.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from uploader.config import apply_env_overrides, read_config_file, validate_config

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def test_the_uploader_service_runs_the_image_with_a_valid_configuration():
    service = compose()["services"]["uploader"]
    assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    env = {name: str(value) for name, value in service["environment"].items()}
    raw = read_config_file(ROOT / "config" / "uploader.yaml")  # the image's config
    apply_env_overrides(raw, env)
    config = validate_config(raw, origin="compose.yaml")
    assert config.s3.bucket == "uploads" and config.s3.endpoint_url == "http://s3:8333"
    assert config.metrics.listen.endswith(":9100") and "9100:9100" in service["ports"]
    assert "uploads" in " ".join(compose()["services"]["make-bucket"]["command"])


def test_the_s3_server_knows_the_uploader_credentials():
    services = compose()["services"]
    credentials = services["uploader"]["environment"]
    identities = json.loads((DEPLOY / "seaweedfs-s3.json").read_text())["identities"]
    pairs = {(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]}
    assert (credentials["AWS_ACCESS_KEY_ID"], credentials["AWS_SECRET_ACCESS_KEY"]) in pairs


def test_every_mounted_file_exists_and_prometheus_scrapes_the_metrics_port():
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists() or source == "./outbox", (name, source)
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]]
    assert targets == ["uploader:9100"]
